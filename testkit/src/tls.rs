//! A self-signed certificate for `localhost`/`127.0.0.1`, and a client that trusts it.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// PEM files of a fresh self-signed certificate, removed on drop.
pub struct TestCert {
    dir: tempfile::TempDir,
    der: CertificateDer<'static>,
}

impl TestCert {
    pub fn new() -> Self {
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).expect("certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).expect("write cert");
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).expect("write key");
        Self {
            der: ck.cert.der().clone(),
            dir,
        }
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    /// Connects with TLS to `addr`, trusting only this certificate.
    pub async fn connect(&self, addr: std::net::SocketAddr) -> std::io::Result<TlsStream<TcpStream>> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).map_err(std::io::Error::other)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(std::io::Error::other)?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("localhost").map_err(std::io::Error::other)?;
        TlsConnector::from(Arc::new(config)).connect(name, tcp).await
    }
}

impl Default for TestCert {
    fn default() -> Self {
        Self::new()
    }
}
