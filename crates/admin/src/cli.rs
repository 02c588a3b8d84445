//! `keyward admin --profile FILE <command>`: the operator's client for the mutual-TLS admin API.
//! Each command is one request; a refused command prints a one-line reason and exits 1.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;

use super::client::Profile;
use super::import::{ImportParams, WrappingAlgorithm, WrappingKeySpec};
use super::proto::{
    ops_str, parse_ops, parse_usage, usage_str, ApprovalInfo, BackupInfo, CredAdded, CredInfo,
    KeyInfo, Request, SecretText, StoreInfo, TlsInfo,
};
use keyward_keystore::{Grant, KeyStatus};

/// Manage keys, grants and SigV4 credentials on a running appliance.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Profile file: admin URL, CA certificate, client certificate and key (TOML). Needed by
    /// every command but `cert issue`.
    #[arg(long, env = "KEYWARD_ADMIN_PROFILE")]
    profile: Option<PathBuf>,
    /// Trust exactly the server key with this SPKI SHA-256 (64 hex digits) instead of the
    /// profile's ca_cert; overrides the profile's server_spki_sha256.
    #[arg(long, global = true)]
    server_spki_sha256: Option<String>,
    /// Run a request that needs M-of-N approval (keys schedule-destroy, keys export, kms-config, stores
    /// remove) with this approved request id (`approvals list`); it runs once.
    #[arg(long, global = true, value_name = "ID")]
    approval: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// External keys: create, import, list, enable, disable, grant, revoke.
    #[command(subcommand)]
    Keys(Keys),
    /// SigV4 credentials of a key store (effective at once, no restart).
    #[command(subcommand)]
    Creds(Creds),
    /// Key stores: list (the default), create, remove (effective at once, no restart).
    Stores {
        #[command(subcommand)]
        command: Option<Stores>,
    },
    /// The key store's backend itself, offline (reads the appliance's configuration, not the
    /// admin API): `migrate` brings a PostgreSQL store's schema up to date.
    #[command(subcommand)]
    Store(StoreCommand),
    /// The appliances of this fleet (heartbeats in the shared key store): id, label, version,
    /// last seen, KEKs, store record and state (ACTIVE, DEGRADED, UNAVAILABLE).
    Fleet,
    /// The appliance-managed XKS/admin TLS key: show, csr, install (the key never leaves the
    /// appliance; only its certificate chain is installed).
    #[command(subcommand)]
    Tls(Tls),
    /// First contact: verify the appliance's live attestation (fresh nonce, bound to the TLS
    /// key the admin URL serves, judged under --policy) and only then pin that key
    /// (server_spki_sha256) in the profile. Refuses, writing nothing, otherwise.
    Trust {
        /// The admin API, https://HOST:PORT (default: the profile's url).
        #[arg(long)]
        url: Option<String>,
        /// The appliance's live-attestation listener ([attestation] listen), http://HOST:PORT.
        #[arg(long)]
        attestation_url: String,
        /// Verifier policy file (TOML or JSON): the one `keyward verify --policy` and the KRS
        /// use for this image.
        #[arg(long)]
        policy: PathBuf,
        /// Print the verdict as JSON (on stdout) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Operator certificates signed by an operator CA held in files (development and small
    /// deployments; a real CA can add the same SAN URI claim itself).
    #[command(subcommand)]
    Cert(Cert),
    /// M-of-N approval of destructive or secret-revealing requests: list, approve, deny.
    #[command(subcommand)]
    Approvals(Approvals),
    /// Export the whole sealed key store to FILE (mode 0600): header, every record verbatim
    /// (still sealed under the master key), the head, MACed under the master key. Prints the
    /// head (store id, record) and the file's SHA-256. Security role.
    ///
    /// `backup rewrap --in OLD --out NEW`: the appliance opens and verifies OLD as a restore
    /// would, re-seals it under the newest master-key version it holds and NEW gets it (the
    /// header names the new version); nothing is restored.
    #[command(args_conflicts_with_subcommands = true)]
    Backup {
        /// Where to write the backup (replaced atomically if it exists).
        #[arg(long)]
        out: Option<PathBuf>,
        #[command(subcommand)]
        sub: Option<BackupCmd>,
    },
    /// Master-key rotation on this appliance: `status` (the version the key store is sealed
    /// under, the newest released at boot) and `reseal` (re-seal now, online; also done at
    /// boot when the KRS released a newer version).
    #[command(subcommand)]
    Mk(Mk),
    /// Print the proxy configuration JSON the AWS KMS console accepts for STORE.
    KmsConfig {
        /// Key store name.
        store: String,
        /// Which credential to put in the file (default: the newest).
        #[arg(long)]
        access_key_id: Option<String>,
    },
}

#[derive(clap::Subcommand, Debug)]
enum Approvals {
    /// Every approval request: id, state (pending, approved, denied, used, expired), operation,
    /// requester, approvers, expiry.
    List,
    /// Approve a request another operator filed (you need the role its action needs).
    Approve { id: String },
    /// Deny a pending or approved request.
    Deny { id: String },
}

#[derive(clap::Subcommand, Debug)]
enum Mk {
    /// The key store's master-key versions (JSON).
    Status,
    /// Re-seal the key store under the newest master-key version released to this boot.
    Reseal,
}

#[derive(clap::Subcommand, Debug)]
enum Cert {
    /// Issue an operator (admin client) certificate with role claims: SAN URIs
    /// keyward:role:viewer (read-only, no secrets), operator (key management), security
    /// (credentials, secrets, destruction, TLS, backup), admin (deprecated: operator+security).
    Issue {
        /// The operator CA certificate (PEM): the one [admin] client_ca_file holds.
        #[arg(long)]
        ca_cert: PathBuf,
        /// Its private key (PEM, PKCS#8).
        #[arg(long)]
        ca_key: PathBuf,
        /// The operator's name (subject CN, named in the audit log).
        #[arg(long)]
        name: String,
        /// viewer | operator | security | admin (deprecated); repeat (or comma-separate) for
        /// several: the certificate gets their union.
        #[arg(long, required = true, value_delimiter = ',')]
        role: Vec<String>,
        /// Validity in days.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Write the certificate here (PEM); the key goes to the same name with `-key.pem`.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(clap::Subcommand, Debug)]
enum Stores {
    /// List the key stores (name, uri prefix, region, keys, credentials).
    List,
    /// Create a key store: no keys, no credentials; it answers XKS requests at once.
    Create {
        /// The store's name: 1-64 characters of A-Za-z0-9._- (what `--store` names elsewhere).
        #[command(flatten)]
        name: StoreName,
        /// Path before /kms/xks/v1: empty or like /keyward (A-Za-z0-9/_-).
        #[arg(long, default_value = "")]
        uri_prefix: String,
        /// The region in the SigV4 credential scope (the KMS key store's region).
        #[arg(long)]
        region: String,
        /// Extra SigV4 service names (kms-xks-proxy is always accepted).
        #[arg(long = "service")]
        services: Vec<String>,
    },
    /// Remove a key store with its credentials; its prefix answers 404 at once.
    Remove {
        #[command(flatten)]
        name: StoreName,
        /// Also when it holds keys: they are DESTROYED.
        #[arg(long)]
        force: bool,
    },
}

#[derive(clap::Subcommand, Debug)]
enum Tls {
    /// SPKI SHA-256, subject, names, notAfter, and whether a chain is installed.
    Show,
    /// Print a PEM PKCS#10 request for the names, signed by the appliance's TLS key.
    Csr {
        /// A DNS name (or IP address) for the certificate; repeat for more (the first is the
        /// subject CN).
        #[arg(long = "dns-name", required = true)]
        dns_names: Vec<String>,
        /// Generate a new in-VM key and sign the request with it: it stays pending (the
        /// current key and chain are served) until `tls install` gets a chain for it.
        #[arg(long)]
        new_key: bool,
    },
    /// Install a PEM certificate chain (leaf first) issued for the appliance's TLS key; served
    /// at once by the XKS and admin listeners.
    Install {
        #[arg(long)]
        chain: PathBuf,
    },
    /// Get the certificate from an ACME CA with a DNS-01 challenge, driven from here: the
    /// account key and DNS credentials stay on this machine; the appliance only signs the CSR
    /// (`tls csr`) and installs the chain (`tls install`).
    #[cfg(feature = "acme")]
    Acme(AcmeArgs),
}

#[cfg(feature = "acme")]
#[derive(clap::Args, Debug)]
struct AcmeArgs {
    /// The CA's ACME directory URL (https://…).
    #[arg(long)]
    directory: String,
    /// A DNS name for the certificate; repeat for more (the first is the subject CN).
    #[arg(long = "dns-name", required = true)]
    dns_names: Vec<String>,
    /// A contact for a new ACME account (mailto:ADDRESS); repeat for more.
    #[arg(long)]
    contact: Vec<String>,
    /// The ACME account's credentials (JSON with the account key): used when the file exists,
    /// else a new account is made and written there (0600).
    #[arg(long, default_value = "acme-account.json")]
    account: PathBuf,
    /// Trust this PEM CA certificate for the directory's TLS instead of the system roots.
    #[arg(long)]
    directory_ca: Option<PathBuf>,
    /// A shell command run on this machine for each DNS-01 challenge with KEYWARD_ACME_ACTION
    /// (present, then cleanup), KEYWARD_ACME_DOMAIN, KEYWARD_ACME_TXT_NAME and
    /// KEYWARD_ACME_TXT_VALUE set; it must exit 0 once the record is served. Without it the
    /// record is printed and the command waits for Enter.
    #[arg(long)]
    dns_hook: Option<String>,
    /// Sign the CSR with a new in-VM key (as `tls csr --new-key`): served once the chain is in.
    #[arg(long)]
    new_key: bool,
    /// How long to wait for the CA to validate, and then to issue.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: std::time::Duration,
}

/// The store a `stores` command acts on. One rule for every admin command: the thing the
/// command acts on is positional (a key id, an access key id, a store), the store that holds it
/// is `--store`. `--name` is still accepted for the stores commands (the earlier spelling).
#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct StoreName {
    /// The key store.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// The same, as an option (earlier spelling).
    #[arg(long = "name", value_name = "NAME")]
    flag: Option<String>,
}

impl StoreName {
    fn get(self) -> String {
        self.name.or(self.flag).unwrap_or_default()
    }
}

#[derive(clap::Args, Debug)]
struct StoreArg {
    /// Key store name; needed only when more than one key store exists.
    #[arg(long)]
    store: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Keys {
    /// Create a key with a fresh random KEK. It starts with NO grants (deny by default).
    Create {
        /// External key id: 1-128 characters of A-Za-z0-9._- (not `.` or `..`).
        id: String,
        #[command(flatten)]
        store: StoreArg,
        /// encrypt,decrypt | encrypt | decrypt | none
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// Get a wrapping public key and an import token (as KMS's GetParametersForImport): wrap
    /// the 32 key bytes to the public key (openssl pkeyutl; see docs/admin.md), then
    /// `keys import ID --wrapped FILE --token TOKEN`. The private key stays in this appliance's
    /// memory; the token works once, on this appliance, until it expires or the appliance
    /// restarts.
    ImportParams {
        /// RSAES_OAEP_SHA_256 (the 32 bytes, RSA-OAEP-SHA-256) or RSA_AES_KEY_WRAP_SHA_256
        /// (RSA-OAEP-SHA-256 of an AES-256 key, then AES-KWP of the 32 bytes).
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping: String,
        /// RSA_3072 or RSA_4096.
        #[arg(long, default_value = "RSA_3072")]
        key_spec: String,
        /// How long the token is valid: `24h` (the default and the most), `30m`, `90s`.
        #[arg(long)]
        valid_for: Option<String>,
        /// Write the wrapping public key here (PEM SubjectPublicKeyInfo); otherwise printed.
        #[arg(long)]
        public_key_out: Option<PathBuf>,
        /// Write the import token here (one line); it is printed as well.
        #[arg(long)]
        token_out: Option<PathBuf>,
    },
    /// Import an existing key: key material wrapped to a key from `keys import-params`
    /// (--wrapped FILE --token TOKEN), or, UNSAFE (the key is in clear on this machine and in
    /// this process), a file of exactly 32 raw bytes (--from-file FILE
    /// --plaintext-key-material).
    Import {
        id: String,
        /// The wrapped key material (binary, as `openssl pkeyutl -out` writes it).
        #[arg(long, conflicts_with = "from_file", requires = "token")]
        wrapped: Option<PathBuf>,
        /// The import token of `keys import-params` (or @FILE to read it from FILE).
        #[arg(long)]
        token: Option<String>,
        /// How --wrapped was made: RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256 (the one the
        /// token was issued for).
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping: String,
        /// UNSAFE: a file of exactly 32 raw key bytes; needs --plaintext-key-material.
        #[arg(long)]
        from_file: Option<PathBuf>,
        /// Consent to importing raw key bytes from --from-file (they are in clear on this
        /// machine). Prefer --wrapped.
        #[arg(long)]
        plaintext_key_material: bool,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, default_value = "encrypt,decrypt")]
        usage: String,
    },
    /// List keys: id, usage, status, version, grants, created (never key bytes).
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Enable a key (encrypt/decrypt work again).
    Enable {
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Disable a key (metadata says DISABLED, encrypt/decrypt refused).
    Disable {
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Disable a key now and destroy every version of its KEK after --days (7-30, default
    /// 30): ciphertexts made with it can never be decrypted again. cancel-destroy before then.
    ScheduleDestroy {
        id: String,
        #[command(flatten)]
        store: StoreArg,
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(7..=30))]
        days: u32,
    },
    /// Back up every KEK version of a key wrapped to an escrow RSA public key (3072 or 4096
    /// bits, PEM), in the layouts `keys import --wrapped` accepts; writes JSON (key id, per
    /// version its wrapped bytes in Base64) to --out. Security role; needs M-of-N approval.
    Export {
        id: String,
        #[command(flatten)]
        store: StoreArg,
        /// The escrow public key (PEM SubjectPublicKeyInfo, `openssl pkey -pubout`).
        #[arg(long)]
        wrapping_public_key: PathBuf,
        /// RSAES_OAEP_SHA_256 or RSA_AES_KEY_WRAP_SHA_256.
        #[arg(long, default_value = "RSAES_OAEP_SHA_256")]
        wrapping: String,
        /// Where to write the export file (created 0600; must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Cancel a scheduled destruction (the key gets back its status).
    CancelDestroy {
        id: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Rotate a key: a new KEK version encrypts from now on; every earlier version still
    /// decrypts. With --every, set the rotation schedule instead (the appliance, or one member
    /// of a fleet, rotates it when its current version is that old); --every off clears it.
    Rotate {
        id: String,
        #[command(flatten)]
        store: StoreArg,
        /// A period such as 365d, 90d or 2160h (at least 1d), or `off`.
        #[arg(long)]
        every: Option<String>,
    },
    /// Grant operations on a key to a principal pattern (exact ARN, `*`, or a glob).
    Grant {
        id: String,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        grant: GrantArgs,
        /// encrypt,decrypt,metadata (any subset).
        #[arg(long)]
        ops: String,
    },
    /// Revoke grants to a principal pattern (all of them, or only --ops).
    Revoke {
        id: String,
        #[command(flatten)]
        store: StoreArg,
        #[command(flatten)]
        grant: GrantArgs,
        /// Remove only these operations from the matching grants.
        #[arg(long)]
        ops: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
struct GrantArgs {
    /// Principal pattern matched against awsPrincipalArn: exact, `*`, or a glob.
    #[arg(long)]
    principal: String,
    /// Only when kmsViaService equals this (e.g. dynamodb.amazonaws.com).
    #[arg(long)]
    via_service: Option<String>,
    /// Only when awsSourceVpc equals this.
    #[arg(long)]
    source_vpc: Option<String>,
    /// Only when awsSourceVpce equals this.
    #[arg(long)]
    source_vpce: Option<String>,
}

#[derive(clap::Subcommand, Debug)]
enum Creds {
    /// List access key ids (never secrets).
    List {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Add a credential; without --access-key-id/--secret-file one is generated and shown once.
    Add {
        #[command(flatten)]
        store: StoreArg,
        /// 20-30 characters of A-Z2-7.
        #[arg(long)]
        access_key_id: Option<String>,
        /// File holding the secret (43-64 characters of A-Za-z0-9/+=).
        #[arg(long, requires = "access_key_id")]
        secret_file: Option<PathBuf>,
    },
    /// Remove a credential; requests signed with it are refused at once.
    Remove {
        access_key_id: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// `keyward admin trust`'s arguments. The command judges attestation evidence, so it runs in
/// the binary (beside `keyward verify`), not in this crate: the admin client does not link the
/// verifier.
#[derive(Debug)]
pub struct TrustRequest {
    pub profile: PathBuf,
    pub url: Option<String>,
    pub attestation_url: String,
    pub policy: PathBuf,
    pub json: bool,
}

/// `keyward admin store ...`: run by the binary with the appliance's configuration (this
/// crate does not link the storage backends).
#[derive(clap::Subcommand, Debug)]
pub enum StoreCommand {
    /// Create or upgrade the shared store's schema in PostgreSQL ([storage] backend =
    /// "postgres"), idempotently; members also do it at start. Prints the versions.
    Migrate {
        /// The appliance configuration naming the database.
        #[arg(long, short = 'c', env = "KEYWARD_CONFIG")]
        config: PathBuf,
    },
}

/// Run the command; `trust` runs `keyward admin trust`, `store` runs `keyward admin store`.
pub fn run(
    args: Args,
    trust: impl FnOnce(TrustRequest) -> anyhow::Result<ExitCode>,
    store: impl FnOnce(StoreCommand) -> anyhow::Result<ExitCode>,
) -> anyhow::Result<ExitCode> {
    let profile_path = || {
        args.profile
            .clone()
            .context("--profile FILE (or KEYWARD_ADMIN_PROFILE) is required")
    };
    match args.command {
        Command::Cert(c) => return cert(c),
        Command::Store(c) => return store(c),
        Command::Trust {
            url,
            attestation_url,
            policy,
            json,
        } => {
            return trust(TrustRequest {
                profile: profile_path()?,
                url,
                attestation_url,
                policy,
                json,
            })
        }
        _ => {}
    }
    let mut profile = Profile::load(&profile_path()?)?;
    if let Some(pin) = &args.server_spki_sha256 {
        profile.trust = super::tls::ServerTrust::SpkiSha256(
            super::tls::parse_sha256_hex(pin).map_err(anyhow::Error::msg)?,
        );
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    #[cfg(feature = "acme")]
    if let Command::Tls(Tls::Acme(a)) = args.command {
        let req = super::acme::AcmeRequest {
            directory: a.directory,
            dns_names: a.dns_names,
            contacts: a.contact,
            account: a.account,
            directory_ca: a.directory_ca,
            dns_hook: a.dns_hook,
            new_key: a.new_key,
            timeout: a.timeout,
        };
        return rt.block_on(super::acme::run(&profile, &req));
    }
    let (request, show) = build(args.command)?;
    let resp = rt.block_on(profile.call_with(&request, args.approval.as_deref()))?;
    if !resp.ok {
        eprintln!(
            "keyward admin: refused: {}",
            resp.error.as_deref().unwrap_or("no reason given")
        );
        return Ok(ExitCode::from(1));
    }
    show(resp.result.unwrap_or(serde_json::Value::Null))?;
    Ok(ExitCode::SUCCESS)
}

/// `keyward admin cert issue`.
fn cert(c: Cert) -> anyhow::Result<ExitCode> {
    let Cert::Issue {
        ca_cert,
        ca_key,
        name,
        role,
        days,
        out,
    } = c;
    let roles = role
        .iter()
        .map(|r| super::role::Role::parse(r.trim()).map_err(|e| anyhow::anyhow!("--role: {e}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let cert_pem = std::fs::read_to_string(&ca_cert)
        .with_context(|| format!("--ca-cert {}", ca_cert.display()))?;
    let key_pem = zeroize::Zeroizing::new(
        std::fs::read_to_string(&ca_key)
            .with_context(|| format!("--ca-key {}", ca_key.display()))?,
    );
    let ca = super::pki::Ca::from_pem(&cert_pem, &key_pem)
        .map_err(|e| anyhow::anyhow!("--ca-cert/--ca-key: {e}"))?;
    let issued = ca.client_with_roles(&name, i64::from(days), &roles)?;
    let key_out = {
        let stem = out
            .file_stem()
            .map(|s| s.to_string_lossy().to_string())
            .unwrap_or_else(|| "operator".into());
        out.with_file_name(format!("{stem}-key.pem"))
    };
    super::pki::write_file(&key_out, issued.key_pem.as_bytes(), true)?;
    super::pki::write_file(&out, issued.cert_pem.as_bytes(), false)?;
    let role_names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    let uris: Vec<String> = roles.iter().map(|r| r.uri()).collect();
    println!(
        "issued {} (CN={name}, role {}: SAN URI {}), key {}",
        out.display(),
        role_names.join("+"),
        uris.join(", "),
        key_out.display()
    );
    if roles.contains(&super::role::Role::Admin) {
        eprintln!(
            "keyward admin: the admin role is deprecated: issue operator and security \
             certificates to different people (dual control needs two of them)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

type Show = Box<dyn FnOnce(serde_json::Value) -> anyhow::Result<()>>;

/// `2, 1`: the versions a key keeps, current first.
fn versions_str(k: &KeyInfo) -> String {
    k.versions
        .iter()
        .map(|v| v.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// `--valid-for`: `24h`, `30m`, `90s` (seconds; the appliance refuses more than a day).
fn parse_validity(p: &str) -> anyhow::Result<u64> {
    let bad = || anyhow::anyhow!("--valid-for: `{p}` is not a duration like 24h, 30m or 90s");
    let (n, unit) = p.split_at(p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len()));
    let n: u64 = n.parse().map_err(|_| bad())?;
    match unit {
        "h" => n.checked_mul(3_600),
        "m" => n.checked_mul(60),
        "s" | "" => Some(n),
        _ => None,
    }
    .ok_or_else(bad)
}

/// `--every`: `365d`, `2160h`, or `off` (None). At least a day.
fn parse_period(p: &str) -> anyhow::Result<Option<u64>> {
    if p == "off" {
        return Ok(None);
    }
    let (n, unit) = p.split_at(p.find(|c: char| !c.is_ascii_digit()).unwrap_or(p.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| anyhow::anyhow!("--every: `{p}` is not a period like 365d, 2160h or off"))?;
    let secs = match unit {
        "d" => n.checked_mul(86_400),
        "h" => n.checked_mul(3_600),
        _ => None,
    }
    .ok_or_else(|| anyhow::anyhow!("--every: `{p}` is not a period like 365d, 2160h or off"))?;
    if secs < 86_400 {
        anyhow::bail!("--every: `{p}` is shorter than a day");
    }
    Ok(Some(secs))
}

/// `keyward admin fleet`: one line per member.
fn show_fleet(v: serde_json::Value) -> anyhow::Result<()> {
    if v.get("shared").and_then(|s| s.as_bool()) != Some(true) {
        println!(
            "one appliance on its own key store (storage backend \"file\"), store record {}",
            v.get("store_seq").and_then(|s| s.as_u64()).unwrap_or(0)
        );
        return Ok(());
    }
    let members = v
        .get("members")
        .and_then(|m| m.as_array())
        .context("the answer holds no members")?;
    println!(
        "{:<34} {:<12} {:<24} {:>8} {:>8} {:>7}  version",
        "id", "state", "label", "seen", "record", "keks"
    );
    for m in members {
        let s = |k: &str| m.get(k).and_then(|x| x.as_str()).unwrap_or("");
        let n = |k: &str| m.get(k).and_then(|x| x.as_u64()).unwrap_or(0);
        let this = if m.get("this").and_then(|x| x.as_bool()) == Some(true) {
            " (this)"
        } else {
            ""
        };
        println!(
            "{:<34} {:<12} {:<24} {:>7}s {:>8} {:>7}  {}{this}",
            s("id"),
            s("status"),
            s("label"),
            n("age_secs"),
            n("seq"),
            n("keks"),
            s("version"),
        );
    }
    Ok(())
}

fn build(cmd: Command) -> anyhow::Result<(Request, Show)> {
    Ok(match cmd {
        Command::Stores { command } => build_stores(command.unwrap_or(Stores::List))?,
        Command::Tls(t) => build_tls(t)?,
        Command::Fleet => (Request::Fleet, Box::new(show_fleet)),
        Command::KmsConfig {
            store,
            access_key_id,
        } => (
            Request::KmsConfig {
                store: Some(store),
                access_key_id,
            },
            Box::new(|v| {
                println!("{}", serde_json::to_string_pretty(&v)?);
                Ok(())
            }),
        ),
        Command::Keys(k) => build_keys(k)?,
        Command::Creds(c) => build_creds(c)?,
        Command::Backup {
            sub: Some(BackupCmd::Rewrap { input, out }),
            ..
        } => {
            let file = std::fs::read_to_string(&input)
                .with_context(|| format!("--in {}: reading the backup", input.display()))?;
            (
                Request::BackupRewrap { file },
                Box::new(move |v| write_backup(&out, v)),
            )
        }
        Command::Backup {
            out: Some(out),
            sub: None,
        } => (Request::Backup, Box::new(move |v| write_backup(&out, v))),
        Command::Backup { .. } => anyhow::bail!("backup: give --out FILE (or `backup rewrap`)"),
        Command::Approvals(a) => build_approvals(a),
        Command::Mk(m) => (
            match m {
                Mk::Status => Request::MkStatus,
                Mk::Reseal => Request::MkReseal,
            },
            Box::new(|v| {
                println!("{}", serde_json::to_string(&v)?);
                Ok(())
            }),
        ),
        Command::Trust { .. } | Command::Cert(_) | Command::Store(_) => {
            anyhow::bail!("internal: trust and cert are not admin API requests")
        }
    })
}

/// `keyward admin backup`: check the answer, write the file 0600 (temp file, fsync, rename,
/// fsync the directory), print one JSON line.
fn write_backup(out: &std::path::Path, v: serde_json::Value) -> anyhow::Result<()> {
    use sha2::Digest;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let info: BackupInfo = serde_json::from_value(v).context("the answer is not a backup")?;
    let bytes = info.file.as_bytes();
    let sha = hex::encode(sha2::Sha256::digest(bytes));
    if sha != info.sha256 {
        anyhow::bail!("the backup arrived damaged (its SHA-256 is not the one the appliance sent)");
    }
    let parsed = keyward_keystore::backup::parse(bytes)
        .map_err(|e| anyhow::anyhow!("the appliance sent an unreadable backup: {e}"))?;
    if parsed.head().seq != info.seq || hex::encode(&parsed.head().store_id) != info.store_id {
        anyhow::bail!("the backup does not end in the head the appliance named");
    }
    let name = out
        .file_name()
        .with_context(|| format!("--out {}: not a file name", out.display()))?;
    let mut tmp_name = name.to_os_string();
    tmp_name.push(".tmp");
    let tmp = out.with_file_name(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    drop(f);
    std::fs::rename(&tmp, out).with_context(|| format!("renaming to {}", out.display()))?;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync {}", dir.display()))?;
    println!(
        "{}",
        serde_json::json!({
            "backup": out,
            "store_id": info.store_id,
            "seq": info.seq,
            "records": info.records,
            "created": info.created,
            "bytes": bytes.len(),
            "sha256": sha,
            "mk_version": parsed.mk_version(),
        })
    );
    Ok(())
}

/// `keys export`: write the export file 0600 (never over an existing file), print a summary.
fn write_export(out: &std::path::Path, v: serde_json::Value) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file: crate::export::ExportFile =
        serde_json::from_value(v).context("the answer is not a key export")?;
    let text = serde_json::to_string_pretty(&file)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .with_context(|| format!("--out {}: creating it", out.display()))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", out.display()))?;
    println!(
        "key {} exported ({} version(s), {}) to {} for escrow key {}",
        file.key_id,
        file.versions.len(),
        file.wrapping_algorithm,
        out.display(),
        file.escrow_spki_sha256
    );
    Ok(())
}

fn print_store_table(stores: &[StoreInfo]) {
    println!(
        "{:<16} {:<24} {:<14} {:>5} {:>6}",
        "STORE", "URI PREFIX", "REGION", "KEYS", "CREDS"
    );
    for s in stores {
        let prefix = if s.uri_prefix.is_empty() {
            "(none)"
        } else {
            &s.uri_prefix
        };
        println!(
            "{:<16} {:<24} {:<14} {:>5} {:>6}",
            s.name, prefix, s.region, s.keys, s.credentials
        );
    }
}

fn build_stores(c: Stores) -> anyhow::Result<(Request, Show)> {
    Ok(match c {
        Stores::List => (
            Request::StoresList,
            Box::new(|v| {
                let stores: Vec<StoreInfo> = serde_json::from_value(v)?;
                print_store_table(&stores);
                Ok(())
            }),
        ),
        Stores::Create {
            name,
            uri_prefix,
            region,
            services,
        } => (
            Request::StoresCreate {
                name: name.get(),
                uri_prefix,
                region,
                services,
            },
            Box::new(|v| {
                let s: StoreInfo = serde_json::from_value(v)?;
                println!(
                    "created key store {} (XksProxyUriPath {}/kms/xks/v1, region {}); live now, with no keys and no credentials:",
                    s.name, s.uri_prefix, s.region
                );
                println!(
                    "  keyward admin --profile PROFILE creds add --store {}",
                    s.name
                );
                Ok(())
            }),
        ),
        Stores::Remove { name, force } => (
            Request::StoresRemove {
                name: name.get(),
                force,
            },
            Box::new(|v| {
                let n = v
                    .get("keys_destroyed")
                    .and_then(|n| n.as_u64())
                    .unwrap_or(0);
                let name = v.get("removed").and_then(|n| n.as_str()).unwrap_or("?");
                println!(
                    "removed key store {name} with its credentials ({n} key(s) destroyed); its prefix answers 404 from now on"
                );
                Ok(())
            }),
        ),
    })
}

fn build_tls(t: Tls) -> anyhow::Result<(Request, Show)> {
    fn show_info(v: serde_json::Value) -> anyhow::Result<()> {
        let i: TlsInfo = serde_json::from_value(v)?;
        println!("spki_sha256  {}", i.spki_sha256);
        println!("subject      {}", i.subject);
        println!("issuer       {}", i.issuer);
        println!("names        {}", i.names.join(", "));
        match i.days_left {
            Some(d) => println!("not_after    {} ({d} days left)", i.not_after),
            None => println!("not_after    {}", i.not_after),
        }
        if i.chain_installed {
            println!(
                "chain        installed ({} certificate(s){})",
                i.chain_len,
                i.installed_at.map(|t| format!(", {t}")).unwrap_or_default()
            );
        } else {
            println!("chain        not installed: a self-signed certificate is served");
        }
        if let Some(p) = &i.pending_spki_sha256 {
            println!(
                "pending      {p}{} (served once a chain for it is installed)",
                i.pending_created
                    .as_ref()
                    .map(|t| format!(", made {t}"))
                    .unwrap_or_default()
            );
        }
        Ok(())
    }
    Ok(match t {
        Tls::Show => (Request::TlsShow, Box::new(show_info)),
        Tls::Csr { dns_names, new_key } => (
            Request::TlsCsr { dns_names, new_key },
            Box::new(|v| {
                let pem = v
                    .get("csr_pem")
                    .and_then(|p| p.as_str())
                    .context("the answer holds no csr_pem")?;
                print!("{pem}");
                Ok(())
            }),
        ),
        #[cfg(feature = "acme")]
        Tls::Acme(_) => anyhow::bail!("internal: tls acme is not one admin API request"),
        Tls::Install { chain } => {
            let chain_pem =
                std::fs::read_to_string(&chain).with_context(|| format!("{}", chain.display()))?;
            (
                Request::TlsInstall { chain_pem },
                Box::new(|v| {
                    println!("installed; served now by the XKS and admin listeners:");
                    show_info(v)
                }),
            )
        }
    })
}

fn build_keys(k: Keys) -> anyhow::Result<(Request, Show)> {
    Ok(match k {
        Keys::Create { id, store, usage } => {
            let usage = parse_usage(&usage).map_err(anyhow::Error::msg)?;
            let store_flag = store_flag(&store.store);
            (
                Request::KeysCreate {
                    store: store.store,
                    id: id.clone(),
                    usage,
                },
                Box::new(move |_| {
                    println!("created key {id} (usage {}, enabled)", usage_str(usage));
                    println!("it has NO grants yet: every request for it is refused (deny by default). To open it:");
                    println!(
                        "  keyward admin --profile PROFILE keys grant {id}{store_flag} --principal '*' --ops encrypt,decrypt,metadata"
                    );
                    Ok(())
                }),
            )
        }
        Keys::ImportParams {
            wrapping,
            key_spec,
            valid_for,
            public_key_out,
            token_out,
        } => {
            let wrapping_algorithm =
                WrappingAlgorithm::parse(&wrapping).map_err(anyhow::Error::msg)?;
            let wrapping_key_spec =
                WrappingKeySpec::parse(&key_spec).map_err(anyhow::Error::msg)?;
            let valid_for_secs = valid_for.as_deref().map(parse_validity).transpose()?;
            (
                Request::KeysImportParams {
                    wrapping_algorithm,
                    wrapping_key_spec,
                    valid_for_secs,
                },
                Box::new(move |v| {
                    let p: ImportParams = serde_json::from_value(v)?;
                    if let Some(f) = &token_out {
                        std::fs::write(f, format!("{}\n", p.import_token))
                            .with_context(|| format!("{}", f.display()))?;
                    }
                    println!("import token: {}", p.import_token);
                    println!(
                        "wrapping: {} with {}; valid to {}",
                        p.wrapping_algorithm,
                        p.wrapping_key_spec.as_str(),
                        p.parameters_valid_to
                    );
                    match &public_key_out {
                        Some(f) => {
                            std::fs::write(f, &p.public_key_pem)
                                .with_context(|| format!("{}", f.display()))?;
                            println!("wrapping public key (PEM) written to {}", f.display());
                        }
                        None => print!("{}", p.public_key_pem),
                    }
                    Ok(())
                }),
            )
        }
        Keys::Import {
            id,
            wrapped,
            token,
            wrapping,
            from_file,
            plaintext_key_material,
            store,
            usage,
        } => {
            let usage = parse_usage(&usage).map_err(anyhow::Error::msg)?;
            let store_flag = store_flag(&store.store);
            let req = match (wrapped, from_file) {
                (Some(w), None) => {
                    let wrapping_algorithm =
                        WrappingAlgorithm::parse(&wrapping).map_err(anyhow::Error::msg)?;
                    let token = token.unwrap_or_default();
                    let import_token = match token.strip_prefix('@') {
                        Some(f) => std::fs::read_to_string(f)
                            .with_context(|| f.to_string())?
                            .trim()
                            .to_string(),
                        None => token.trim().to_string(),
                    };
                    let bytes = std::fs::read(&w).with_context(|| format!("{}", w.display()))?;
                    if bytes.len() > crate::import::MAX_WRAPPED {
                        anyhow::bail!(
                            "{} holds {} bytes: too long for wrapped key material",
                            w.display(),
                            bytes.len()
                        );
                    }
                    Request::KeysImportWrapped {
                        store: store.store,
                        id: id.clone(),
                        usage,
                        import_token,
                        wrapping_algorithm,
                        encrypted_key_material_b64: base64::engine::general_purpose::STANDARD
                            .encode(&bytes),
                    }
                }
                (None, Some(from_file)) => {
                    if !plaintext_key_material {
                        anyhow::bail!(
                            "--from-file imports raw key bytes that are in clear on this machine: \
                             add --plaintext-key-material to do it anyway, or wrap them \
                             (`keys import-params`, then `keys import {id} --wrapped FILE --token TOKEN`)"
                        );
                    }
                    let bytes = zeroize::Zeroizing::new(
                        std::fs::read(&from_file)
                            .with_context(|| format!("{}", from_file.display()))?,
                    );
                    if bytes.len() != 32 {
                        anyhow::bail!(
                            "{} holds {} bytes; a key to import is exactly 32 raw bytes",
                            from_file.display(),
                            bytes.len()
                        );
                    }
                    Request::KeysImport {
                        store: store.store,
                        id: id.clone(),
                        usage,
                        key_b64: SecretText::new(
                            base64::engine::general_purpose::STANDARD.encode(&bytes[..]),
                        ),
                        plaintext_key_material: true,
                    }
                }
                _ => anyhow::bail!(
                    "keys import needs --wrapped FILE --token TOKEN (or, unsafe, --from-file FILE --plaintext-key-material)"
                ),
            };
            (
                req,
                Box::new(move |_| {
                    println!(
                        "imported key {id} (usage {}, enabled); it has NO grants yet. To open it:",
                        usage_str(usage)
                    );
                    println!(
                        "  keyward admin --profile PROFILE keys grant {id}{store_flag} --principal '*' --ops encrypt,decrypt,metadata"
                    );
                    Ok(())
                }),
            )
        }
        Keys::List { store } => (
            Request::KeysList { store: store.store },
            Box::new(|v| {
                let keys: Vec<KeyInfo> = serde_json::from_value(v)?;
                println!(
                    "{:<24} {:<16} {:<9} {:>7}  {:<21} {:<10} GRANTS",
                    "ID", "USAGE", "STATUS", "VERSION", "CREATED", "ROTATES"
                );
                for k in keys {
                    let status = match k.status {
                        KeyStatus::Enabled => "enabled",
                        KeyStatus::Disabled => "disabled",
                    };
                    let grants = if k.grants.is_empty() {
                        "(none: deny all)".to_string()
                    } else {
                        k.grants
                            .iter()
                            .map(grant_str)
                            .collect::<Vec<_>>()
                            .join("; ")
                    };
                    let rotates = k
                        .rotate_every_secs
                        .map_or("-".to_string(), |s| format!("{}d", s / 86_400));
                    let status = match &k.destroy_at {
                        Some(_) => "destroy",
                        None => status,
                    };
                    println!(
                        "{:<24} {:<16} {:<9} {:>7}  {:<21} {:<10} {}",
                        k.id,
                        usage_str(k.usage),
                        status,
                        k.version,
                        k.created,
                        rotates,
                        grants
                    );
                    if let Some(at) = &k.destroy_at {
                        println!("{:<24}   destroyed at {at} unless cancelled", "");
                    }
                    if k.versions.len() > 1 {
                        for v in &k.versions {
                            println!("{:<24}   version {:>3} since {}", "", v.version, v.since);
                        }
                    }
                }
                Ok(())
            }),
        ),
        Keys::Enable { id, store } => (
            Request::KeysEnable {
                store: store.store,
                id: id.clone(),
            },
            Box::new(move |_| {
                println!("key {id} enabled");
                Ok(())
            }),
        ),
        Keys::ScheduleDestroy { id, store, days } => (
            Request::KeysScheduleDestroy {
                store: store.store,
                id: id.clone(),
                days: Some(days),
            },
            Box::new(move |v| {
                let k: KeyInfo = serde_json::from_value(v)?;
                println!(
                    "key {id} disabled and scheduled for destruction at {} (keys cancel-destroy {id} until then)",
                    k.destroy_at.unwrap_or_default()
                );
                Ok(())
            }),
        ),
        Keys::Export {
            id,
            store,
            wrapping_public_key,
            wrapping,
            out,
        } => {
            use rsa::pkcs8::{DecodePublicKey, EncodePublicKey};
            let wrapping_algorithm =
                WrappingAlgorithm::parse(&wrapping).map_err(anyhow::Error::msg)?;
            let pem = std::fs::read_to_string(&wrapping_public_key)
                .with_context(|| format!("{}", wrapping_public_key.display()))?;
            let der = rsa::RsaPublicKey::from_public_key_pem(pem.trim())
                .and_then(|k| k.to_public_key_der())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "--wrapping-public-key {}: not an RSA public key in PEM: {e}",
                        wrapping_public_key.display()
                    )
                })?;
            (
                Request::KeysExport {
                    store: store.store,
                    id,
                    wrapping_algorithm,
                    wrapping_public_key_der_b64: base64::engine::general_purpose::STANDARD
                        .encode(der.as_bytes()),
                },
                Box::new(move |v| write_export(&out, v)),
            )
        }
        Keys::CancelDestroy { id, store } => (
            Request::KeysCancelDestroy {
                store: store.store,
                id: id.clone(),
            },
            Box::new(move |v| {
                let k: KeyInfo = serde_json::from_value(v)?;
                let status = match k.status {
                    KeyStatus::Enabled => "enabled",
                    KeyStatus::Disabled => "disabled",
                };
                println!("key {id}: destruction cancelled, {status} again");
                Ok(())
            }),
        ),
        Keys::Rotate { id, store, every } => match every {
            None => (
                Request::KeysRotate {
                    store: store.store,
                    id: id.clone(),
                },
                Box::new(move |v| {
                    let k: KeyInfo = serde_json::from_value(v)?;
                    println!(
                        "key {id} rotated: version {} encrypts from now on; versions {} still decrypt",
                        k.version,
                        versions_str(&k)
                    );
                    Ok(())
                }),
            ),
            Some(p) => {
                let every_secs = parse_period(&p)?;
                (
                    Request::KeysRotation {
                        store: store.store,
                        id: id.clone(),
                        every_secs,
                    },
                    Box::new(move |_| {
                        match every_secs {
                            Some(_) => println!("key {id} rotates every {p}"),
                            None => println!("key {id}: rotation schedule cleared"),
                        }
                        Ok(())
                    }),
                )
            }
        },
        Keys::Disable { id, store } => (
            Request::KeysDisable {
                store: store.store,
                id: id.clone(),
            },
            Box::new(move |_| {
                println!("key {id} disabled");
                Ok(())
            }),
        ),
        Keys::Grant {
            id,
            store,
            grant,
            ops,
        } => {
            let ops = parse_ops(&ops).map_err(anyhow::Error::msg)?;
            let g = Grant {
                principal: grant.principal,
                ops,
                via_service: grant.via_service,
                source_vpc: grant.source_vpc,
                source_vpce: grant.source_vpce,
            };
            let text = grant_str(&g);
            (
                Request::KeysGrant {
                    store: store.store,
                    id: id.clone(),
                    grant: g,
                },
                Box::new(move |_| {
                    println!("key {id}: granted {text}");
                    Ok(())
                }),
            )
        }
        Keys::Revoke {
            id,
            store,
            grant,
            ops,
        } => {
            let ops = ops
                .map(|o| parse_ops(&o))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            (
                Request::KeysRevoke {
                    store: store.store,
                    id: id.clone(),
                    principal: grant.principal,
                    ops,
                    via_service: grant.via_service,
                    source_vpc: grant.source_vpc,
                    source_vpce: grant.source_vpce,
                },
                Box::new(move |v| {
                    let n = v.get("removed").and_then(|n| n.as_u64()).unwrap_or(0);
                    println!("key {id}: {n} grant(s) changed");
                    Ok(())
                }),
            )
        }
    })
}

fn build_creds(c: Creds) -> anyhow::Result<(Request, Show)> {
    Ok(match c {
        Creds::List { store } => (
            Request::CredsList { store: store.store },
            Box::new(|v| {
                let creds: Vec<CredInfo> = serde_json::from_value(v)?;
                println!("{:<32} CREATED", "ACCESS KEY ID");
                for c in creds {
                    println!(
                        "{:<32} {}",
                        c.access_key_id,
                        c.created.as_deref().unwrap_or("-")
                    );
                }
                Ok(())
            }),
        ),
        Creds::Add {
            store,
            access_key_id,
            secret_file,
        } => {
            let secret = match secret_file {
                Some(f) => {
                    let s = zeroize::Zeroizing::new(
                        std::fs::read_to_string(&f).with_context(|| format!("{}", f.display()))?,
                    );
                    Some(SecretText::new(
                        s.trim_end_matches(['\n', '\r']).to_string(),
                    ))
                }
                None => None,
            };
            let generated = secret.is_none();
            (
                Request::CredsAdd {
                    store: store.store,
                    access_key_id,
                    secret_access_key: secret,
                },
                Box::new(move |v| {
                    let added: CredAdded = serde_json::from_value(v)?;
                    println!(
                        "added credential {} to key store {} (live now)",
                        added.access_key_id, added.store
                    );
                    if generated {
                        println!(
                            "secret access key (shown once): {}",
                            added.secret_access_key.expose()
                        );
                    }
                    println!("then: aws kms update-custom-key-store ... --xks-proxy-authentication-credential AccessKeyId={},RawSecretAccessKey=...", added.access_key_id);
                    Ok(())
                }),
            )
        }
        Creds::Remove {
            access_key_id,
            store,
        } => (
            Request::CredsRemove {
                store: store.store,
                access_key_id: access_key_id.clone(),
            },
            Box::new(move |_| {
                println!("removed credential {access_key_id}; requests signed with it are refused from now on");
                Ok(())
            }),
        ),
    })
}

fn show_approval(a: &ApprovalInfo) {
    println!(
        "{:<32} {:<9} {:<22} {:<24} {:>5}  {}",
        a.id,
        a.state,
        a.op,
        a.requester,
        format!("{}/{}", a.approvers.len(), a.needed),
        a.expires
    );
    println!("{:<32}   {}", "", a.what);
    if !a.approvers.is_empty() {
        println!("{:<32}   approved by {}", "", a.approvers.join(", "));
    }
}

fn build_approvals(a: Approvals) -> (Request, Show) {
    match a {
        Approvals::List => (
            Request::ApprovalsList,
            Box::new(|v| {
                let list: Vec<ApprovalInfo> = serde_json::from_value(v)?;
                println!(
                    "{:<32} {:<9} {:<22} {:<24} {:>5}  EXPIRES",
                    "ID", "STATE", "OPERATION", "REQUESTER", "APPR"
                );
                for a in &list {
                    show_approval(a);
                }
                Ok(())
            }),
        ),
        Approvals::Approve { id } => (
            Request::ApprovalsApprove { id },
            Box::new(|v| {
                let a: ApprovalInfo = serde_json::from_value(v)?;
                match a.state.as_str() {
                    "approved" => println!(
                        "approved request {}: its requester can now re-run the command with \
                         --approval {} (once, until {})",
                        a.id, a.id, a.expires
                    ),
                    _ => println!(
                        "approved request {} ({} of {} approvals)",
                        a.id,
                        a.approvers.len(),
                        a.needed
                    ),
                }
                Ok(())
            }),
        ),
        Approvals::Deny { id } => (
            Request::ApprovalsDeny { id },
            Box::new(|v| {
                let a: ApprovalInfo = serde_json::from_value(v)?;
                println!("denied request {} ({})", a.id, a.op);
                Ok(())
            }),
        ),
    }
}

fn store_flag(store: &Option<String>) -> String {
    store
        .as_ref()
        .map(|s| format!(" --store {s}"))
        .unwrap_or_default()
}

fn grant_str(g: &Grant) -> String {
    let mut s = format!("{} -> {}", g.principal, ops_str(&g.ops));
    if let Some(v) = &g.via_service {
        s += &format!(" via {v}");
    }
    if let Some(v) = &g.source_vpc {
        s += &format!(" vpc {v}");
    }
    if let Some(v) = &g.source_vpce {
        s += &format!(" vpce {v}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn request(argv: &[&str]) -> Result<String, String> {
        let cli = Cli::try_parse_from(std::iter::once("admin").chain(argv.iter().copied()))
            .map_err(|e| e.kind().to_string())?;
        let (req, _) = build(cli.args.command).map_err(|e| e.to_string())?;
        serde_json::to_string(&req).map_err(|e| e.to_string())
    }

    #[test]
    fn a_store_is_named_positionally_or_with_the_earlier_name_option() {
        let positional = request(&["stores", "create", "payments", "--region", "us-east-1"]);
        let flag = request(&[
            "stores",
            "create",
            "--name",
            "payments",
            "--region",
            "us-east-1",
        ]);
        assert_eq!(positional, flag);
        assert!(positional.unwrap().contains("\"payments\""));
        assert_eq!(
            request(&["stores", "remove", "old"]),
            request(&["stores", "remove", "--name", "old"])
        );
        // Neither, or both: refused by the parser.
        assert!(request(&["stores", "remove"]).is_err());
        assert!(request(&["stores", "remove", "a", "--name", "b"]).is_err());
    }
}

/// `keyward admin backup` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum BackupCmd {
    /// Re-wrap a backup under the newest master-key version the appliance holds (before
    /// `krs mk retire --backups-moved`): the appliance opens and verifies it as a restore
    /// would (MACs, records, deployment) and returns it re-sealed; nothing is restored.
    /// Security role. The file goes in one request to `/admin/v1/file`, capped at 96 MiB.
    Rewrap {
        /// The backup to re-wrap.
        #[arg(long = "in")]
        input: PathBuf,
        /// Where to write the re-wrapped backup (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
    },
}
