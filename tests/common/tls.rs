//! TLS for tests: a self-signed certificate for the relay, written as PEM
//! files for `[smtp.tls]`, and a client connector that trusts exactly it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A certificate and key on disk, and the connector that trusts the certificate.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: Vec<u8>,
}

impl TestCert {
    /// A new self-signed certificate for `name`, written to `dir/name.{crt,key}`.
    pub fn create(dir: &Path, name: &str) -> TestCert {
        let c = rcgen::generate_simple_self_signed(vec![name.to_owned()]).expect("rcgen");
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).expect("write cert");
        std::fs::write(&key, c.signing_key.serialize_pem()).expect("write key");
        TestCert {
            cert,
            key,
            der: c.cert.der().to_vec(),
        }
    }

    /// The `[smtp.tls]` section using these files.
    pub fn config(&self) -> String {
        format!(
            "[smtp.tls]\ncert = {:?}\nkey = {:?}\n",
            self.cert.display().to_string(),
            self.key.display().to_string()
        )
    }

    /// A rustls connector whose only trust anchor is this certificate.
    pub fn connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.der.clone()))
            .expect("trust anchor");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}
