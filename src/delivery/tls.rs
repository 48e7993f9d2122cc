//! STARTTLS towards backends (and DSN next hops).
//!
//! `tls = "opportunistic"` upgrades when the server offers STARTTLS, like
//! Postfix's `smtp_tls_security_level = may`; `tls = "required"` refuses to send
//! in clear text, like Postfix's `encrypt`. As in both of those Postfix levels the
//! certificate is not verified: the point is encryption on the wire; backends on
//! a private network commonly present self-signed certificates.

use mail_send::SmtpClient;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// A backend connection, in clear text or after STARTTLS.
pub enum Stream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// The TLS client configuration: ring provider, TLS 1.2 and 1.3, no
/// certificate verification (see the module documentation).
pub fn connector() -> TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// Sends STARTTLS, expects 220, and performs the handshake for `host`.
pub async fn starttls(
    mut client: SmtpClient<Stream>,
    host: &str,
    connector: &TlsConnector,
) -> Result<SmtpClient<Stream>, mail_send::Error> {
    let reply = client.cmd(b"STARTTLS\r\n").await?;
    if reply.code != 220 {
        return Err(tls_error(format!(
            "STARTTLS refused: {} {}",
            reply.code, reply.message
        )));
    }
    let Stream::Plain(tcp) = client.stream else {
        return Err(mail_send::Error::Tls(Box::new(rustls::Error::General(
            "TLS already on".into(),
        ))));
    };
    let name = ServerName::try_from(host.to_owned()).map_err(|_| {
        mail_send::Error::Tls(Box::new(rustls::Error::General(format!(
            "bad TLS name {host}"
        ))))
    })?;
    let tls = tokio::time::timeout(client.timeout, connector.connect(name, tcp))
        .await
        .map_err(|_| tls_error("TLS handshake timed out".into()))?
        .map_err(|e| tls_error(format!("TLS handshake failed: {e}")))?;
    Ok(SmtpClient {
        stream: Stream::Tls(Box::new(tls)),
        timeout: client.timeout,
    })
}

/// Every STARTTLS failure is a `Tls` error, so callers can tell it from other
/// connection trouble (and fall back to clear text where the policy allows).
fn tls_error(message: String) -> mail_send::Error {
    mail_send::Error::Tls(Box::new(rustls::Error::General(message)))
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
