//! Inbound STARTTLS (RFC 3207): the server side of TLS, rustls with the ring
//! provider, TLS 1.2 and 1.3.
//!
//! The certificate sits behind a resolver whose key can be swapped while the
//! relay runs: SIGHUP re-reads `[smtp.tls] cert` and `key`, and the next
//! handshake uses the new pair; sessions already encrypted keep theirs. A pair
//! that does not load (or whose key does not match the certificate) is refused
//! and the old one stays.

use crate::config::SmtpTls;
use crate::journal::TlsInfo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio_rustls::TlsAcceptor;

/// Why a certificate or key could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("{key} {}: {source}", path.display())]
    Read {
        key: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file holds no usable PEM item.
    #[error("{key} {}: {what}", path.display())]
    Pem {
        key: &'static str,
        path: PathBuf,
        what: String,
    },
    /// rustls refused the pair (unsupported key, key does not match).
    #[error("smtp.tls: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The inbound TLS setup: an acceptor whose certificate can be reloaded.
pub struct Tls {
    resolver: Arc<Resolver>,
    acceptor: TlsAcceptor,
    /// Where the pair was read from (a reload may name other files).
    files: std::sync::Mutex<(PathBuf, PathBuf)>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

#[derive(Debug)]
struct Resolver(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Resolver {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.read().expect("certificate lock").clone())
    }
}

impl Tls {
    /// Loads the certificate chain and key named in `[smtp.tls]`.
    pub fn load(cfg: &SmtpTls) -> Result<Tls, Error> {
        let key = load_pair(&cfg.cert, &cfg.key)?;
        let resolver = Arc::new(Resolver(RwLock::new(Arc::new(key))));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        Ok(Tls {
            resolver,
            acceptor: TlsAcceptor::from(Arc::new(config)),
            files: std::sync::Mutex::new((cfg.cert.clone(), cfg.key.clone())),
        })
    }

    /// Re-reads the certificate and key; on error the current pair stays.
    pub fn reload(&self) -> Result<(), Error> {
        let (cert, key) = self.files.lock().expect("tls files lock").clone();
        self.reload_from(&SmtpTls { cert, key })
    }

    /// Reads the pair named in a reloaded `[smtp.tls]` and uses it for the
    /// next handshakes; on error the current pair (and files) stay.
    pub fn reload_from(&self, cfg: &SmtpTls) -> Result<(), Error> {
        let key = load_pair(&cfg.cert, &cfg.key)?;
        *self.resolver.0.write().expect("certificate lock") = Arc::new(key);
        *self.files.lock().expect("tls files lock") = (cfg.cert.clone(), cfg.key.clone());
        Ok(())
    }

    /// Checks that the pair named in `cfg` loads, without using it.
    pub fn check(cfg: &SmtpTls) -> Result<(), Error> {
        load_pair(&cfg.cert, &cfg.key).map(|_| ())
    }

    /// The acceptor for the next handshake.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, Error> {
    let read = |k: &'static str, p: &Path| {
        std::fs::read(p).map_err(|source| Error::Read {
            key: k,
            path: p.to_owned(),
            source,
        })
    };
    let pem = |k: &'static str, p: &Path, what: String| Error::Pem {
        key: k,
        path: p.to_owned(),
        what,
    };
    let cert_pem = read("smtp.tls.cert", cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| pem("smtp.tls.cert", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(pem(
            "smtp.tls.cert",
            cert,
            "no CERTIFICATE in the file".into(),
        ));
    }
    let key_pem = read("smtp.tls.key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| pem("smtp.tls.key", key, format!("no private key: {e}")))?;
    let provider = rustls::crypto::ring::default_provider();
    Ok(CertifiedKey::from_der(chain, private, &provider)?)
}

/// What a finished handshake used, for the `Received:` header, the journal
/// and `breakwater_tls_sessions_total{version}`.
pub fn info(conn: &rustls::ServerConnection) -> TlsInfo {
    let version = match conn.protocol_version() {
        Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3".to_owned(),
        Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2".to_owned(),
        Some(v) => format!("{v:?}"),
        None => "unknown".to_owned(),
    };
    let cipher = conn
        .negotiated_cipher_suite()
        .map_or_else(|| "unknown".to_owned(), |s| format!("{:?}", s.suite()));
    TlsInfo { version, cipher }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = rcgen::generate_simple_self_signed(vec![name.to_owned()]).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.cert.pem()).unwrap();
        std::fs::write(&k, cert.signing_key.serialize_pem()).unwrap();
        (c, k)
    }

    #[test]
    fn loads_reloads_and_keeps_the_old_pair_on_error() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "one.test");
        let tls = Tls::load(&SmtpTls {
            cert: cert.clone(),
            key: key.clone(),
        })
        .unwrap();
        let first = tls.resolver.0.read().unwrap().cert[0].clone();
        let (cert2, key2) = write_pair(dir.path(), "two.test");
        std::fs::copy(&cert2, &cert).unwrap();
        std::fs::copy(&key2, &key).unwrap();
        tls.reload().unwrap();
        let second = tls.resolver.0.read().unwrap().cert[0].clone();
        assert_ne!(first, second);
        // A key that does not match the certificate is refused; the pair stays.
        let (_, key3) = write_pair(dir.path(), "three.test");
        std::fs::copy(&key3, &key).unwrap();
        let e = tls.reload().unwrap_err();
        assert!(matches!(e, Error::Rustls(_)), "{e}");
        assert_eq!(tls.resolver.0.read().unwrap().cert[0], second);
        std::fs::write(&cert, "not pem").unwrap();
        let e = tls.reload().unwrap_err();
        assert!(e.to_string().contains("smtp.tls.cert"), "{e}");
        std::fs::remove_file(&key).unwrap();
        let e = Tls::load(&SmtpTls { cert, key }).unwrap_err();
        assert!(e.to_string().contains("smtp.tls"), "{e}");
    }
}
