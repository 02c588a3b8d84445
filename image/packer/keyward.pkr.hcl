# Packer template for the keyward appliance AMI: IMPORT and REGISTRATION ONLY.
#
# No base AMI is launched and nothing is provisioned into the image: that would change the
# bytes after `make image` measured them. The source is the raw disk from `make image`,
# imported as a snapshot and registered with UEFI boot and NitroTPM 2.0 (the same steps as
# image/aws/ami.sh, which stays the authoritative reference).
#
# Needs the current Amazon plugin (`packer init`), whose amazon-import post-processor knows
# boot_mode and the ebssurrogate builder knows tpm_support; Debian's packer 1.6.6 is too old to
# validate either. Checked here only with `packer fmt -check` / an HCL parser (README).
#
#   packer init image/packer && packer build -var s3_bucket=my-bucket image/packer

packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type    = string
  default = "us-east-2"
}

variable "s3_bucket" {
  type        = string
  description = "S3 bucket VM Import reads the raw disk from (its vmimport role needs read access)"
}

variable "disk" {
  type    = string
  default = "image/build/keyward.raw"
}

variable "version" {
  type    = string
  default = "0.1.0"
}

variable "roothash" {
  type        = string
  description = "dm-verity root hash of this build (image/build/roothash), recorded in the AMI name and tags"
}

# A "null" source: nothing is booted; the file-based post-processors do all the work.
source "null" "raw" {
  communicator = "none"
}

build {
  name    = "keyward-ami"
  sources = ["source.null.raw"]

  # hand the already-built, already-measured disk to the post-processor
  provisioner "shell-local" {
    inline = ["test -f ${var.disk}", "sha256sum ${var.disk}"]
  }

  post-processor "artifice" {
    files = [var.disk]
  }

  post-processor "amazon-import" {
    region          = var.region
    s3_bucket_name  = var.s3_bucket
    s3_key_name     = "keyward-${var.version}-${substr(var.roothash, 0, 16)}.raw"
    format          = "raw"
    ami_name        = "keyward-${var.version}-${substr(var.roothash, 0, 16)}"
    ami_description = "keyward ${var.version} appliance, dm-verity root ${var.roothash}"
    boot_mode       = "uefi"
    license_type    = "BYOL"
    skip_clean      = false
    tags = {
      Name               = "keyward-${var.version}"
      "keyward:roothash" = var.roothash
    }
  }

  # amazon-import registers with boot_mode but cannot set tpm_support; re-register the imported
  # snapshot with NitroTPM 2.0 (the same register-image call as image/aws/ami.sh step 3).
  post-processor "shell-local" {
    inline = [
      "snap=$(aws --region ${var.region} ec2 describe-images --owners self --filters Name=name,Values=keyward-${var.version}-${substr(var.roothash, 0, 16)} --query 'Images[0].BlockDeviceMappings[0].Ebs.SnapshotId' --output text)",
      "aws --region ${var.region} ec2 register-image --name keyward-${var.version}-${substr(var.roothash, 0, 16)}-tpm --architecture x86_64 --virtualization-type hvm --ena-support --boot-mode uefi --tpm-support v2.0 --imds-support v2.0 --root-device-name /dev/xvda --block-device-mappings DeviceName=/dev/xvda,Ebs={SnapshotId=$snap,VolumeType=gp3,DeleteOnTermination=true}",
    ]
  }
}
