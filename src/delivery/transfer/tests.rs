//! The transfer over loopback TCP against a minimal listener that records what
//! it gets: a message the journal cannot give in full is never ended.

use super::*;
use crate::journal::{Envelope, MailParams, Options, Record};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

const STORED: usize = 70_000;

/// A journal holding one message of `STORED` bytes (two slices).
async fn journal_with_message(dir: &std::path::Path) -> (Journal, QueueId) {
    let (j, _) = Journal::open(&Options::new(dir, 1 << 30)).unwrap();
    let id = j.next_id();
    let record = Record {
        id,
        message: id,
        envelope: Envelope {
            mail_from: "s@client.test".into(),
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "client.test".into(),
            tls: None,
            arrived_ms: 0,
        },
        rcpts: Vec::new(),
        size: STORED as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        purpose: crate::journal::Purpose::Primary,
        delay_warned: false,
        history: Vec::new(),
    };
    j.enqueue(&record, vec![b'x'; STORED]).await.unwrap();
    (j, record.id)
}

/// Answers `354` to DATA and `250` to a first BDAT chunk of 64,000 bytes;
/// returns all it read once the client hangs up.
async fn listener() -> (std::net::SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
    const CHUNK: &[u8] = b"BDAT 64000\r\n";
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            let n = s.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let before = got.len();
            got.extend_from_slice(&buf[..n]);
            let chunk_in = CHUNK.len() + 64_000;
            if got == b"DATA\r\n" {
                s.write_all(b"354 go\r\n").await.unwrap();
            } else if got.starts_with(CHUNK) && before < chunk_in && got.len() >= chunk_in {
                s.write_all(b"250 chunk\r\n").await.unwrap();
            }
        }
        got
    });
    (addr, task)
}

async fn send_short(chunking: bool) -> (Result<Response<String>, TransferError>, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let (journal, id) = journal_with_message(dir.path()).await;
    let (addr, server) = listener().await;
    let mut client = SmtpClient {
        stream: Stream::Plain(TcpStream::connect(addr).await.unwrap()),
        timeout: std::time::Duration::from_secs(10),
    };
    let body = Body {
        journal: &journal,
        id,
        size: STORED as u64 + 10, // the record claims more than is stored
        line_limit: 0,
        prefix: &[],
    };
    let result = send(&mut client, chunking, body).await;
    drop(client);
    let got = tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    journal.close().await;
    (result, got)
}

#[tokio::test]
async fn data_from_a_short_body_is_never_ended() {
    let (result, got) = send_short(false).await;
    assert!(
        matches!(result, Err(TransferError::Short { read: 70_000, .. })),
        "{result:?}"
    );
    assert!(got.starts_with(b"DATA\r\n"));
    assert_eq!(
        got.len(),
        6 + 64_000,
        "the first slice went out, nothing after"
    );
    assert!(!got.ends_with(b".\r\n"));
}

#[tokio::test]
async fn bdat_from_a_short_body_never_sends_last() {
    let (result, got) = send_short(true).await;
    assert!(
        matches!(result, Err(TransferError::Short { .. })),
        "{result:?}"
    );
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("BDAT 64000\r\n"), "{}", &text[..20]);
    assert!(!text.contains("LAST"));
    assert_eq!(got.len(), "BDAT 64000\r\n".len() + 64_000);
}
