//! `trias pki init`: a development certificate authority and one certificate per identity —
//! the three services, the operator's CLI and any named backend — each carrying its identity
//! as a `spiffe://trias/<name>` URI SAN. Production deployments bring their own CA; the
//! services only need a CA file, their certificate and their key.
//!
//! Files, in one directory: `ca.pem`, `ca-key.pem`, and `<name>.pem` / `<name>-key.pem` per
//! identity. Keys are written owner-only. A second run keeps what exists and adds what is
//! missing, so adding a backend never re-keys the services.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use trias_runtime::tls::{TlsFiles, identity_of};

/// The identities every development PKI has: the services and the operator's CLI.
pub const BUILTIN: [&str; 4] = ["issuer", "validator", "auditor", "cli"];

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("{0:?} is not a valid identity name (letters, digits, '-', '_', '/')")]
    BadName(String),
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> PkiError {
    PkiError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A development PKI in a directory.
#[derive(Debug, Clone)]
pub struct Pki {
    pub dir: PathBuf,
}

impl Pki {
    pub fn new(dir: impl Into<PathBuf>) -> Pki {
        Pki { dir: dir.into() }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The TLS files of identity `name`, as a service's `[tls]` table names them.
    pub fn files(&self, name: &str) -> TlsFiles {
        let file = name.replace('/', "-");
        TlsFiles {
            ca: self.ca(),
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        }
    }

    /// Creates the CA if there is none and a certificate for each built-in identity and each
    /// of `names` that has none; returns the identities created now.
    pub fn init(&self, names: &[String]) -> Result<Vec<String>, PkiError> {
        for name in names {
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '/'))
                && !name.starts_with('/')
                && !name.ends_with('/');
            if !valid {
                return Err(PkiError::BadName(name.clone()));
            }
        }
        create_private_dir(&self.dir)?;
        let ca_key_path = self.dir.join("ca-key.pem");
        let mut created = Vec::new();
        let issuer = if ca_key_path.exists() {
            let key_pem =
                std::fs::read_to_string(&ca_key_path).map_err(|e| file_error(&ca_key_path, e))?;
            let cert_pem =
                std::fs::read_to_string(self.ca()).map_err(|e| file_error(&self.ca(), e))?;
            let key = KeyPair::from_pem(&key_pem)?;
            Issuer::from_ca_cert_pem(&cert_pem, key)?
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, "Trias development CA");
            params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            let cert = params.self_signed(&key)?;
            write_file(&ca_key_path, &key.serialize_pem(), true)?;
            write_file(&self.ca(), &cert.pem(), false)?;
            created.push("ca".to_owned());
            Issuer::new(params, key)
        };
        let wanted = BUILTIN
            .iter()
            .map(|s| (*s).to_owned())
            .chain(names.iter().cloned());
        for name in wanted {
            let files = self.files(&name);
            if files.cert.exists() && files.key.exists() {
                continue;
            }
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::new(Vec::<String>::new())?;
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
            params.subject_alt_names = vec![
                SanType::URI(identity_of(&name).try_into()?),
                SanType::DnsName("localhost".try_into()?),
                SanType::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()),
            ];
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = params.signed_by(&key, &issuer)?;
            write_file(&files.key, &key.serialize_pem(), true)?;
            write_file(&files.cert, &cert.pem(), false)?;
            created.push(name);
        }
        Ok(created)
    }
}

fn create_private_dir(path: &Path) -> Result<(), PkiError> {
    std::fs::create_dir_all(path).map_err(|e| file_error(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| file_error(path, e))?;
    }
    Ok(())
}

/// Writes a new file (never over an existing one), owner-only when `private`.
fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), PkiError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, if private { 0o600 } else { 0o644 });
    let mut file = options.open(path).map_err(|e| file_error(path, e))?;
    file.write_all(contents.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| file_error(path, e))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;

    #[test]
    fn init_creates_owner_only_keys_with_identities_and_keeps_them_on_a_second_run() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        let created = pki.init(&["payments".to_owned()]).unwrap();
        assert_eq!(
            created,
            ["ca", "issuer", "validator", "auditor", "cli", "payments"]
        );
        let files = pki.files("payments");
        let pem = std::fs::read_to_string(&files.cert).unwrap();
        let der = data_encoding::BASE64
            .decode(
                pem.lines()
                    .filter(|l| !l.starts_with("-----"))
                    .collect::<String>()
                    .as_bytes(),
            )
            .unwrap();
        assert_eq!(
            trias_runtime::tls::uri_sans(&der),
            ["spiffe://trias/payments"]
        );
        trias_runtime::tls::check_owner_only(&files.key).unwrap();
        trias_runtime::tls::Transport::load(&files).unwrap();

        let before = std::fs::read(&pki.files("issuer").cert).unwrap();
        let again = pki.init(&["reports".to_owned()]).unwrap();
        assert_eq!(again, ["reports"], "only the new identity is created");
        assert_eq!(std::fs::read(&pki.files("issuer").cert).unwrap(), before);
        trias_runtime::tls::Transport::load(&pki.files("reports")).unwrap();
    }

    #[test]
    fn bad_names_are_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path().join("pki"));
        for bad in ["", "a b", "../x", "/x", "x/"] {
            assert!(
                matches!(pki.init(&[bad.to_owned()]), Err(PkiError::BadName(_))),
                "{bad:?}"
            );
        }
        assert!(!pki.dir.exists());
    }
}
