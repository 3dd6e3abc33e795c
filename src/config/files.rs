//! What a referenced file must contain (SPEC §2: `check` reads every file the configuration
//! references and reports one that is invalid, not only one that is missing). Each check uses
//! the same parser the proxy uses at start, so `check` passing means `serve` can load it.

use std::path::Path;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileKind {
    /// One or more PEM certificates (TLS chain, CA bundle).
    Certificates,
    /// A PEM private key for the TLS listener.
    TlsKey,
    /// `[identity].signing_key`: a PKCS#8 PEM key tokengate can sign with.
    SigningKey,
    /// `[identity].previous_keys`: a public (SPKI) or private key PEM.
    PublicKey,
}

impl FileKind {
    /// `Err` explains what is wrong with the file's contents.
    pub(super) fn validate(self, path: &Path) -> Result<(), String> {
        match self {
            FileKind::Certificates => {
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("not a PEM certificate file: {e}"))?
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| format!("not a PEM certificate file: {e}"))?;
                if certs.is_empty() {
                    return Err("holds no PEM certificate (BEGIN CERTIFICATE)".to_owned());
                }
                Ok(())
            }
            FileKind::TlsKey => PrivateKeyDer::from_pem_file(path)
                .map(drop)
                .map_err(|e| format!("holds no usable PEM private key: {e}")),
            FileKind::SigningKey => crate::identity::signing::SigningKey::load(path, None)
                .map(drop)
                .map_err(|e| strip_path(&e, path)),
            FileKind::PublicKey => crate::identity::signing::public_jwk_from_pem(path)
                .map(drop)
                .map_err(|e| strip_path(&e, path)),
        }
    }
}

/// The identity loaders prefix messages with the path; the problem line already names the key.
fn strip_path(message: &str, path: &Path) -> String {
    let prefix = format!("{}: ", path.display());
    message.strip_prefix(&prefix).unwrap_or(message).to_owned()
}
