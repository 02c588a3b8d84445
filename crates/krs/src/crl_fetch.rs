//! `keyward krs crl fetch`: download AMD's CRLs from the KDS
//! (`{base}/vcek/v1/{Milan,Genoa,Turin}/crl`, `{base}/vlek/v1/...`; base
//! `https://kdsintf.amd.com` unless told otherwise) for the products and signers the KRS's
//! policy accepts, check each one's signature by the pinned ARK that issued it, refuse one that
//! is already past its nextUpdate or older than the copy in place (a replayed old CRL would
//! hide a later revocation), and only then replace the CRL file, atomically. The file is PEM,
//! each block preceded by a `# source: URL` line.
//!
//! The HTTP client is hyper's (already a dependency) over tokio-rustls with the webpki roots;
//! the CRL signature, not TLS, is what makes a CRL trusted.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};

use keyward_verify::snp::split_crl_input;
use keyward_verify::snp::{check_crl_signature, CrlFacts};
use keyward_verify::Policy;
use keyward_verify::{Product, SignerKind};

/// AMD's Key Distribution Service.
pub(crate) const AMD_KDS: &str = "https://kdsintf.amd.com";

/// Largest CRL accepted (AMD's are a few KiB).
const MAX_CRL: usize = 1024 * 1024;

/// Why a fetch failed; nothing was written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FetchError {
    /// The URL or the answer is unusable for a reason the message gives (no host, not
    /// http(s), a non-200 status, no answer in time); no cause.
    #[error("{0}: {1}")]
    Http(String, String),
    /// A step of the download failed (`step`: "TCP", "TLS", "HTTP", ...); the cause is the
    /// source (an I/O, rustls, hyper or http error).
    #[error("{url}: {step}")]
    Transfer {
        url: String,
        step: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The CRL fails a check the message names (signature, freshness, replay); no cause.
    #[error("{0}: the CRL is refused: {1}")]
    Refused(String, String),
    /// The answer is not PEM or DER CRLs.
    #[error("{url}: the CRL is refused")]
    NotCrl {
        url: String,
        #[source]
        source: keyward_verify::snp::CertError,
    },
    /// The fetched CRL could not be written as PEM.
    #[error("{url}: encoding the CRL as PEM")]
    Pem {
        url: String,
        #[source]
        source: der::Error,
    },
    /// The installed CRL file is not what [`fetch`] writes.
    #[error("CRL file {}", path.display())]
    Installed {
        path: PathBuf,
        #[source]
        source: TaggedError,
    },
    /// The installed CRL file could not be read or replaced.
    #[error("CRL file {}", path.display())]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Why a CRL file does not read as [`read_tagged`] expects.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaggedError {
    #[error("not PEM or DER CRLs")]
    Split(#[source] keyward_verify::snp::CertError),
    #[error("a PEM X509 CRL block does not decode")]
    Pem(#[source] der::Error),
    #[error("unterminated PEM X509 CRL block")]
    Unterminated,
}

/// The KDS URL of one CRL.
pub(crate) fn crl_url(base: &str, signer: SignerKind, product: Product) -> String {
    let kind = match signer {
        SignerKind::Vcek => "vcek",
        SignerKind::Vlek => "vlek",
    };
    format!(
        "{}/{kind}/v1/{}/crl",
        base.trim_end_matches('/'),
        product.amd_name()
    )
}

/// One CRL block of a fetched file: where it came from and its DER.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Tagged {
    pub source: Option<String>,
    pub der: Vec<u8>,
}

/// Read a CRL file as written by [`fetch`] (PEM with `# source:` lines); a plain DER or PEM
/// file gives untagged blocks.
pub(crate) fn read_tagged(bytes: &[u8]) -> Result<Vec<Tagged>, TaggedError> {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return Ok(vec![Tagged {
            source: None,
            der: bytes.to_vec(),
        }]);
    };
    if !text.contains("-----BEGIN X509 CRL-----") {
        return split_crl_input(bytes)
            .map(|v| {
                v.into_iter()
                    .map(|der| Tagged { source: None, der })
                    .collect()
            })
            .map_err(TaggedError::Split);
    }
    let mut out = Vec::new();
    let mut source = None;
    let mut block: Option<String> = None;
    for line in text.lines() {
        if let Some(b) = block.as_mut() {
            b.push_str(line);
            b.push('\n');
            if line.starts_with("-----END X509 CRL-----") {
                let (_, der) =
                    der::pem::decode_vec(b.as_bytes()).map_err(|e| TaggedError::Pem(e.into()))?;
                out.push(Tagged {
                    source: source.take(),
                    der,
                });
                block = None;
            }
        } else if let Some(s) = line.strip_prefix("# source: ") {
            source = Some(s.trim().to_string());
        } else if line.starts_with("-----BEGIN X509 CRL-----") {
            block = Some(format!("{line}\n"));
        }
    }
    if block.is_some() {
        return Err(TaggedError::Unterminated);
    }
    Ok(out)
}

/// What [`fetch`] installed.
#[derive(Debug, Clone)]
pub(crate) struct Fetched {
    pub url: String,
    pub facts: CrlFacts,
}

/// Fetch every CRL `policy` needs from `base` into `out`. All or nothing: any download or
/// check failure leaves `out` as it was.
pub(crate) fn fetch(
    base: &str,
    policy: &Policy,
    out: &Path,
    now: u64,
) -> Result<Vec<Fetched>, FetchError> {
    let existing = match std::fs::read(out) {
        Ok(b) => read_tagged(&b).map_err(|source| FetchError::Installed {
            path: out.to_path_buf(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(source) => {
            return Err(FetchError::File {
                path: out.to_path_buf(),
                source,
            })
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| FetchError::Transfer {
            url: base.into(),
            step: "starting the runtime",
            source: source.into(),
        })?;
    let mut got = Vec::new();
    let mut text = String::from(
        "# AMD SEV-SNP CRLs written by `keyward krs crl fetch`; each signature was checked by\n\
         # the pinned ARK that issued it.\n",
    );
    for signer in &policy.snp.signers {
        for product in &policy.snp.products {
            let url = crl_url(base, *signer, *product);
            let body = rt.block_on(get(&url))?;
            let ders = split_crl_input(&body).map_err(|source| FetchError::NotCrl {
                url: url.clone(),
                source,
            })?;
            let [der] = ders.as_slice() else {
                return Err(FetchError::Refused(
                    url,
                    format!("{} CRLs in the answer, expected one", ders.len()),
                ));
            };
            let facts = check_crl_signature(der, policy)
                .map_err(|e| FetchError::Refused(url.clone(), e))?;
            match facts.next_update {
                Some(nu) if nu > now => {}
                Some(nu) => {
                    return Err(FetchError::Refused(
                        url,
                        format!(
                            "already past its nextUpdate {}",
                            keyward_verify::snp::fmt_time(nu)
                        ),
                    ))
                }
                None => return Err(FetchError::Refused(url, "no nextUpdate".into())),
            }
            for old in existing
                .iter()
                .filter(|t| t.source.as_deref() == Some(&url))
            {
                if let Ok(of) = check_crl_signature(&old.der, policy) {
                    if of.this_update > facts.this_update {
                        return Err(FetchError::Refused(
                            url,
                            format!(
                                "thisUpdate {} is older than the installed copy's {} (a replayed \
                                 CRL could hide a revocation)",
                                keyward_verify::snp::fmt_time(facts.this_update),
                                keyward_verify::snp::fmt_time(of.this_update)
                            ),
                        ));
                    }
                }
            }
            text.push_str(&format!("# source: {url}\n"));
            text.push_str(
                &der::pem::encode_string("X509 CRL", der::pem::LineEnding::LF, der).map_err(
                    |e| FetchError::Pem {
                        url: url.clone(),
                        source: e.into(),
                    },
                )?,
            );
            got.push(Fetched { url, facts });
        }
    }
    write_atomic(out, text.as_bytes()).map_err(|source| FetchError::File {
        path: out.to_path_buf(),
        source,
    })?;
    Ok(got)
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("fetch-tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

fn http_err(url: &str) -> impl Fn(String) -> FetchError + '_ {
    move |e| FetchError::Http(url.to_string(), e)
}

/// A failed download step of `url`, the cause kept as the source.
fn step_err<'a, E: Into<Box<dyn std::error::Error + Send + Sync>>>(
    url: &'a str,
    step: &'static str,
) -> impl FnOnce(E) -> FetchError + 'a {
    move |source| FetchError::Transfer {
        url: url.to_string(),
        step,
        source: source.into(),
    }
}

/// GET `url` (http or https), 200 only, body at most [`MAX_CRL`], 30 s in all.
async fn get(url: &str) -> Result<Vec<u8>, FetchError> {
    let e = http_err(url);
    let uri: http::Uri = url
        .parse()
        .map_err(step_err::<http::uri::InvalidUri>(url, "not a URL"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(e("the URL must be http:// or https://".into())),
    };
    let host = uri.host().ok_or_else(|| e("no host".into()))?.to_string();
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    let path = uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let work = async {
        let tcp = tokio::net::TcpStream::connect((host.as_str(), port))
            .await
            .map_err(step_err::<std::io::Error>(url, "TCP"))?;
        if https {
            let mut roots = rustls::RootCertStore::empty();
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(step_err::<rustls::Error>(url, "TLS configuration"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
            let name = rustls_pki_types::ServerName::try_from(host.clone()).map_err(step_err::<
                rustls_pki_types::InvalidDnsNameError,
            >(
                url,
                "TLS server name",
            ))?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, tcp)
                .await
                .map_err(step_err::<std::io::Error>(url, "TLS"))?;
            request(tls, &host, &path, url).await
        } else {
            request(tcp, &host, &path, url).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), work)
        .await
        .map_err(|_| e("no answer within 30 s".into()))?
}

async fn request<S>(io: S, host: &str, path: &str, url: &str) -> Result<Vec<u8>, FetchError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let e = http_err(url);
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
            .await
            .map_err(step_err::<hyper::Error>(url, "HTTP handshake"))?;
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header(http::header::HOST, host)
        .header(http::header::USER_AGENT, "keyward-krs")
        .body(Empty::<Bytes>::new())
        .map_err(step_err::<http::Error>(url, "building the request"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(step_err::<hyper::Error>(url, "HTTP request"))?;
    let status = resp.status();
    if !status.is_success() {
        return Err(e(format!("HTTP {status}")));
    }
    let body = Limited::new(resp.into_body(), MAX_CRL)
        .collect()
        .await
        .map_err(step_err::<Box<dyn std::error::Error + Send + Sync>>(
            url,
            "reading the answer",
        ))?
        .to_bytes();
    Ok(body.to_vec())
}
