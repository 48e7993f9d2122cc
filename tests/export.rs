//! `breakwater export` writes retained and queued mail to a maildir (each file
//! the stored bytes exactly) and to an mbox (mboxrd: LF line ends, `From `
//! lines quoted), both read back with Python's standard `mailbox` module.

mod common;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// Python reads the maildir and the mbox and prints, per message, its bytes
/// in hex: maildir as stored; mbox un-quoted (mboxrd) and with CRLF line ends
/// again, i.e. what the relay stored if the export is right.
const READER: &str = r#"
import mailbox, sys, re, json
kind, path = sys.argv[1], sys.argv[2]
out = []
if kind == "maildir":
    box = mailbox.Maildir(path, factory=None, create=False)
    for key in box.keys():
        out.append(box.get_bytes(key).hex())
else:
    box = mailbox.mbox(path, factory=None, create=False)
    for key in box.keys():
        raw = box.get_bytes(key)
        if raw.endswith(b"\n\n"):
            raw = raw[:-1]  # the blank line that separates messages
        raw = re.sub(rb"(?m)^>(>*From )", rb"\1", raw)
        out.append(raw.replace(b"\n", b"\r\n").hex())
print(json.dumps(out))
"#;

fn read_back(kind: &str, path: &std::path::Path) -> Vec<Vec<u8>> {
    let out = std::process::Command::new("python3")
        .args(["-c", READER, kind, &path.display().to_string()])
        .output()
        .expect("python3 (Debian: python3) reads the export");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hex: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    hex.iter()
        .map(|h| {
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_to_maildir_and_mbox_is_byte_exact() {
    let mut backend = Backend::start().await;
    let tmp = tempfile::tempdir().unwrap();
    let text = config_text(tmp.path(), &[backend.addr()], "")
        .replace("[journal]\n", "[journal]\nretain_delivered = \"1d\"\n");
    let relay = Relay::start_with_text(tmp.path(), &text).await;
    let admin = format!("http://{}", relay.admin);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(1)).to_rfc3339();
    // Awkward bodies: From lines (quoted in an mbox), quoted ones, 8-bit, a
    // long message across journal parts, a line without its CRLF at the end.
    let bodies: Vec<Vec<u8>> = vec![
        b"Subject: plain\r\n\r\nhello\r\n".to_vec(),
        b"Subject: from lines\r\n\r\nFrom the start\r\n>From quoted\r\n>>From twice\r\n".to_vec(),
        "Subject: 8bit\r\n\r\nGr\u{fc}\u{df}e aus K\u{f6}ln\r\n"
            .as_bytes()
            .to_vec(),
        [
            b"Subject: long\r\n\r\n".to_vec(),
            b"0123456789abcdef\r\n".repeat(2000),
        ]
        .concat(),
    ];
    let mut c = Client::connect(relay.smtp).await;
    c.ehlo("client.test").await;
    for b in &bodies {
        let r = c.send_message("s@client.test", &["a@example.com"], b).await;
        assert!(r.matches("250 "), "{r}");
    }
    backend
        .wait_for(bodies.len(), Duration::from_secs(20))
        .await;
    assert!(
        wait_metric(
            &relay,
            "breakwater_retained_messages",
            4.0,
            Duration::from_secs(10)
        )
        .await
    );
    // Two more while the backend is down: queued, exported too.
    backend.stop().await;
    for i in 0..2 {
        let b = format!("Subject: queued {i}\r\n\r\nwaiting\r\n");
        let r = c
            .send_message("s@client.test", &["b@example.com"], b.as_bytes())
            .await;
        assert!(r.matches("250 "), "{r}");
    }
    c.quit().await;

    // What the relay stored, by id (through the admin API).
    let run = cli(&["queue", "list", "--json", "--admin", &admin], &[]).await;
    assert_eq!(run.json()["messages"].as_array().unwrap().len(), 2);
    let mut stored: HashMap<Vec<u8>, usize> = HashMap::new();
    let (_, page) = relay.http("GET", "/api/messages?limit=100").await;
    let page: serde_json::Value = serde_json::from_str(&page).unwrap();
    let ids: Vec<String> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 6, "{page}");
    for id in &ids {
        let (code, _, body) = raw_http(
            relay.admin,
            &format!("GET /api/queue/{id}/raw HTTP/1.0\r\nHost: {}", relay.admin),
        )
        .await;
        assert_eq!(code, 200);
        *stored.entry(body.into_bytes()).or_default() += 1;
    }

    for kind in ["maildir", "mbox"] {
        let out = tmp.path().join(format!("export-{kind}"));
        let run = cli(
            &[
                "export",
                "--since",
                &since,
                "--format",
                kind,
                &out.display().to_string(),
                "--admin",
                &admin,
            ],
            &[],
        )
        .await;
        assert_eq!(run.code, 0, "{run:?}");
        assert!(
            run.stdout.contains("exported 6 message(s)"),
            "{}",
            run.stdout
        );
        let path = if kind == "mbox" {
            out.join("breakwater.mbox")
        } else {
            out
        };
        let mut got: HashMap<Vec<u8>, usize> = HashMap::new();
        for m in read_back(kind, &path) {
            *got.entry(m).or_default() += 1;
        }
        assert_eq!(got, stored, "{kind}: every message byte-exact");
    }
    // Narrowed by recipient.
    let out = tmp.path().join("only-b");
    let run = cli(
        &[
            "export",
            "--since",
            &since,
            "--recipient",
            "b@example.com",
            "--format",
            "maildir",
            &out.display().to_string(),
            "--admin",
            &admin,
        ],
        &[],
    )
    .await;
    assert!(
        run.stdout.contains("exported 2 message(s)"),
        "{}",
        run.stdout
    );
}
