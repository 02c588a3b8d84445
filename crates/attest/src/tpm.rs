//! TPM 2.0 attester: a quote by a **registered attestation key** over a policy-named PCR
//! selection with qualifying data = [`Binding::user_data`], the PCR values read next to it, and
//! the firmware's measured-boot event log.
//!
//! Trust path: the AK is provisioned once, before first boot, as a persistent key (default
//! handle `0x81010002`) with [`provision_ak`]; its TPM Name goes into the policy's
//! `tpm.registered_aks`. The verifier (`verify::tpm`) trusts exactly those Names. Credential
//! activation against an EK certificate is not built.
//!
//! TCTI strings: `device:/dev/tpmrm0` on the appliance (kernel resource manager),
//! `swtpm:host=127.0.0.1,port=N` in tests. A fresh ESAPI context is opened per quote, so the
//! attester holds no TPM state between calls and nothing leaks into swtpm's three transient
//! slots.

use std::path::PathBuf;
use std::str::FromStr;

use tss_esapi::abstraction::{ak, ek, pcr};
use tss_esapi::handles::{KeyHandle, ObjectHandle, PersistentTpmHandle, TpmHandle};
use tss_esapi::interface_types::algorithm::{
    AsymmetricAlgorithm, HashingAlgorithm, SignatureSchemeAlgorithm,
};
use tss_esapi::interface_types::dynamic_handles::Persistent;
use tss_esapi::interface_types::resource_handles::Provision;
use tss_esapi::interface_types::session_handles::AuthSession;
use tss_esapi::structures::{
    Data, PcrSelectionList, PcrSelectionListBuilder, PcrSlot, SignatureScheme,
};
use tss_esapi::traits::Marshall;
use tss_esapi::{Context, TctiNameConf};

use super::{AttestError, Attester, Binding};
use keyward_evidence::Bank;
use keyward_evidence::{EvidenceBundle, PcrValue, TpmEvidence};

/// Where Linux exposes the firmware's measured-boot log.
pub(crate) const DEFAULT_EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// The persistent handle [`provision_ak`] uses unless told otherwise.
pub(crate) const DEFAULT_AK_HANDLE: u32 = 0x8101_0002;

/// How to reach the TPM and what to quote.
#[derive(Debug, Clone)]
pub struct TpmConfig {
    /// TCTI configuration string (`device:/dev/tpmrm0`, `swtpm:host=127.0.0.1,port=2321`).
    pub tcti: String,
    /// Persistent handle of the registered AK.
    pub ak_handle: u32,
    /// PCR bank to quote.
    pub bank: Bank,
    /// PCR indices to quote.
    pub pcrs: Vec<u8>,
    /// Event log file; `None` sends no log. A missing file is an error, not a silent omission.
    pub event_log: Option<PathBuf>,
}

impl TpmConfig {
    /// The appliance defaults: `/dev/tpmrm0`, the default AK handle, the kernel's event log.
    pub fn appliance(bank: Bank, pcrs: Vec<u8>) -> Self {
        Self {
            tcti: "device:/dev/tpmrm0".into(),
            ak_handle: DEFAULT_AK_HANDLE,
            bank,
            pcrs,
            event_log: Some(PathBuf::from(DEFAULT_EVENT_LOG)),
        }
    }
}

/// The TPM quote attester.
#[derive(Debug, Clone)]
pub struct TpmAttester {
    cfg: TpmConfig,
}

impl TpmAttester {
    pub fn new(cfg: TpmConfig) -> Self {
        Self { cfg }
    }
}

fn tpm_err(what: &str, e: tss_esapi::Error) -> AttestError {
    AttestError::failed(format!("TPM {what}"), e)
}

/// Open an ESAPI context on `tcti`.
pub fn open_context(tcti: &str) -> Result<Context, AttestError> {
    let conf = TctiNameConf::from_str(tcti)
        .map_err(|e| AttestError::unavailable(format!("TCTI {tcti:?}"), e))?;
    Context::new(conf).map_err(|e| AttestError::unavailable(format!("TPM at {tcti:?}"), e))
}

fn hashing_alg(bank: Bank) -> HashingAlgorithm {
    match bank {
        Bank::Sha256 => HashingAlgorithm::Sha256,
        Bank::Sha384 => HashingAlgorithm::Sha384,
    }
}

fn selection(bank: Bank, pcrs: &[u8]) -> Result<PcrSelectionList, AttestError> {
    let slots = pcrs
        .iter()
        .map(|p| {
            PcrSlot::try_from(1u32.checked_shl(u32::from(*p)).unwrap_or(0))
                .map_err(|e| AttestError::failed(format!("PCR {p}"), e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    PcrSelectionListBuilder::new()
        .with_selection(hashing_alg(bank), &slots)
        .build()
        .map_err(|e| tpm_err("PCR selection", e))
}

fn persistent_key(ctx: &mut Context, handle: u32) -> Result<KeyHandle, AttestError> {
    let tpm_handle = TpmHandle::Persistent(
        PersistentTpmHandle::new(handle).map_err(|e| tpm_err("AK handle", e))?,
    );
    let obj = ctx
        .tr_from_tpm_public(tpm_handle)
        .map_err(|e| tpm_err(&format!("AK at 0x{handle:08x}"), e))?;
    Ok(KeyHandle::from(obj))
}

/// Read the PCRs of `sel` as (bank, index, value), in ascending index order.
fn read_pcrs(
    ctx: &mut Context,
    bank: Bank,
    pcrs: &[u8],
    sel: PcrSelectionList,
) -> Result<Vec<PcrValue>, AttestError> {
    let data = pcr::read_all(ctx, sel).map_err(|e| tpm_err("PCR read", e))?;
    let b = data
        .pcr_bank(hashing_alg(bank))
        .ok_or_else(|| AttestError::Failed("TPM returned no PCRs for the bank".into()))?;
    let mut sorted = pcrs.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    sorted
        .iter()
        .map(|p| {
            let slot = PcrSlot::try_from(1u32.checked_shl(u32::from(*p)).unwrap_or(0))
                .map_err(|e| AttestError::failed(format!("PCR {p}"), e))?;
            let d = b
                .get_digest(slot)
                .ok_or_else(|| AttestError::Failed(format!("TPM did not return PCR {p}")))?;
            Ok(PcrValue {
                bank: bank.name().into(),
                index: *p,
                value: d.value().to_vec(),
            })
        })
        .collect()
}

/// Take a quote with `qualifying` data and the PCR values around it. Retries when the PCRs
/// changed between the read and the quote (another process extending), up to three times.
pub(crate) fn quote(cfg: &TpmConfig, qualifying: &[u8]) -> Result<TpmEvidence, AttestError> {
    let mut ctx = open_context(&cfg.tcti)?;
    let ak = persistent_key(&mut ctx, cfg.ak_handle)?;
    let (ak_public, _, _) = ctx
        .read_public(ak)
        .map_err(|e| tpm_err("AK read_public", e))?;
    let ak_public = ak_public.marshall().map_err(|e| tpm_err("AK marshal", e))?;
    let data = Data::try_from(qualifying.to_vec()).map_err(|e| tpm_err("qualifying data", e))?;
    for _ in 0..3 {
        let before = read_pcrs(
            &mut ctx,
            cfg.bank,
            &cfg.pcrs,
            selection(cfg.bank, &cfg.pcrs)?,
        )?;
        let sel = selection(cfg.bank, &cfg.pcrs)?;
        let d = data.clone();
        let (attest, signature) = ctx
            .execute_with_nullauth_session(|c| c.quote(ak, d, SignatureScheme::Null, sel))
            .map_err(|e| tpm_err("quote", e))?;
        let after = read_pcrs(
            &mut ctx,
            cfg.bank,
            &cfg.pcrs,
            selection(cfg.bank, &cfg.pcrs)?,
        )?;
        if before != after {
            continue;
        }
        let event_log =
            match &cfg.event_log {
                Some(p) => Some(std::fs::read(p).map_err(|e| {
                    AttestError::unavailable(format!("event log {}", p.display()), e)
                })?),
                None => None,
            };
        return Ok(TpmEvidence {
            attest: attest
                .marshall()
                .map_err(|e| tpm_err("attest marshal", e))?,
            signature: signature
                .marshall()
                .map_err(|e| tpm_err("signature marshal", e))?,
            ak_public,
            pcrs: after,
            event_log,
        });
    }
    Err(AttestError::Failed(
        "PCRs kept changing while quoting".into(),
    ))
}

impl Attester for TpmAttester {
    fn name(&self) -> &'static str {
        "tpm"
    }
    fn attest(&self, binding: &Binding, bundle: &mut EvidenceBundle) -> Result<(), AttestError> {
        bundle.tpm = Some(quote(&self.cfg, &binding.user_data)?);
        Ok(())
    }
}

/// A provisioned AK: its handle, marshalled TPMT_PUBLIC and TPM Name (hex, for the policy).
#[derive(Debug, Clone)]
pub struct ProvisionedAk {
    pub handle: u32,
    pub public: Vec<u8>,
    pub name_hex: String,
}

/// Provision an ECDSA P-256 / SHA-256 attestation key under the ECC EK and make it persistent
/// at `handle` (owner authorisation, empty password). Run once, before first boot; the Name it
/// returns is what the policy registers.
pub fn provision_ak(tcti: &str, handle: u32) -> Result<ProvisionedAk, AttestError> {
    let mut ctx = open_context(tcti)?;
    let ek = ek::create_ek_object(&mut ctx, AsymmetricAlgorithm::Ecc, None)
        .map_err(|e| tpm_err("EK", e))?;
    let created = ak::create_ak(
        &mut ctx,
        ek,
        HashingAlgorithm::Sha256,
        SignatureSchemeAlgorithm::EcDsa,
        None,
        None,
    )
    .map_err(|e| tpm_err("AK create", e))?;
    let loaded = ak::load_ak(&mut ctx, ek, None, created.out_private, created.out_public)
        .map_err(|e| tpm_err("AK load", e))?;
    let persistent = Persistent::Persistent(
        PersistentTpmHandle::new(handle).map_err(|e| tpm_err("AK handle", e))?,
    );
    let evicted = ctx.execute_with_session(Some(AuthSession::Password), |c| {
        c.evict_control(Provision::Owner, ObjectHandle::from(loaded), persistent)
    });
    // Free the transient slots whatever happened (swtpm has only three).
    let _ = ctx.flush_context(ObjectHandle::from(loaded));
    let _ = ctx.flush_context(ObjectHandle::from(ek));
    evicted.map_err(|e| tpm_err("AK evict_control", e))?;
    drop(ctx);
    ak_info(tcti, handle)
}

/// Read a persistent AK's public area and Name.
pub(crate) fn ak_info(tcti: &str, handle: u32) -> Result<ProvisionedAk, AttestError> {
    let mut ctx = open_context(tcti)?;
    let ak = persistent_key(&mut ctx, handle)?;
    let (public, _, _) = ctx.read_public(ak).map_err(|e| tpm_err("read_public", e))?;
    let public = public.marshall().map_err(|e| tpm_err("AK marshal", e))?;
    let name =
        keyward_evidence::tpm_name(&public).map_err(|e| AttestError::failed("AK name", e))?;
    Ok(ProvisionedAk {
        handle,
        public,
        name_hex: hex::encode(name),
    })
}
