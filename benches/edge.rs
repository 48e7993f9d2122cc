//! Load client for the internet-facing edge, for `benches/edge-bench.sh`
//! (which starts the relays, measures their memory, and prints the table).
//! Loopback only. Modes:
//!
//! - `tls ADDR MESSAGES SESSIONS [SIZE] [plain]`: MESSAGES messages of SIZE
//!   bytes (default 10240), one per connection like `smtp-source`, over
//!   SESSIONS concurrent sessions, each with STARTTLS (unless `plain`); prints
//!   `messages seconds msg_per_s errors`. The relay's certificate is not
//!   verified (a benchmark of the relay, not of PKI).
//! - `hold ADDR CONNECTIONS SECONDS`: opens CONNECTIONS sessions (greeting and
//!   EHLO), holds them SECONDS, prints `held N` once all are open.
//! - `hold-data ADDR SESSIONS MEGABYTES SECONDS`: SESSIONS sessions each send
//!   MAIL, RCPT, DATA and MEGABYTES of message lines without ending the
//!   message, then hold SECONDS; prints `sent` when all have sent.
//!
//! Run as `cargo bench --bench edge -- MODE ARGS...`.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

const IO: Duration = Duration::from_secs(30);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    if args.is_empty() {
        eprintln!("usage: edge tls|hold|hold-data ADDR ... (see the file's header)");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let n = |i: usize| -> usize { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0) };
    let addr: SocketAddr = args[1].parse().expect("ADDR is ip:port");
    match args[0].as_str() {
        "tls" => {
            let size = if n(4) > 0 { n(4) } else { 10_240 };
            let plain = args.iter().any(|a| a == "plain");
            rt.block_on(tls_load(addr, n(2), n(3).max(1), size, !plain));
        }
        "hold" => rt.block_on(hold(addr, n(2), n(3))),
        "hold-data" => rt.block_on(hold_data(addr, n(2), n(3), n(4))),
        other => eprintln!("unknown mode {other}"),
    }
}

async fn tls_load(addr: SocketAddr, messages: usize, sessions: usize, size: usize, tls: bool) {
    let body = Arc::new(message(size));
    let connector = connector();
    let next = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let (body, connector, next, errors) = (
            body.clone(),
            connector.clone(),
            next.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < messages {
                let run = tokio::time::timeout(IO, one_message(addr, &body, &connector, tls));
                let result = run.await;
                if !matches!(result, Ok(Ok(()))) && errors.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!("message failed: {result:?}");
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let secs = started.elapsed().as_secs_f64();
    let errors = errors.load(Ordering::Relaxed);
    println!(
        "{messages} {secs:.3} {:.1} {errors}",
        (messages - errors) as f64 / secs
    );
}

/// One connection, one message: EHLO, STARTTLS, EHLO, MAIL, RCPT, DATA, QUIT.
async fn one_message(
    addr: SocketAddr,
    body: &[u8],
    connector: &tokio_rustls::TlsConnector,
    tls: bool,
) -> Result<()> {
    let tcp = TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let mut s = BufReader::new(tcp);
    expect(&mut s, b'2').await?;
    cmd(&mut s, "EHLO load.bench\r\n", b'2').await?;
    if !tls {
        return transaction(&mut s, body).await;
    }
    cmd(&mut s, "STARTTLS\r\n", b'2').await?;
    let name = ServerName::try_from("relay.bench.invalid")?;
    let tcp = s.into_inner();
    let mut s = BufReader::new(connector.connect(name, tcp).await?);
    cmd(&mut s, "EHLO load.bench\r\n", b'2').await?;
    transaction(&mut s, body).await
}

async fn transaction<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    body: &[u8],
) -> Result<()> {
    cmd(s, "MAIL FROM:<load@client.bench>\r\n", b'2').await?;
    cmd(s, "RCPT TO:<rcpt@example.test>\r\n", b'2').await?;
    cmd(s, "DATA\r\n", b'3').await?;
    s.get_mut().write_all(body).await?;
    cmd(s, ".\r\n", b'2').await?;
    cmd(s, "QUIT\r\n", b'2').await?;
    Ok(())
}

async fn hold(addr: SocketAddr, connections: usize, seconds: usize) {
    let mut held = Vec::with_capacity(connections);
    for _ in 0..connections {
        let opened = async {
            let mut s = BufReader::new(TcpStream::connect(addr).await?);
            expect(&mut s, b'2').await?;
            cmd(&mut s, "EHLO hold.bench\r\n", b'2').await?;
            Result::Ok(s)
        };
        match tokio::time::timeout(IO, opened).await {
            Ok(Ok(s)) => held.push(s),
            other => eprintln!("connection {} failed: {other:?}", held.len()),
        }
    }
    println!("held {}", held.len());
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
}

async fn hold_data(addr: SocketAddr, sessions: usize, megabytes: usize, seconds: usize) {
    let line =
        b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz012345\r\n";
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        tasks.push(tokio::spawn(async move {
            let mut s = BufReader::new(TcpStream::connect(addr).await?);
            expect(&mut s, b'2').await?;
            cmd(&mut s, "EHLO hold.bench\r\n", b'2').await?;
            cmd(&mut s, "MAIL FROM:<load@client.bench>\r\n", b'2').await?;
            cmd(&mut s, "RCPT TO:<rcpt@example.test>\r\n", b'2').await?;
            cmd(&mut s, "DATA\r\n", b'3').await?;
            let block: Vec<u8> = line.iter().copied().cycle().take(64 * 1024).collect();
            for _ in 0..megabytes * 16 {
                s.get_mut().write_all(&block).await?;
            }
            Result::Ok(s)
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        match t.await {
            Ok(Ok(s)) => held.push(s),
            other => eprintln!("session failed: {other:?}"),
        }
    }
    println!("sent {}", held.len());
    tokio::time::sleep(Duration::from_secs(seconds as u64)).await;
}

fn message(size: usize) -> Vec<u8> {
    let mut m = b"Subject: edge bench\r\nFrom: load@client.bench\r\n\r\n".to_vec();
    while m.len() < size {
        m.extend_from_slice(b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopq\r\n");
    }
    m
}

async fn cmd<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut BufReader<S>,
    line: &str,
    class: u8,
) -> Result<()> {
    s.get_mut().write_all(line.as_bytes()).await?;
    s.get_mut().flush().await?;
    expect(s, class).await
}

/// Reads one reply; an error unless its code starts with `class`.
async fn expect<S: AsyncRead + Unpin>(s: &mut BufReader<S>, class: u8) -> Result<()> {
    let mut line = String::new();
    for _ in 0..100 {
        line.clear();
        if s.read_line(&mut line).await? == 0 {
            return Err("connection closed".into());
        }
        if line.as_bytes().get(3) != Some(&b'-') {
            return if line.as_bytes().first() == Some(&class) {
                Ok(())
            } else {
                Err(format!("unexpected reply {line:?}").into())
            };
        }
    }
    Err("reply too long".into())
}

fn connector() -> tokio_rustls::TlsConnector {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
