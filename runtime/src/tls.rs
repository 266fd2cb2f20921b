//! Mutual TLS between the services: each service loads its certificate, key and the CA that
//! signs every Trias identity; servers require a client certificate from that CA, clients
//! check that the server's certificate carries the identity (a URI SAN such as
//! `spiffe://trias/issuer`) they meant to reach, and handlers read the caller's identity from
//! its certificate to decide what it may do.
//!
//! Plain-text gRPC exists only behind a service's explicit `dev_plaintext` flag: then there
//! are no identities, every caller is [`Caller::Unauthenticated`], and the service logs a
//! warning at start.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig};

/// The longest a TLS handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The trust domain of Trias's own identities.
pub const TRUST_DOMAIN: &str = "trias";

/// The identity of a Trias service or backend named `name` (`issuer`, `validator`,
/// `auditor`, or a backend's name): `spiffe://trias/<name>`.
pub fn identity_of(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/{name}")
}

/// Where a service's TLS material lives (the `[tls]` table of each service's configuration).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// PEM certificate of the CA that signs every identity this service talks to.
    pub ca: PathBuf,
    /// PEM certificate of this service; its URI SAN is the service's identity.
    pub cert: PathBuf,
    /// PEM private key of `cert`; refused if its group or others may read it.
    pub key: PathBuf,
}

impl TlsFiles {
    /// Each file with the configuration key that names it.
    pub fn named(&self) -> [(&'static str, PathBuf); 3] {
        [
            ("tls.key", self.key.clone()),
            ("tls.cert", self.cert.clone()),
            ("tls.ca", self.ca.clone()),
        ]
    }
}

/// Why TLS material cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("tls: {0}")]
    Config(String),
}

fn file_error(path: &Path, reason: impl fmt::Display) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    }
}

/// Refuses a private key file that anyone but its owner may read or write.
pub fn check_owner_only(path: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path)
            .map_err(|e| file_error(path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(file_error(
                path,
                format_args!(
                    "private key is accessible to group or others (mode {:o}); chmod 600 it",
                    mode & 0o777
                ),
            ));
        }
    }
    Ok(())
}

/// The URI SANs of a DER certificate (empty if it has none or does not parse).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
}

/// The one identity a certificate names: its single `spiffe://` URI SAN.
fn identity_in(der: &[u8]) -> Option<String> {
    let mut ids = uri_sans(der)
        .into_iter()
        .filter(|uri| uri.starts_with("spiffe://"));
    let id = ids.next()?;
    ids.next().is_none().then_some(id)
}

/// The `CERTIFICATE` blocks of a PEM text, decoded.
fn pem_certificates(text: &str) -> Vec<CertificateDer<'static>> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let body = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let Some(end) = body.find("-----END CERTIFICATE-----") else {
            break;
        };
        let b64: String = body[..end].split_whitespace().collect();
        if let Ok(der) = data_encoding::BASE64.decode(b64.as_bytes()) {
            out.push(CertificateDer::from(der));
        }
        rest = &body[end..];
    }
    out
}

/// The loaded material of an mTLS service.
struct Mtls {
    ca_pem: Vec<u8>,
    roots: Arc<RootCertStore>,
    identity: Identity,
    own: String,
    algorithms: WebPkiSupportedAlgorithms,
    /// Callers' identities by their certificate, so a connection's certificate is parsed
    /// once, not on every request it carries.
    callers: Mutex<HashMap<Vec<u8>, Option<String>>>,
}

/// The most requests one gRPC connection carries at once (HTTP/2
/// `SETTINGS_MAX_CONCURRENT_STREAMS`); a well-behaved client waits for a free stream.
pub const MAX_CONCURRENT_STREAMS: u32 = 256;
/// The largest header block of a gRPC request (HTTP/2 `SETTINGS_MAX_HEADER_LIST_SIZE`):
/// room for a bearer token and trace context.
pub const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The most caller certificates remembered; past it the memory starts over.
const MAX_REMEMBERED_CALLERS: usize = 4096;

impl Mtls {
    /// The identity a (CA-verified) client certificate names.
    fn caller(&self, der: &[u8]) -> Option<String> {
        // A poisoned lock only means another request panicked mid-insert; the map is still
        // a valid cache.
        let mut callers = self.callers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(known) = callers.get(der) {
            return known.clone();
        }
        let identity = identity_in(der);
        if callers.len() >= MAX_REMEMBERED_CALLERS {
            callers.clear();
        }
        callers.insert(der.to_vec(), identity.clone());
        identity
    }
}

/// How a service carries gRPC: mutual TLS, or plain text in development only.
#[derive(Clone)]
pub struct Transport {
    mtls: Option<Arc<Mtls>>,
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.mtls {
            // The key is never printed; the identity is public.
            Some(m) => write!(f, "Transport::Mtls({})", m.own),
            None => f.write_str("Transport::Plaintext"),
        }
    }
}

impl Transport {
    /// Plain text: no encryption, no identities. Only for development, behind the
    /// service's `dev_plaintext` flag.
    pub fn plaintext() -> Transport {
        Transport { mtls: None }
    }

    /// The transport a service's configuration asks for: mTLS from `tls`, or plain text when
    /// `dev_plaintext` is set. Exactly one of the two must be given; `service` names the
    /// service in the warning plain text logs.
    pub fn from_config(
        tls: Option<&TlsFiles>,
        dev_plaintext: bool,
        service: &str,
    ) -> Result<Transport, TlsError> {
        match (tls, dev_plaintext) {
            (Some(files), false) => Transport::load(files),
            (None, true) => {
                tracing::warn!(
                    service,
                    "dev_plaintext is set: gRPC runs without TLS and without peer identities; \
                     never use this outside development"
                );
                Ok(Transport::plaintext())
            }
            (Some(_), true) => Err(TlsError::Config(
                "both [tls] and dev_plaintext are set; choose one".into(),
            )),
            (None, false) => Err(TlsError::Config(
                "[tls] (ca, cert, key) is required; dev_plaintext = true runs without TLS, \
                 for development only"
                    .into(),
            )),
        }
    }

    /// Loads a service's TLS material; the key must be owner-only and the certificate must
    /// name exactly one `spiffe://` identity.
    pub fn load(files: &TlsFiles) -> Result<Transport, TlsError> {
        // Servers build their rustls configuration with the process default provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let read = |path: &Path| std::fs::read(path).map_err(|e| file_error(path, e));
        check_owner_only(&files.key)?;
        let (ca_pem, cert_pem, key_pem) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
        let ca_text = String::from_utf8_lossy(&ca_pem);
        let mut roots = RootCertStore::empty();
        let cas = pem_certificates(&ca_text);
        if cas.is_empty() {
            return Err(file_error(&files.ca, "holds no PEM certificate"));
        }
        for ca in cas {
            roots
                .add(ca)
                .map_err(|e| file_error(&files.ca, format_args!("not a CA certificate: {e}")))?;
        }
        let own_cert = pem_certificates(&String::from_utf8_lossy(&cert_pem));
        let own = own_cert
            .first()
            .ok_or_else(|| file_error(&files.cert, "holds no PEM certificate"))
            .and_then(|der| {
                identity_in(der).ok_or_else(|| {
                    file_error(&files.cert, "must carry exactly one spiffe:// URI SAN")
                })
            })?;
        if !String::from_utf8_lossy(&key_pem).contains("PRIVATE KEY-----") {
            return Err(file_error(&files.key, "holds no PEM private key"));
        }
        let provider = CryptoProvider::get_default()
            .cloned()
            .unwrap_or_else(|| Arc::new(rustls::crypto::ring::default_provider()));
        Ok(Transport {
            mtls: Some(Arc::new(Mtls {
                ca_pem,
                roots: Arc::new(roots),
                identity: Identity::from_pem(cert_pem, key_pem),
                own,
                algorithms: provider.signature_verification_algorithms,
                callers: Mutex::default(),
            })),
        })
    }

    pub fn is_mtls(&self) -> bool {
        self.mtls.is_some()
    }

    /// This service's own identity, under mTLS.
    pub fn identity(&self) -> Option<&str> {
        self.mtls.as_deref().map(|m| m.own.as_str())
    }

    /// A gRPC server builder: under mTLS it presents this service's certificate and requires
    /// every caller to present one signed by the CA.
    pub fn server(&self) -> Result<Server, TlsError> {
        // Every request gets a span, the child of the caller's when it sent a trace context.
        // A connection carries at most MAX_CONCURRENT_STREAMS requests at once (tonic's
        // default is no limit; clients queue the rest), with headers of at most
        // MAX_HEADER_LIST_BYTES.
        let builder = Server::builder()
            .trace_fn(crate::trace::server_span)
            .max_concurrent_streams(MAX_CONCURRENT_STREAMS)
            .http2_max_header_list_size(MAX_HEADER_LIST_BYTES);
        match &self.mtls {
            None => Ok(builder),
            Some(m) => builder
                .tls_config(
                    ServerTlsConfig::new()
                        .identity(m.identity.clone())
                        .client_ca_root(Certificate::from_pem(&m.ca_pem))
                        .timeout(HANDSHAKE_TIMEOUT),
                )
                .map_err(|e| TlsError::Config(e.to_string())),
        }
    }

    /// An endpoint for `url` (`https://host:port` under mTLS, `http://` in plain text) whose
    /// server must prove the identity `peer`.
    pub fn endpoint(&self, url: &str, peer: &str) -> Result<Endpoint, TlsError> {
        let url = match (&self.mtls, url.strip_prefix("http://")) {
            // One URL works in both modes: under mTLS `http://` is upgraded.
            (Some(_), Some(rest)) => format!("https://{rest}"),
            _ => url.to_owned(),
        };
        let endpoint = Endpoint::from_shared(url.clone())
            .map_err(|e| TlsError::Config(format!("{url} is not a valid URL: {e}")))?;
        let Some(m) = &self.mtls else {
            return Ok(endpoint);
        };
        let verifier = Arc::new(PeerVerifier {
            roots: Arc::clone(&m.roots),
            expected: peer.to_owned(),
            algorithms: m.algorithms,
        });
        endpoint
            .tls_config_with_verifier(
                ClientTlsConfig::new()
                    .identity(m.identity.clone())
                    // A handshake that stalls (a peer restarting) fails and is retried,
                    // instead of holding the connection attempt open.
                    .timeout(HANDSHAKE_TIMEOUT),
                verifier,
            )
            .map_err(|e| TlsError::Config(e.to_string()))
    }
}

/// Who called: the identity in the client certificate, or nobody known (plain text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Authenticated(String),
    Unauthenticated,
}

impl Caller {
    /// The caller of `request`. Under mTLS a caller always has a certificate from the CA
    /// (the handshake requires it); one without a single `spiffe://` identity is refused.
    pub fn of<T>(
        transport: &Transport,
        request: &tonic::Request<T>,
    ) -> Result<Caller, tonic::Status> {
        let Some(mtls) = &transport.mtls else {
            return Ok(Caller::Unauthenticated);
        };
        request
            .peer_certs()
            .and_then(|certs| certs.first().and_then(|der| mtls.caller(der)))
            .map(Caller::Authenticated)
            .ok_or_else(|| {
                tonic::Status::unauthenticated("the client certificate names no spiffe:// identity")
            })
    }

    /// The identity, if any.
    pub fn identity(&self) -> Option<&str> {
        match self {
            Caller::Authenticated(id) => Some(id),
            Caller::Unauthenticated => None,
        }
    }

    /// Allows an authenticated caller whose identity is in `allowed` (and any caller in plain
    /// text, where there are no identities); refuses the rest with PERMISSION_DENIED naming
    /// the caller and the operation.
    pub fn require(&self, allowed: &[&str], operation: &str) -> Result<(), tonic::Status> {
        match self {
            Caller::Unauthenticated => Ok(()),
            Caller::Authenticated(id) if allowed.contains(&id.as_str()) => Ok(()),
            Caller::Authenticated(id) => Err(tonic::Status::permission_denied(format!(
                "{id} may not call {operation}"
            ))),
        }
    }
}

/// Checks a server's chain against the CA, then that it names the identity the client meant
/// to reach; host names play no part (services are found by address, known by identity).
#[derive(Debug)]
struct PeerVerifier {
    roots: Arc<RootCertStore>,
    expected: String,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PeerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        match identity_in(end_entity) {
            Some(id) if id == self.expected => Ok(ServerCertVerified::assertion()),
            found => Err(rustls::Error::General(format!(
                "the server is {}, not {}",
                found.as_deref().unwrap_or("no spiffe:// identity"),
                self.expected
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn plain_text_only_when_asked_for_by_name() {
        let files = TlsFiles {
            ca: "ca.pem".into(),
            cert: "c.pem".into(),
            key: "k.pem".into(),
        };
        let neither = Transport::from_config(None, false, "issuer").unwrap_err();
        assert!(neither.to_string().contains("dev_plaintext"), "{neither}");
        let both = Transport::from_config(Some(&files), true, "issuer").unwrap_err();
        assert!(both.to_string().contains("choose one"), "{both}");
        let plain = Transport::from_config(None, true, "issuer").unwrap();
        assert!(!plain.is_mtls());
        assert_eq!(format!("{plain:?}"), "Transport::Plaintext");
        // Missing files are named.
        let missing = Transport::from_config(Some(&files), false, "issuer").unwrap_err();
        assert!(missing.to_string().starts_with("k.pem: "), "{missing}");
    }

    #[test]
    fn an_identity_is_a_single_spiffe_uri() {
        assert_eq!(identity_of("issuer"), "spiffe://trias/issuer");
        assert!(uri_sans(b"not a certificate").is_empty());
        assert_eq!(identity_in(b"not a certificate"), None);
    }
}
