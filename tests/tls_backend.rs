//! Backend TLS policies: `opportunistic` and `required` deliver over STARTTLS
//! (self-signed certificate accepted) when offered; without STARTTLS,
//! `opportunistic` delivers in clear and `required` defers and keeps the message.

mod common;
use common::*;
use rustls::pki_types::PrivateKeyDer;
use std::fmt::Display;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::TlsAcceptor;

const T: Duration = Duration::from_secs(10);
const MAX_LINE: u64 = 4096;
const MAX_DATA: usize = 1 << 20;
const BODY: &[u8] = b"Subject: tls\r\n\r\n.leading dot\r\n..two dots\r\nend\r\n";

/// One message the TLS server accepted; `tls` if it came after STARTTLS.
#[derive(Clone, Debug)]
struct Msg {
    tls: bool,
    rcpts: Vec<String>,
    data: Vec<u8>,
}
type Log = Arc<Mutex<Vec<Msg>>>;

/// A minimal ESMTP server offering STARTTLS with a self-signed certificate.
struct TlsServer {
    addr: SocketAddr,
    log: Log,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TlsServer {
    async fn start() -> TlsServer {
        TlsServer::start_with(false).await
    }

    /// `refuse`: offer STARTTLS but answer it with 454 (and go on in clear).
    async fn start_with(refuse: bool) -> TlsServer {
        let names = vec!["localhost".into(), "127.0.0.1".into()];
        let cert = rcgen::generate_simple_self_signed(names).expect("self-signed certificate");
        let key = PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let (addr, log) = (listener.local_addr().expect("addr"), Log::default());
        let sessions = log.clone();
        let task = tokio::spawn(async move {
            for _ in 0..10_000 {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(session(tcp, acceptor.clone(), sessions.clone(), refuse));
            }
        });
        TlsServer { addr, log, task }
    }

    fn messages(&self) -> Vec<Msg> {
        self.log.lock().expect("log").clone()
    }
}

async fn session(tcp: TcpStream, acceptor: TlsAcceptor, log: Log, refuse: bool) {
    let mut plain = BufReader::new(tcp);
    // Anything pipelined after STARTTLS must not survive into the TLS phase.
    if !smtp(&mut plain, false, &log, refuse).await || !plain.buffer().is_empty() {
        return;
    }
    if let Ok(Ok(tls)) = timeout(T, acceptor.accept(plain.into_inner())).await {
        smtp(&mut BufReader::new(tls), true, &log, false).await;
    }
}

/// One line, CRLF included, bounded in length and time; `None` ends the session.
async fn read_line<S: AsyncRead + Unpin>(io: &mut BufReader<S>) -> Option<Vec<u8>> {
    let mut line = Vec::new();
    let mut limited = (&mut *io).take(MAX_LINE);
    let n = timeout(T, limited.read_until(b'\n', &mut line)).await;
    (n.ok()?.ok()? > 0 && line.ends_with(b"\r\n")).then_some(line)
}

async fn send<S: AsyncWrite + Unpin>(io: &mut S, text: &str) -> bool {
    let write = async { io.write_all(text.as_bytes()).await.and(io.flush().await) };
    matches!(timeout(T, write).await, Ok(Ok(())))
}

/// Serves one phase (clear or TLS); true if STARTTLS was accepted in clear.
async fn smtp<S>(io: &mut BufReader<S>, tls: bool, log: &Log, refuse: bool) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    if !tls && !send(io, "220 tls.test ESMTP\r\n").await {
        return false;
    }
    let (mut mail, mut rcpts) = (false, Vec::new());
    for _ in 0..10_000 {
        let Some(line) = read_line(io).await else {
            return false;
        };
        let text = String::from_utf8_lossy(&line).trim_end().to_owned();
        let verb = text.split(' ').next().unwrap_or("").to_ascii_uppercase();
        let reply = match verb.as_str() {
            "EHLO" => {
                (mail, rcpts) = (false, Vec::new());
                let tls_line = if tls { "" } else { "250-STARTTLS\r\n" };
                format!(
                    "250-tls.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n{tls_line}250 ENHANCEDSTATUSCODES\r\n"
                )
            }
            "STARTTLS" if !tls && refuse => "454 4.7.0 TLS not available\r\n".into(),
            "STARTTLS" if !tls => return send(io, "220 2.0.0 Ready\r\n").await,
            "MAIL" => {
                (mail, rcpts) = (true, Vec::new());
                "250 2.1.0 Ok\r\n".into()
            }
            "RCPT" if mail && rcpts.len() < 100 => {
                rcpts.push(text[4..].trim().to_owned());
                "250 2.1.5 Ok\r\n".into()
            }
            "DATA" if !rcpts.is_empty() => {
                if !send(io, "354 go ahead\r\n").await {
                    return false;
                }
                let (mut data, mut ended) = (Vec::new(), false);
                for _ in 0..MAX_DATA {
                    let Some(l) = read_line(io).await else {
                        return false;
                    };
                    if l == b".\r\n" {
                        ended = true;
                        break;
                    }
                    data.extend_from_slice(l.strip_prefix(b".").unwrap_or(&l));
                    if data.len() > MAX_DATA {
                        return false;
                    }
                }
                if !ended {
                    return false;
                }
                let rcpts = std::mem::take(&mut rcpts);
                log.lock().expect("log").push(Msg { tls, rcpts, data });
                mail = false;
                "250 2.0.0 Ok: queued\r\n".into()
            }
            "RSET" => {
                (mail, rcpts) = (false, Vec::new());
                "250 2.0.0 Ok\r\n".into()
            }
            "NOOP" => "250 2.0.0 Ok\r\n".into(),
            "QUIT" => {
                send(io, "221 2.0.0 Bye\r\n").await;
                return false;
            }
            "STARTTLS" | "RCPT" | "DATA" => "503 5.5.1 Bad sequence\r\n".into(),
            _ => "502 5.5.1 Not implemented\r\n".into(),
        };
        if !send(io, &reply).await {
            return false;
        }
    }
    false
}

fn tls_backend(addr: impl Display, policy: &str) -> String {
    format!(
        "[[backend]]\nname = \"tls\"\naddress = \"{addr}\"\ntls = \"{policy}\"\nconnect_timeout = \"2s\"\ncommand_timeout = \"10s\"\n"
    )
}

async fn submit(relay: &Relay) {
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    let reply = c
        .send_message("s@client.test", &["a@example.com"], BODY)
        .await;
    assert!(reply.matches("250 2.0.0 Ok: queued as"), "{reply}");
    c.quit().await;
}

/// Our Received header followed by the client's bytes, exactly.
fn assert_exact(data: &[u8]) {
    let cut = data
        .len()
        .checked_sub(BODY.len())
        .expect("data shorter than body");
    let (header, rest) = data.split_at(cut);
    assert_eq!(
        rest,
        BODY,
        "body altered: {}",
        String::from_utf8_lossy(data)
    );
    let header = String::from_utf8_lossy(header);
    assert!(
        header.starts_with("Received: from ") && header.ends_with("\r\n"),
        "{header}"
    );
    assert!(header.contains("by relay.test (breakwater)"), "{header}");
}

async fn delivered_over_tls(policy: &str) {
    let server = TlsServer::start().await;
    let mut relay = Relay::start(&[], &tls_backend(server.addr, policy)).await;
    submit(&relay).await;
    let arrived = wait_until_async(T, || !server.messages().is_empty()).await;
    assert!(arrived, "tls = {policy:?}: nothing arrived");
    assert!(
        wait_metric(&relay, "breakwater_queue_depth", 0.0, T).await,
        "queue not empty"
    );
    let got = server.messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        got[0].tls,
        "tls = {policy:?}: delivered in clear although STARTTLS was offered"
    );
    assert_eq!(got[0].rcpts.len(), 1);
    assert!(
        got[0].rcpts[0].starts_with("TO:<a@example.com>"),
        "{:?}",
        got[0].rcpts
    );
    assert_exact(&got[0].data);
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_uses_starttls_when_offered() {
    delivered_over_tls("opportunistic").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_delivers_over_starttls() {
    delivered_over_tls("required").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_falls_back_to_clear_text() {
    let backend = Backend::start().await;
    let mut relay = Relay::start(&[], &tls_backend(backend.addr(), "opportunistic")).await;
    submit(&relay).await;
    let got = backend.wait_for(1, T).await;
    assert_exact(&got[0].data);
    assert!(
        wait_metric(&relay, "breakwater_queue_depth", 0.0, T).await,
        "queue not empty"
    );
    assert_eq!(backend.count(), 1);
    relay.stop().await;
}

/// Sum of every `breakwater_delivery_attempts_total` series with result="deferred".
async fn deferred_attempts(relay: &Relay) -> f64 {
    let (_, body) = relay.http("GET", "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with("breakwater_delivery_attempts_total{"))
        .filter(|l| l.contains("result=\"deferred\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_never_sends_in_clear() {
    let backend = Backend::start().await;
    // Probes run (every 200 ms): for a `required` backend they fail without
    // STARTTLS too, so they cannot bring it back up between failed deliveries.
    let extra = tls_backend(backend.addr(), "required")
        + "[delivery]\nretry = [\"200ms\"]\nshutdown_grace = \"2s\"\n";
    let mut relay = Relay::start(&[], &extra).await;
    submit(&relay).await;
    let mut retried = false;
    for _ in 0..250 {
        retried = deferred_attempts(&relay).await >= 1.0;
        if retried {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        retried,
        "no retries: {} deferred attempts",
        deferred_attempts(&relay).await
    );
    assert!(
        backend.connections() >= 1,
        "the relay never reached the backend"
    );
    let mail = backend
        .commands()
        .into_iter()
        .find(|c| c.starts_with("MAIL"));
    assert_eq!(mail, None, "an envelope was sent in clear");
    let leaked = wait_until_async(Duration::from_millis(1500), || backend.count() > 0).await;
    assert!(
        !leaked,
        "delivered in clear with tls = \"required\": {:?}",
        backend.messages()
    );
    assert_eq!(relay.metric("breakwater_queue_depth").await, 1.0);
    assert_eq!(
        relay.metric("breakwater_messages_delivered_total").await,
        0.0
    );
    let down = "breakwater_backend_up{backend=\"tls\"}";
    assert!(
        wait_metric(&relay, down, 0.0, Duration::from_secs(5)).await,
        "backend never down"
    );
    relay.stop().await;
}

/// `opportunistic` against a server that offers STARTTLS but refuses it: the
/// relay reconnects and delivers in clear text, as Postfix's `may` level does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opportunistic_falls_back_when_starttls_is_refused() {
    let server = TlsServer::start_with(true).await;
    let mut relay = Relay::start(&[], &tls_backend(server.addr, "opportunistic")).await;
    submit(&relay).await;
    assert!(
        wait_until_async(Duration::from_secs(10), || !server.messages().is_empty()).await,
        "not delivered after the refused STARTTLS"
    );
    let msgs = server.messages();
    assert_eq!(msgs.len(), 1);
    assert!(!msgs[0].tls, "delivered in clear after the fallback");
    relay.stop().await;
}
