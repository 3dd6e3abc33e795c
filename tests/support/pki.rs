//! A throwaway PKI for TLS tests (rcgen): a server CA and leaf for `localhost`/127.0.0.1, a
//! client CA with one client certificate, and a rogue client certificate from another CA; plus
//! a rustls client that connects with any of them.

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::Proxy;

pub struct Pki {
    pub server_ca: String,
    pub server_cert: String,
    pub server_key: String,
    pub client_ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub rogue_cert: String,
    pub rogue_key: String,
}

pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

pub fn leaf(names: &[&str], issuer: &CertifiedIssuer<'static, KeyPair>) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> Pki {
    let server_ca = ca("test server CA");
    let client_ca = ca("test client CA");
    let rogue_ca = ca("rogue CA");
    let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], &server_ca);
    let (client_cert, client_key) = leaf(&["client.test"], &client_ca);
    let (rogue_cert, rogue_key) = leaf(&["client.test"], &rogue_ca);
    Pki {
        server_ca: server_ca.pem(),
        server_cert,
        server_key,
        client_ca: client_ca.pem(),
        client_cert,
        client_key,
        rogue_cert,
        rogue_key,
    }
}

impl Pki {
    /// Writes the server certificate, key and client CA into `dir` and returns the
    /// `[server.tls]` table that uses them.
    pub fn server_tls_toml(&self, dir: &tempfile::TempDir) -> String {
        for (name, text) in [
            ("server.pem", &self.server_cert),
            ("server.key", &self.server_key),
            ("clients.pem", &self.client_ca),
        ] {
            std::fs::write(dir.path().join(name), text).expect("write PKI file");
        }
        let d = dir.path().display();
        format!(
            "[server.tls]\ncert = \"{d}/server.pem\"\nkey = \"{d}/server.key\"\nclient_ca = \"{d}/clients.pem\"\n"
        )
    }
}

/// base64url SHA-256 of a PEM certificate's DER: its RFC 8705 `x5t#S256`.
pub fn x5t_s256(cert_pem: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).expect("certificate");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(der.as_ref()))
}

/// Connects with rustls: trusting the server CA, offering `alpn`, optionally with a client cert.
pub async fn connect(
    proxy: &Proxy,
    pki: &Pki,
    alpn: &[&[u8]],
    client: Option<(&str, &str)>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pki.server_ca.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let tcp = TcpStream::connect(proxy.addr).await?;
    let stream = TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await?;
    // TLS 1.3 reports a rejected client certificate only on the first read after the handshake.
    Ok(stream)
}
