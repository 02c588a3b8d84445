//! The admin API client: a profile file (URL, CA certificate, client certificate and key) and one
//! HTTPS request per command over mutual TLS.
//!
//! Profile (TOML; relative paths are relative to the profile's directory):
//! ```toml
//! url = "https://appliance.example.com:8444"
//! ca_cert = "ca.pem"            # the CA that signed the admin listener's certificate
//! client_cert = "admin.pem"     # this operator's certificate, from the operator CA
//! client_key = "admin-key.pem"
//! ```
//!
//! Instead of `ca_cert`, `server_spki_sha256 = "<64 hex>"` trusts exactly the server key with
//! that SPKI hash (the appliance-managed TLS key): for the self-signed certificate served before
//! a chain is installed. `keyward admin trust` ([`super::trust`]) writes it after verifying live
//! attestation bound to that key; the hash the appliance logs on the console is the host's to
//! change and is not a reason to trust it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;

use super::proto::{Request, Response, FILE_PATH, PATH};
use super::tls::ServerTrust;
use keyward_config::{Problems, Section};

/// Errors talking to the admin API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The profile is wrong in a way the message says (a missing or bad field, named; or TOML
    /// syntax, as toml's one-line message: its own Display spans several lines). No cause.
    #[error("profile {path}: {msg}")]
    Profile { path: String, msg: String },
    /// The profile file could not be read.
    #[error("reading profile {}", path.display())]
    ProfileRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] super::tls::TlsError),
    /// The profile's host is not a name or address TLS can check.
    #[error("cannot connect to {url}: bad host name")]
    HostName {
        url: String,
        #[source]
        source: rustls::pki_types::InvalidDnsNameError,
    },
    /// No answer to the TCP connection in time (nothing else to say).
    #[error("cannot connect to {url}: timed out")]
    ConnectTimeout { url: String },
    /// The TCP connection (`step` = "TCP") or the TLS handshake (`step` = "TLS") failed.
    #[error("cannot connect to {url}: {step}")]
    Connect {
        url: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP/1.1 handshake on the TLS connection failed.
    #[error("cannot connect to {url}: HTTP")]
    Http {
        url: String,
        #[source]
        source: hyper::Error,
    },
    /// The request could not be encoded as JSON.
    #[error("admin API: encoding the request")]
    Encode(#[source] serde_json::Error),
    /// The HTTP request could not be built.
    #[error("admin API: building the request")]
    Request(#[source] http::Error),
    /// Sending the request failed (a TLS alert from the server, e.g. certificate refused,
    /// surfaces here).
    #[error("admin API: request failed")]
    Send(#[source] hyper::Error),
    /// Reading the answer's body failed.
    #[error("admin API: reading the answer")]
    Body(#[source] hyper::Error),
    /// The answer is not the API's JSON.
    #[error("admin API: unreadable answer")]
    Answer(#[source] serde_json::Error),
    /// The server did not answer within the deadline (the message says how long; no cause).
    #[error("admin API: {0}")]
    Protocol(String),
}

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone)]
pub struct Profile {
    pub url: String,
    pub host: String,
    pub port: u16,
    /// How the server is authenticated: `ca_cert`, or `server_spki_sha256` (which wins).
    pub trust: ServerTrust,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl Profile {
    /// Read and check a profile file.
    pub fn load(path: &Path) -> Result<Profile, ClientError> {
        Self::load_with(path, None)
    }

    /// [`Profile::load`], with `fallback` as the server trust when the profile names none
    /// (`keyward admin trust`, before the first pin is written).
    pub fn load_with(path: &Path, fallback: Option<ServerTrust>) -> Result<Profile, ClientError> {
        let err = |msg: String| ClientError::Profile {
            path: path.display().to_string(),
            msg,
        };
        let text = std::fs::read_to_string(path).map_err(|source| ClientError::ProfileRead {
            path: path.to_path_buf(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.message().to_string()))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let mut p = Problems::default();
        let mut s = Section::new("", &table, base);
        let url = s.required_string("url", &mut p);
        let ca_cert = s.path("ca_cert", &mut p);
        let pin = s.string("server_spki_sha256", &mut p);
        let client_cert = s.required_path("client_cert", &mut p);
        let client_key = s.required_path("client_key", &mut p);
        s.finish(&mut p);
        if let Some(first) = p.list.first() {
            return Err(err(first.to_string()));
        }
        let (Some(url), Some(client_cert), Some(client_key)) = (url, client_cert, client_key)
        else {
            return Err(err("incomplete profile".into()));
        };
        let trust =
            match (pin, ca_cert) {
                (Some(pin), _) => {
                    ServerTrust::SpkiSha256(super::tls::parse_sha256_hex(&pin).map_err(err)?)
                }
                (None, Some(ca)) => ServerTrust::Ca(ca),
                (None, None) => match fallback {
                    Some(t) => t,
                    None => return Err(err(
                        "give ca_cert (the admin listener's CA) or server_spki_sha256 (its key's \
                         hash; `keyward admin trust` writes it after checking the appliance's \
                         attestation)"
                            .into(),
                    )),
                },
            };
        let (host, port) = parse_url(&url).map_err(err)?;
        Ok(Profile {
            url,
            host,
            port,
            trust,
            client_cert,
            client_key,
        })
    }

    /// Send one request and return the answer (an `ok: false` answer is returned, not an error).
    pub async fn call(&self, req: &Request) -> Result<Response, ClientError> {
        self.call_with(req, None).await
    }

    /// [`Profile::call`] using the approval `approval` (an approved request's id).
    pub async fn call_with(
        &self,
        req: &Request,
        approval: Option<&str>,
    ) -> Result<Response, ClientError> {
        let tls = super::tls::client_config_with(&self.trust, &self.client_cert, &self.client_key)?;
        let url = || self.url.clone();
        let server_name = ServerName::try_from(self.host.clone())
            .map_err(|source| ClientError::HostName { url: url(), source })?;
        let tcp = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| ClientError::ConnectTimeout { url: url() })?
        .map_err(|source| ClientError::Connect {
            url: url(),
            step: "TCP",
            source,
        })?;
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(server_name, tcp)
            .await
            .map_err(|source| ClientError::Connect {
                url: url(),
                step: "TLS",
                source,
            })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(|source| ClientError::Http { url: url(), source })?;
        tokio::spawn(conn);
        let body = serde_json::to_vec(req).map_err(ClientError::Encode)?;
        let body = zeroize::Zeroizing::new(body);
        let path = if req.carries_file() { FILE_PATH } else { PATH };
        let mut builder = http::Request::post(path)
            .header(http::header::HOST, format!("{}:{}", self.host, self.port))
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(a) = approval {
            builder = builder.header(super::proto::APPROVAL_HEADER, a);
        }
        let http_req = builder
            .body(Full::new(Bytes::copy_from_slice(&body)))
            .map_err(ClientError::Request)?;
        // A file (a backup of many keys) takes longer to send and to re-seal.
        let wait = if req.carries_file() { 600 } else { 60 };
        let resp = tokio::time::timeout(Duration::from_secs(wait), sender.send_request(http_req))
            .await
            .map_err(|_| ClientError::Protocol(format!("no answer within {wait} s")))?
            .map_err(ClientError::Send)?;
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(ClientError::Body)?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(ClientError::Answer)
    }
}

/// `https://host:port` (IPv6 literal in brackets) into host and port; only https.
pub fn parse_url(url: &str) -> Result<(String, u16), String> {
    let rest = url
        .strip_prefix("https://")
        .ok_or_else(|| format!("url `{url}` must start with https://"))?;
    let rest = rest.trim_end_matches('/');
    let (host, port) = if let Some(r) = rest.strip_prefix('[') {
        let (h, after) = r
            .split_once(']')
            .ok_or_else(|| format!("url `{url}`: unclosed ["))?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match rest.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (rest.to_string(), None),
        }
    };
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| format!("url `{url}`: bad port"))?,
        None => 443,
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("url `{url}`: give https://host:port only"));
    }
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("https://127.0.0.1:9000").unwrap(),
            ("127.0.0.1".into(), 9000)
        );
        assert_eq!(
            parse_url("https://[::1]:9000/").unwrap(),
            ("::1".into(), 9000)
        );
        assert_eq!(
            parse_url("https://a.example").unwrap(),
            ("a.example".into(), 443)
        );
        assert!(parse_url("http://a:1").is_err());
        assert!(parse_url("https://a:1/x").is_err());
    }

    #[test]
    fn an_unreadable_profile_keeps_the_io_error() {
        use std::error::Error as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let e = Profile::load(&path).unwrap_err();
        assert_eq!(e.to_string(), format!("reading profile {}", path.display()));
        let io = e.source().and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(|e| e.kind()),
            Some(std::io::ErrorKind::NotFound),
            "{e:?}"
        );
    }
}
