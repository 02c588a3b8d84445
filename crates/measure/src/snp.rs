//! SEV-SNP launch measurements of AWS's EC2 firmware, one per vCPU count, computed like
//! `sev-snp-measure --mode snp --vmm-type ec2 --ovmf ovmf_img.fd --vcpus N` with the `sev`
//! crate's measurement code. The AMI does not enter this measurement at all (EC2 has no
//! measured direct kernel boot): it covers AWS's firmware, the vCPU count and the initial CPU
//! state, so it is published as a set, {AWS firmware release} x {supported vCPU counts}.

use std::path::{Path, PathBuf};

use sev::measurement::{
    snp::{snp_calc_launch_digest, SnpMeasurementArgs},
    vcpu_types::CpuType,
    vmsa::{GuestFeatures, VMMType},
};

/// Errors from the launch-measurement computation.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SnpMeasureError {
    #[error("SNP launch measurement of {path}: {msg}")]
    Compute { path: String, msg: String },
}

/// Kernel, initrd and command line hashed into the firmware's SEV hashes table (qemu direct
/// boot; EC2 has none, so the appliance passes `None`).
#[derive(Debug, Clone)]
pub(crate) struct DirectBoot {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub append: Option<String>,
}

/// What the launch digest depends on besides the firmware file.
#[derive(Debug, Clone)]
pub(crate) struct SnpLaunch {
    pub vcpus: u32,
    pub vcpu_type: CpuType,
    /// SEV_FEATURES of the VMSA; 0x1 (SNPActive) is what EC2 launches with.
    pub guest_features: u64,
    pub direct_boot: Option<DirectBoot>,
}

/// The 48-byte launch digest (MEASUREMENT) for one configuration, as lower-case hex.
pub(crate) fn ec2_launch_digest(
    ovmf: &Path,
    launch: &SnpLaunch,
) -> Result<String, SnpMeasureError> {
    let args = SnpMeasurementArgs {
        vcpus: launch.vcpus,
        vcpu_type: launch.vcpu_type,
        ovmf_file: ovmf.to_path_buf(),
        guest_features: GuestFeatures(launch.guest_features),
        kernel_file: launch.direct_boot.as_ref().map(|d| d.kernel.clone()),
        initrd_file: launch.direct_boot.as_ref().map(|d| d.initrd.clone()),
        append: launch
            .direct_boot
            .as_ref()
            .and_then(|d| d.append.as_deref()),
        ovmf_hash_str: None,
        vmm_type: Some(VMMType::EC2),
    };
    snp_calc_launch_digest(args)
        .map(|ld| ld.get_hex_ld())
        .map_err(|e| SnpMeasureError::Compute {
            path: ovmf.display().to_string(),
            msg: e.to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `sev` 8.0.0's published EC2 test vectors (tests/measurement.rs, test_snp_ec2_snp_only and
    /// test_snp_ec2_default), with its 4 KiB OVMF fixture copied to tests/fixtures/.
    #[test]
    fn matches_sev_published_ec2_vectors() {
        let ovmf = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/ovmf_AmdSev_suffix.bin");
        let null = DirectBoot {
            kernel: "/dev/null".into(),
            initrd: "/dev/null".into(),
            append: None,
        };
        let mut launch = SnpLaunch {
            vcpus: 1,
            vcpu_type: CpuType::EpycV4,
            guest_features: 0x1,
            direct_boot: Some(null),
        };
        assert_eq!(
            ec2_launch_digest(&ovmf, &launch).unwrap(),
            "7d3756157c805bf6adf617064c8552e8c1688fa1c8756f11cbf56ba5d25c9270fb69c0505c1cbe1c5c66c0e34c6ed3be"
        );
        launch.guest_features = 0x21;
        assert_eq!(
            ec2_launch_digest(&ovmf, &launch).unwrap(),
            "6ae80856486b1396af8c82a40351d6ed76a20c785e9c7fa4ffa27c22d5d6313b4b3b458cd3c9968e6f89fb5d8450d7a6"
        );
        // another vCPU count is another measurement
        launch.vcpus = 2;
        assert_ne!(
            ec2_launch_digest(&ovmf, &launch).unwrap(),
            "6ae80856486b1396af8c82a40351d6ed76a20c785e9c7fa4ffa27c22d5d6313b4b3b458cd3c9968e6f89fb5d8450d7a6"
        );
    }

    #[test]
    fn missing_firmware_is_an_error() {
        let launch = SnpLaunch {
            vcpus: 2,
            vcpu_type: CpuType::EpycV4,
            guest_features: 0x1,
            direct_boot: None,
        };
        assert!(ec2_launch_digest(Path::new("/nonexistent/ovmf_img.fd"), &launch).is_err());
    }
}
