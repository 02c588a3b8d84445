//! `keyward admin tls acme`: get the appliance's XKS/admin certificate from an ACME CA
//! (RFC 8555) with a DNS-01 challenge, driven from the operator's machine.
//!
//! The design keeps every ACME and DNS secret off the appliance: this client (on the operator's
//! machine) holds the ACME account key (`--account FILE`, created 0600 on first use) and answers
//! the DNS-01 challenge (prints the TXT record, or runs `--dns-hook CMD` here, with the
//! operator's own DNS credentials). It asks the appliance, over the mutual-TLS admin API, only
//! for a CSR signed by the in-VM key (`tls csr`, optionally `--new-key`), hands that CSR to the
//! CA, and installs the issued chain (`tls install`), which the appliance checks as for any CA.
//! Both admin calls are audited by the appliance. The ACME protocol itself (JWS, nonces, order
//! polling) is the `instant-acme` crate's (ring, rustls).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use zeroize::Zeroizing;

use super::client::Profile;
use super::proto::{Request, TlsInfo};

/// What `keyward admin tls acme` was asked.
#[derive(Debug, Clone)]
pub(crate) struct AcmeRequest {
    /// The ACME directory URL (`https://…/directory`).
    pub directory: String,
    /// The certificate's names (the first is the CSR's CN). DNS names only: DNS-01 cannot
    /// validate an IP address.
    pub dns_names: Vec<String>,
    /// `mailto:` contacts for a new account.
    pub contacts: Vec<String>,
    /// The ACME account's credentials (JSON, holds the account key): read, or created 0600.
    pub account: PathBuf,
    /// A PEM CA certificate to trust for the directory's TLS instead of the system roots (a
    /// private or test ACME server).
    pub directory_ca: Option<PathBuf>,
    /// A shell command run here for each challenge (`present`, then `cleanup`); without it
    /// the TXT records are printed and the command waits for Enter.
    pub dns_hook: Option<String>,
    /// Sign the CSR with a new in-VM key (`tls csr --new-key`): the order rotates the key.
    pub new_key: bool,
    /// How long to wait for the CA to validate and to issue.
    pub timeout: Duration,
}

/// One DNS-01 challenge's TXT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxtRecord {
    /// The name being validated.
    pub domain: String,
    /// `_acme-challenge.<domain>`.
    pub name: String,
    /// The record's value (base64url SHA-256 of the key authorization).
    pub value: String,
}

/// Check the request before anything is sent; each error names the flag.
pub(crate) fn check(req: &AcmeRequest) -> anyhow::Result<()> {
    if req.dns_names.is_empty() {
        anyhow::bail!("--dns-name: name at least one DNS name");
    }
    for n in &req.dns_names {
        if n.parse::<std::net::IpAddr>().is_ok() {
            anyhow::bail!("--dns-name {n}: DNS-01 validates DNS names, not IP addresses");
        }
        if !keyward_config::valid_tls_name(n) {
            anyhow::bail!("--dns-name {n}: not a valid DNS name");
        }
    }
    for c in &req.contacts {
        if !c.starts_with("mailto:") || c.len() <= "mailto:".len() {
            anyhow::bail!("--contact {c}: give it as mailto:ADDRESS");
        }
    }
    if !req.directory.starts_with("https://") {
        anyhow::bail!("--directory {}: an https:// URL is needed", req.directory);
    }
    Ok(())
}

/// Run `keyward admin tls acme` against the appliance of `profile`.
pub(crate) async fn run(profile: &Profile, req: &AcmeRequest) -> anyhow::Result<ExitCode> {
    check(req)?;
    let account = account(req).await?;

    let ids: Vec<Identifier> = req
        .dns_names
        .iter()
        .map(|n| Identifier::Dns(n.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&ids))
        .await
        .context("ACME new order")?;
    let mut presented: Vec<TxtRecord> = Vec::new();
    let result = answer_and_finish(profile, req, &mut order, &mut presented).await;
    for r in &presented {
        if let Some(hook) = &req.dns_hook {
            if let Err(e) = run_hook(hook, "cleanup", r) {
                eprintln!(
                    "keyward admin tls acme: --dns-hook cleanup for {}: {e}",
                    r.name
                );
            }
        }
    }
    result
}

async fn answer_and_finish(
    profile: &Profile,
    req: &AcmeRequest,
    order: &mut instant_acme::Order,
    presented: &mut Vec<TxtRecord>,
) -> anyhow::Result<ExitCode> {
    let mut auths = order.authorizations();
    while let Some(a) = auths.next().await {
        let mut authz = a.context("ACME authorization")?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => anyhow::bail!(
                "the ACME authorization for {} is {other:?}",
                authz.identifier()
            ),
        }
        let mut ch = authz
            .challenge(ChallengeType::Dns01)
            .context("the CA offers no dns-01 challenge")?;
        let domain = ch.identifier().to_string();
        let rec = TxtRecord {
            name: format!("_acme-challenge.{domain}"),
            value: ch.key_authorization().dns_value(),
            domain,
        };
        match &req.dns_hook {
            Some(hook) => {
                run_hook(hook, "present", &rec)?;
                presented.push(rec.clone());
            }
            None => {
                eprintln!(
                    "Create this DNS record, wait until your DNS serves it, then press Enter:\n  {}. 300 IN TXT \"{}\"",
                    rec.name, rec.value
                );
                let mut line = String::new();
                tokio::task::spawn_blocking(move || std::io::stdin().read_line(&mut line))
                    .await
                    .context("reading Enter")?
                    .context("reading Enter")?;
            }
        }
        println!("dns-01 {} TXT {}", rec.name, rec.value);
        ch.set_ready().await.context("ACME challenge ready")?;
    }
    let retry = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(req.timeout);
    let status = order
        .poll_ready(&retry)
        .await
        .context("waiting for the CA to validate")?;
    if status != OrderStatus::Ready {
        let detail = order
            .state()
            .error
            .as_ref()
            .map(|p| format!(": {p}"))
            .unwrap_or_default();
        anyhow::bail!("the ACME order is {status:?}, not ready{detail}");
    }

    // Only now the appliance is asked: a failed validation leaves no pending key behind.
    let v = call(
        profile,
        &Request::TlsCsr {
            dns_names: req.dns_names.clone(),
            new_key: req.new_key,
        },
    )
    .await?;
    let csr_pem = v
        .get("csr_pem")
        .and_then(|p| p.as_str())
        .context("the appliance's answer holds no csr_pem")?;
    let csr_der = csr_der(csr_pem)?;
    order
        .finalize_csr(&csr_der)
        .await
        .context("ACME finalize")?;
    let chain = order
        .poll_certificate(&retry)
        .await
        .context("waiting for the certificate")?;
    let v = call(profile, &Request::TlsInstall { chain_pem: chain }).await?;
    let info: TlsInfo = serde_json::from_value(v).context("the install answer")?;
    println!(
        "installed; served now by the XKS and admin listeners: spki_sha256 {}, issuer {}, not_after {}{}",
        info.spki_sha256,
        info.issuer,
        info.not_after,
        info.days_left
            .map(|d| format!(" ({d} days left)"))
            .unwrap_or_default()
    );
    Ok(ExitCode::SUCCESS)
}

/// An admin API call that must succeed; its result.
async fn call(profile: &Profile, req: &Request) -> anyhow::Result<serde_json::Value> {
    let resp = profile.call(req).await?;
    if !resp.ok {
        anyhow::bail!(
            "the appliance refused {}: {}",
            req.op(),
            resp.error.as_deref().unwrap_or("no reason given")
        );
    }
    Ok(resp.result.unwrap_or(serde_json::Value::Null))
}

/// The DER of the first PEM certificate request of `pem`.
fn csr_der(pem: &str) -> anyhow::Result<Vec<u8>> {
    for item in rustls_pemfile::read_all(&mut pem.as_bytes()) {
        if let rustls_pemfile::Item::Csr(der) = item.context("the appliance's CSR")? {
            return Ok(der.as_ref().to_vec());
        }
    }
    anyhow::bail!("the appliance's answer holds no PEM certificate request")
}

/// The ACME account: from `--account` when the file exists, else a new one (its credentials
/// written there, 0600).
async fn account(req: &AcmeRequest) -> anyhow::Result<Account> {
    let builder = || match &req.directory_ca {
        Some(ca) => Account::builder_with_root(ca)
            .with_context(|| format!("--directory-ca {}", ca.display())),
        None => Account::builder().context("the system's TLS roots"),
    };
    if req.account.exists() {
        let text = Zeroizing::new(
            std::fs::read_to_string(&req.account)
                .with_context(|| format!("--account {}", req.account.display()))?,
        );
        let creds: AccountCredentials = serde_json::from_str(&text).with_context(|| {
            format!(
                "--account {}: not ACME account credentials",
                req.account.display()
            )
        })?;
        return builder()?
            .from_credentials(creds)
            .await
            .with_context(|| format!("--account {}", req.account.display()));
    }
    let contacts: Vec<&str> = req.contacts.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            req.directory.clone(),
            None,
        )
        .await
        .with_context(|| format!("--directory {}: creating the ACME account", req.directory))?;
    let json = Zeroizing::new(serde_json::to_string_pretty(&creds)?);
    write_account(&req.account, json.as_bytes())?;
    eprintln!(
        "keyward admin tls acme: created the ACME account {} (credentials in {}, keep them private)",
        account.id(),
        req.account.display()
    );
    Ok(account)
}

fn write_account(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    super::pki::write_file(path, bytes, true)
        .with_context(|| format!("--account {}", path.display()))
}

/// Run `--dns-hook` for `rec` with `action` (`present` or `cleanup`) through `sh -c`, with
/// `KEYWARD_ACME_ACTION`, `KEYWARD_ACME_DOMAIN`, `KEYWARD_ACME_TXT_NAME` and
/// `KEYWARD_ACME_TXT_VALUE` set; it must exit 0.
pub(crate) fn run_hook(hook: &str, action: &str, rec: &TxtRecord) -> anyhow::Result<()> {
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(hook)
        .env("KEYWARD_ACME_ACTION", action)
        .env("KEYWARD_ACME_DOMAIN", &rec.domain)
        .env("KEYWARD_ACME_TXT_NAME", &rec.name)
        .env("KEYWARD_ACME_TXT_VALUE", &rec.value)
        .status()
        .with_context(|| format!("--dns-hook: running sh -c {hook:?}"))?;
    if !status.success() {
        anyhow::bail!("--dns-hook {action} for {} exited with {status}", rec.name);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> AcmeRequest {
        AcmeRequest {
            directory: "https://acme.example/dir".into(),
            dns_names: vec!["xks.example.com".into()],
            contacts: vec!["mailto:ops@example.com".into()],
            account: "acct.json".into(),
            directory_ca: None,
            dns_hook: None,
            new_key: false,
            timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn requests_are_checked_naming_the_flag() {
        assert!(check(&req()).is_ok());
        type Case = (fn(&mut AcmeRequest), &'static str);
        let cases: [Case; 5] = [
            (|r| r.dns_names.clear(), "--dns-name"),
            (
                |r| r.dns_names = vec!["10.0.0.5".into()],
                "not IP addresses",
            ),
            (
                |r| r.dns_names = vec!["bad name".into()],
                "--dns-name bad name",
            ),
            (|r| r.contacts = vec!["ops@example.com".into()], "--contact"),
            (
                |r| r.directory = "http://acme.example/dir".into(),
                "--directory",
            ),
        ];
        for (f, want) in cases {
            let mut r = req();
            f(&mut r);
            let e = check(&r).unwrap_err().to_string();
            assert!(e.contains(want), "{e}");
            assert_eq!(e.lines().count(), 1);
        }
    }

    #[test]
    fn the_hook_gets_the_record_and_its_failure_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hook.log");
        let rec = TxtRecord {
            domain: "xks.example.com".into(),
            name: "_acme-challenge.xks.example.com".into(),
            value: "abc_-123".into(),
        };
        let hook = format!(
            "echo \"$KEYWARD_ACME_ACTION $KEYWARD_ACME_DOMAIN $KEYWARD_ACME_TXT_NAME $KEYWARD_ACME_TXT_VALUE\" >> {}",
            out.display()
        );
        run_hook(&hook, "present", &rec).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "present xks.example.com _acme-challenge.xks.example.com abc_-123\n"
        );
        let e = run_hook("exit 3", "present", &rec).unwrap_err().to_string();
        assert!(
            e.contains("--dns-hook present") && e.contains("exit status: 3"),
            "{e}"
        );
    }

    #[test]
    fn csr_der_reads_the_request() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["a.example".to_string()]).unwrap();
        let csr = params.serialize_request(&kp).unwrap();
        assert_eq!(csr_der(&csr.pem().unwrap()).unwrap(), csr.der().to_vec());
        assert!(csr_der("nothing").is_err());
    }
}
