//! The whole inbound session: the input's payload, cut into writes, sent to
//! the real `connection::serve` over `tokio::io::duplex`, with a real
//! `Context` (journal under /dev/shm, metrics, dispatcher towards a backend
//! that refuses, STARTTLS with a self-signed certificate), built once and
//! shared by every iteration like a running relay's.
//!
//! Header flags (see `breakwater_fuzz::Cuts`): `0x20` writes the first piece
//! before the greeting (pregreet); `0x40` makes the client do a real TLS
//! handshake after the first `STARTTLS` line and send the rest inside TLS.
//!
//! Properties: no panic (in the session, the journal, the dispatcher); the
//! session ends within 5 s of the client closing its side; every reply line
//! is `NNN`, then space or hyphen, CRLF-terminated, with no other CR or LF, a
//! multi-line reply keeps its code, the first line is the `220` greeting; and
//! no more `250 2.0.0 Ok: queued as` replies than the input has end-of-data
//! markers (`\r\n.\r\n`) plus `LAST` words (BDAT ... LAST).
#![no_main]

use breakwater::fuzzing;
use breakwater::smtp::Context;
use breakwater::smtp::connection::serve;
use breakwater::smtp::session::Session;
use breakwater_fuzz::{Cuts, count};
use libfuzzer_sys::fuzz_target;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream};
use tokio::runtime::Runtime;
use tokio_rustls::TlsConnector;

/// Header flag: the client talks before the greeting.
const PREGREET: u8 = 0x20;
/// Header flag: the client really starts TLS at its first STARTTLS line.
const TLS: u8 = 0x40;
/// How long the client waits for `220 Ready to start TLS` once its commands
/// up to STARTTLS are written (the STARTTLS line may sit inside a message).
const READY_WAIT: Duration = Duration::from_millis(100);
/// A session still running this long after the client closed has hung.
const HANG: Duration = Duration::from_secs(5);
const READY_TLS: &[u8] = b"220 2.0.0 Ready to start TLS";
const QUEUED: &[u8] = b"250 2.0.0 Ok: queued as ";

struct Harness {
    rt: Runtime,
    ctx: Arc<Context>,
    connector: TlsConnector,
}

/// One relay for the whole fuzzing process; its directory is
/// `/dev/shm/breakwater-fuzz-<pid>` (`run.sh` removes it afterwards).
static HARNESS: LazyLock<Harness> = LazyLock::new(|| {
    let base = match std::path::Path::new("/dev/shm") {
        p if p.is_dir() => p.to_owned(),
        _ => std::env::temp_dir(),
    };
    let dir: PathBuf = base.join(format!("breakwater-fuzz-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("harness directory");
    let cert = rcgen::generate_simple_self_signed(vec!["relay.test".to_owned()]).expect("rcgen");
    let (cert_path, key_path) = (dir.join("relay.crt"), dir.join("relay.key"));
    std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
    let config = fuzzing::config(&dir.join("journal"), &cert_path, &key_path).expect("fuzz config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let ctx = rt
        .block_on(async { fuzzing::context(config) })
        .expect("context");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).expect("trust anchor");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocol versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Harness {
        rt,
        ctx,
        connector: TlsConnector::from(Arc::new(client)),
    }
});

/// `BW_FUZZ_TRACE=1` prints what the client read (to see what an input does).
static TRACE: LazyLock<bool> = LazyLock::new(|| std::env::var_os("BW_FUZZ_TRACE").is_some());

/// What the client read: in clear text, and inside TLS if it got there.
struct Transcript {
    plain: Vec<u8>,
    tls: Option<Vec<u8>>,
}

fuzz_target!(|data: &[u8]| {
    let h = &*HARNESS;
    let (cuts, input) = Cuts::parse(data);
    let t =
        h.rt.block_on(async { tokio::time::timeout(HANG, converse(h, &cuts, input)).await })
            .unwrap_or_else(|_| panic!("the session did not end within {HANG:?}"));
    if *TRACE {
        eprintln!("clear text:\n{}", String::from_utf8_lossy(&t.plain));
        if let Some(tls) = &t.tls {
            eprintln!("inside TLS:\n{}", String::from_utf8_lossy(tls));
        }
    }
    let mut queued = replies(&t.plain, true, true);
    if let Some(tls) = &t.tls {
        queued += replies(tls, false, false);
    }
    let ends = count(input, b"\r\n.\r\n") + count(input, b"LAST");
    assert!(
        queued <= ends,
        "{queued} messages queued from an input with {ends} end markers"
    );
});

async fn converse(h: &Harness, cuts: &Cuts, input: &[u8]) -> Transcript {
    let (mut client, server) = tokio::io::duplex(16 * 1024);
    let pieces = cuts.pieces(input);
    let starttls = (cuts.flags & TLS != 0)
        .then(|| starttls_end(input))
        .flatten();
    let (before, after) = split_pieces(&pieces, starttls.unwrap_or(input.len()));
    let mut before = before.into_iter();
    let mut plain = Vec::new();
    if cuts.flags & PREGREET != 0
        && let Some(first) = before.next()
    {
        // Written before the session is first polled (one thread), so it is
        // in the buffer when the session looks for early talkers.
        client.write_all(first).await.expect("fits in the pipe");
    }
    let session = Session::new(h.ctx.clone(), IpAddr::from([192, 0, 2, 1]));
    let serving = tokio::spawn(serve(session, server));
    if cuts.flags & PREGREET == 0 {
        read_until(&mut client, &mut plain, b"\r\n").await;
    }
    let (mut rd, mut wr) = tokio::io::split(client);
    let tls = if starttls.is_some() {
        let (_, ready) = tokio::join!(write_pieces(&mut wr, before), async {
            tokio::time::timeout(READY_WAIT, read_until(&mut rd, &mut plain, READY_TLS)).await
        });
        if ready == Ok(true) {
            Some(inside_tls(h, rd.unsplit(wr), after).await)
        } else {
            let _ = wr.shutdown().await;
            let _ = rd.read_to_end(&mut plain).await;
            None
        }
    } else {
        tokio::join!(
            async {
                write_pieces(&mut wr, before).await;
                let _ = wr.shutdown().await;
            },
            async {
                let _ = rd.read_to_end(&mut plain).await;
            }
        );
        None
    };
    if let Err(e) = serving.await {
        std::panic::resume_unwind(e.into_panic());
    }
    Transcript { plain, tls }
}

/// The TLS handshake on `stream` (it must succeed: the client is a correct
/// one), then the rest of the input inside it; returns what it read there.
async fn inside_tls(h: &Harness, stream: DuplexStream, pieces: Vec<&[u8]>) -> Vec<u8> {
    let name = rustls::pki_types::ServerName::try_from("relay.test").expect("name");
    let tls = h
        .connector
        .connect(name, stream)
        .await
        .unwrap_or_else(|e| panic!("TLS handshake with a correct client failed: {e}"));
    let (mut rd, mut wr) = tokio::io::split(tls);
    let mut out = Vec::new();
    tokio::join!(
        async {
            write_pieces(&mut wr, pieces).await;
            let _ = wr.shutdown().await;
        },
        async {
            let _ = rd.read_to_end(&mut out).await;
        }
    );
    out
}

/// Writes each piece, letting the session run in between (so it sees them
/// as separate reads); stops when the session has closed.
async fn write_pieces<'a>(
    wr: &mut (impl AsyncWrite + Unpin),
    pieces: impl IntoIterator<Item = &'a [u8]>,
) {
    for p in pieces {
        if wr.write_all(p).await.is_err() || wr.flush().await.is_err() {
            return;
        }
        tokio::task::yield_now().await;
    }
}

/// Reads into `out` until it holds `needle` (true) or the stream ends (false).
async fn read_until(rd: &mut (impl AsyncRead + Unpin), out: &mut Vec<u8>, needle: &[u8]) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        if out.windows(needle.len()).any(|w| w == needle) {
            return true;
        }
        match rd.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Where the first line that the session takes as `STARTTLS` ends (just past
/// its `\n`): the parser's verdict, and no parameters (those get 501; see
/// `regressions/session-starttls-argument`).
fn starttls_end(input: &[u8]) -> Option<usize> {
    let mut end = 0;
    for line in input.split_inclusive(|&b| b == b'\n') {
        end += line.len();
        let parsed = smtp_proto::Request::parse(&mut line.iter());
        if line.ends_with(b"\n")
            && matches!(parsed, Ok(smtp_proto::Request::StartTls))
            && breakwater::smtp::params::is_bare(line)
        {
            return Some(end);
        }
    }
    None
}

/// The pieces before byte `at` of their concatenation, and those after.
fn split_pieces<'a>(pieces: &[&'a [u8]], at: usize) -> (Vec<&'a [u8]>, Vec<&'a [u8]>) {
    let (mut before, mut after) = (Vec::new(), Vec::new());
    let mut offset = 0;
    for &p in pieces {
        if offset + p.len() <= at {
            before.push(p);
        } else if offset >= at {
            after.push(p);
        } else {
            before.push(&p[..at - offset]);
            after.push(&p[at - offset..]);
        }
        offset += p.len();
    }
    (before, after)
}

/// Checks every reply line in `out` and counts the `queued` ones. `greeting`:
/// the first line must be the `220` banner. `stop_at_tls`: what follows
/// `220 Ready to start TLS` is TLS and is not read.
fn replies(out: &[u8], greeting: bool, stop_at_tls: bool) -> usize {
    let mut rest = out;
    let mut queued = 0;
    let mut first = greeting;
    let mut continues: Option<&[u8]> = None;
    while !rest.is_empty() {
        let Some(end) = rest.windows(2).position(|w| w == b"\r\n") else {
            panic!("reply without CR LF: {rest:?} (all: {out:?})");
        };
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let well_formed = line.len() >= 4
            && line[..3].iter().all(u8::is_ascii_digit)
            && matches!(line[3], b' ' | b'-')
            && !line.contains(&b'\r')
            && !line.contains(&b'\n');
        assert!(well_formed, "malformed reply line {line:?} (all: {out:?})");
        if first {
            assert!(
                line.starts_with(b"220 "),
                "first line is not the greeting: {line:?}"
            );
            first = false;
        }
        if let Some(code) = continues {
            assert_eq!(code, &line[..3], "multi-line reply changed code: {out:?}");
        }
        continues = (line[3] == b'-').then(|| &line[..3]);
        if line.starts_with(QUEUED) {
            queued += 1;
        }
        if stop_at_tls && line == READY_TLS {
            return queued;
        }
    }
    assert!(continues.is_none(), "multi-line reply cut short: {out:?}");
    queued
}
