//! A small development PKI with rcgen: a self-signed CA, a TLS server certificate and admin
//! client certificates signed by it. `keyward demo` uses it for its state directory and the
//! tests use it to make "another CA". Production deployments bring their own CA.

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    Ia5String, IsCa, KeyPair, KeyUsagePurpose, SanType,
};

use super::role::Role;

/// Errors generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation")]
    Gen(#[from] rcgen::Error),
    #[error("writing {path}")]
    Write {
        path: String,
        source: std::io::Error,
    },
}

/// A CA that can issue certificates (its key stays in memory until written).
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its private key, PEM.
pub struct Issued {
    pub cert_pem: String,
    /// PKCS#8 PEM. Zeroized on drop.
    pub key_pem: zeroize::Zeroizing<String>,
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

impl Ca {
    /// A new self-signed CA (ECDSA P-256) named `common_name`, valid ten years.
    pub fn new(common_name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);
        dn.push(DnType::OrganizationName, "keyward");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, 3650);
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    /// An existing CA from its PEM certificate and PEM (PKCS#8) private key, to issue with.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let params = CertificateParams::from_ca_cert_pem(cert_pem)?;
        // Re-signed in memory only to carry the CA's name and key into `signed_by`: the issued
        // certificates name this subject and are signed with this key, which is what chains
        // to the original CA certificate.
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key })
    }

    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    pub fn key_pem(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(self.key.serialize_pem())
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid `days`.
    pub fn server(&self, names: &[&str], days: i64) -> Result<Issued, PkiError> {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, days);
        self.issue(params)
    }

    /// A client certificate with subject `CN=common_name`, valid `days` (negative: expired),
    /// with no role claim (the admin listener's `unclaimed_role` applies).
    pub fn client(&self, common_name: &str, days: i64) -> Result<Issued, PkiError> {
        self.client_with_role(common_name, days, None)
    }

    /// [`Ca::client`] with a role claim: the SAN URI `keyward:role:<role>` (see
    /// [`crate::role`]).
    pub fn client_with_role(
        &self,
        common_name: &str,
        days: i64,
        role: Option<Role>,
    ) -> Result<Issued, PkiError> {
        self.client_with_roles(common_name, days, role.as_slice())
    }

    /// [`Ca::client`] with one SAN URI claim per role (the certificate gets their union).
    pub fn client_with_roles(
        &self,
        common_name: &str,
        days: i64,
        roles: &[Role],
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "keyward");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.subject_alt_names = roles
            .iter()
            .map(|r| Ok(SanType::URI(Ia5String::try_from(r.uri())?)))
            .collect::<Result<Vec<_>, PkiError>>()?;
        validity(&mut params, days);
        if days < 0 {
            params.not_before = params.not_after - time::Duration::days(30);
        }
        self.issue(params)
    }

    /// Sign a PEM PKCS#10 request (its signature is checked) as a TLS server certificate for
    /// the names it asks for, valid `days` (negative: expired). Returns the certificate PEM.
    pub fn sign_csr(&self, csr_pem: &str, days: i64) -> Result<String, PkiError> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)?;
        req.params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        req.params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut req.params, days);
        if days < 0 {
            req.params.not_before = req.params.not_after - time::Duration::days(30);
        }
        Ok(req.signed_by(&self.cert, &self.key)?.pem())
    }

    fn issue(&self, params: CertificateParams) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: zeroize::Zeroizing::new(key.serialize_pem()),
        })
    }
}

/// Write a file with mode 0600 (private keys) or 0644, atomically enough for a state dir:
/// written to a temp name, fsynced, renamed.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| PkiError::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(&tmp)
        .map_err(err)?;
    f.write_all(contents).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}
