#!/bin/bash
# The authoritative AWS CLI steps that turn image/build/keyward.raw into an SEV-SNP + NitroTPM
# AMI, and the launch command with the customer's pins as user data.
#
# Without AWS credentials (no `aws` CLI, or `aws sts get-caller-identity` fails) it only PRINTS
# the commands. With credentials it runs steps 1-3 for real when KEYWARD_AMI_APPLY=1.
#
# env: KEYWARD_S3_BUCKET (bucket for the raw disk; VM Import's vmimport role must read it)
#      AWS_REGION (default us-east-2: SNP is offered on m6a/c6a/r6a there and in eu-west-1)
#      KEYWARD_UEFI_DATA (optional: a UEFI variable store from `python3 uefivars.py`, then PCR 7
#      is fixed by it; without it PCR 7 is left out of the EC2 policy, see the auditor's guide)
set -euo pipefail
here="$(cd "$(dirname "$0")/../.." && pwd)"
disk="$here/image/build/keyward.raw"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/Cargo.toml" | head -n 1)"
roothash="$(cat "$here/image/build/roothash" 2>/dev/null || echo ROOTHASH)"
bucket="${KEYWARD_S3_BUCKET:-my-keyward-images}"
region="${AWS_REGION:-us-east-2}"
key="keyward-$version-${roothash:0:16}.raw"
name="keyward-$version-${roothash:0:16}"

live=0
if command -v aws >/dev/null 2>&1 && aws sts get-caller-identity >/dev/null 2>&1 \
        && [ "${KEYWARD_AMI_APPLY:-0}" = 1 ]; then
    live=1
fi
[ "$live" = 1 ] || echo "# no AWS credentials (or KEYWARD_AMI_APPLY!=1): printing the commands only"
run() { echo "+ $*"; if [ "$live" = 1 ]; then "$@"; fi; }

[ -f "$disk" ] || echo "# (image/build/keyward.raw does not exist yet: run make image first)"

echo "# 1. upload the raw GPT disk (ESP + erofs root + dm-verity tree + data partition)"
run aws --region "$region" s3 cp "$disk" "s3://$bucket/$key"

echo "# 2. import it as an EBS snapshot (raw format: no conversion, the bytes stay measured as built)"
if [ "$live" = 1 ]; then
    task="$(aws --region "$region" ec2 import-snapshot --description "$name" \
        --disk-container "Format=raw,UserBucket={S3Bucket=$bucket,S3Key=$key}" \
        --query ImportTaskId --output text)"
    echo "import task $task"
    while :; do
        state="$(aws --region "$region" ec2 describe-import-snapshot-tasks --import-task-ids "$task" \
            --query 'ImportSnapshotTasks[0].SnapshotTaskDetail.Status' --output text)"
        [ "$state" = completed ] && break
        [ "$state" = deleted ] || [ "$state" = deleting ] && { echo "import failed" >&2; exit 1; }
        sleep 15
    done
    snap="$(aws --region "$region" ec2 describe-import-snapshot-tasks --import-task-ids "$task" \
        --query 'ImportSnapshotTasks[0].SnapshotTaskDetail.SnapshotId' --output text)"
else
    echo "+ aws --region $region ec2 import-snapshot --description $name --disk-container Format=raw,UserBucket={S3Bucket=$bucket,S3Key=$key}"
    echo "+ aws --region $region ec2 describe-import-snapshot-tasks --import-task-ids IMPORT_TASK_ID   # until Status=completed"
    snap=SNAPSHOT_ID
fi

echo "# 3. register the AMI: UEFI boot (the UKI is EFI/BOOT/BOOTX64.EFI), NitroTPM 2.0, IMDSv2 only"
uefi=()
[ -n "${KEYWARD_UEFI_DATA:-}" ] && uefi=(--uefi-data "file://$KEYWARD_UEFI_DATA")
run aws --region "$region" ec2 register-image --name "$name" \
    --description "keyward $version appliance, dm-verity root $roothash" \
    --architecture x86_64 --virtualization-type hvm --ena-support \
    --boot-mode uefi --tpm-support v2.0 --imds-support v2.0 \
    --root-device-name /dev/xvda \
    --block-device-mappings "DeviceName=/dev/xvda,Ebs={SnapshotId=$snap,VolumeType=gp3,DeleteOnTermination=true}" \
    "${uefi[@]}"

echo "# 4. launch (the customer): an SNP-capable instance type with SNP on, the pins as user data"
echo "#    (pins.cbor comes from the KRS operator; the appliance extends its digest into PCR 15)"
echo "+ aws --region $region ec2 run-instances --image-id AMI_ID --instance-type m6a.large \\"
echo "      --cpu-options AmdSevSnp=enabled \\"
echo "      --metadata-options HttpTokens=required,HttpEndpoint=enabled,HttpPutResponseHopLimit=1 \\"
echo "      --user-data fileb://pins.cbor \\"
echo "      --subnet-id SUBNET_ID --security-group-ids SG_ALLOWING_8443_FROM_KMS_VPC_ENDPOINT"
echo "# 5. check what booted: aws ec2 get-console-output --instance-id ID --latest   (keyward-pcr lines)"
