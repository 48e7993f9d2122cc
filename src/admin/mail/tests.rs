use super::*;
use std::sync::Mutex;

/// Messages in memory, oldest first.
struct Memory(Mutex<Vec<(MailSummary, Vec<u8>)>>);

impl MailSource for Memory {
    fn newest(
        &self,
        before: Option<QueueId>,
        scan: usize,
    ) -> Result<(Vec<MailSummary>, Option<QueueId>), String> {
        let all = self.0.lock().unwrap();
        let older: Vec<MailSummary> = all
            .iter()
            .rev()
            .filter(|(s, _)| before.is_none_or(|b| s.id < b))
            .map(|(s, _)| s.clone())
            .collect();
        if older.len() > scan {
            let page = older[..scan].to_vec();
            let next = page.last().map(|s| s.id);
            Ok((page, next))
        } else {
            Ok((older, None))
        }
    }

    fn message(&self, id: QueueId) -> Result<Option<(MailSummary, Vec<u8>)>, String> {
        Ok(self
            .0
            .lock()
            .unwrap()
            .iter()
            .find(|(s, _)| s.id == id)
            .cloned())
    }
}

const DAY: u64 = 86_400_000;
/// 2026-12-01T00:00:00Z
const DEC1: u64 = 1_796_083_200_000;

fn msg(n: u64, arrived_ms: u64, rcpts: &[&str], subject: &str) -> (MailSummary, Vec<u8>) {
    (
        MailSummary {
            id: QueueId(arrived_ms * 1000 + n),
            from: format!("sender{n}@client.test"),
            recipients: rcpts.iter().map(|r| r.to_string()).collect(),
            arrived_ms,
            size: 100,
            state: "queued".into(),
        },
        format!(
            "From: Sender {n} <sender{n}@client.test>\r\nSubject: {subject}\r\n\r\nbody {n}\r\n"
        )
        .into_bytes(),
    )
}

fn memory(msgs: Vec<(MailSummary, Vec<u8>)>) -> Memory {
    Memory(Mutex::new(msgs))
}

fn ids(rows: &[Row]) -> Vec<u64> {
    rows.iter().map(|r| r.summary.id.0 % 1000).collect()
}

#[test]
fn search_shows_only_what_the_viewer_may_see() {
    let m = memory(vec![
        msg(1, DEC1, &["alice@example.com"], "for alice"),
        msg(2, DEC1 + 1, &["bob@example.com"], "for bob"),
        msg(
            3,
            DEC1 + 2,
            &["bob@example.com", "ALICE@example.com"],
            "for both",
        ),
        msg(4, DEC1 + 3, &["carol@sales.example.com"], "sales"),
    ]);
    let alice = Viewer::user(
        "alice",
        &["alice@example.com".into(), "*@sales.example.com".into()],
    );
    let (rows, next) = search(&m, &alice, &Search::default(), None).unwrap();
    assert_eq!(ids(&rows), [4, 3, 1], "newest first, bob's left out");
    assert_eq!(next, None);
    assert_eq!(
        rows[1].to,
        ["ALICE@example.com"],
        "bob hidden within a message"
    );
    assert_eq!(rows[1].subject, "for both");
    assert_eq!(rows[1].from, "Sender 3 <sender3@client.test>");
    let (rows, _) = search(&m, &Viewer::admin(), &Search::default(), None).unwrap();
    assert_eq!(ids(&rows), [4, 3, 2, 1]);
    assert_eq!(rows[1].to.len(), 2);
}

#[test]
fn search_filters() {
    let m = memory(vec![
        msg(1, DEC1, &["alice@example.com"], "Quarterly numbers"),
        msg(2, DEC1 + DAY, &["alice@example.com"], "lunch"),
        msg(3, DEC1 + 2 * DAY, &["a2@example.com"], "numbers again"),
    ]);
    let admin = Viewer::admin();
    let find = |s: Search| ids(&search(&m, &admin, &s, None).unwrap().0);
    let subject = Search {
        subject: Some("numbers".into()),
        ..Default::default()
    };
    assert_eq!(find(subject), [3, 1]);
    let to = Search {
        to: Some("alice".into()),
        ..Default::default()
    };
    assert_eq!(find(to), [2, 1]);
    let from = Search {
        from: Some("sender 2".into()), // the header From's display name
        ..Default::default()
    };
    assert_eq!(find(from), [2]);
    let from = Search {
        from: Some("sender3@".into()),
        ..Default::default()
    };
    assert_eq!(find(from), [3]);
    let (form, checked) = SearchQuery {
        since: Some("2026-12-02".into()),
        until: Some("2026-12-02".into()),
        ..Default::default()
    }
    .check();
    assert_eq!(form.since, "2026-12-02");
    let (s, before) = checked.unwrap();
    assert_eq!(before, None);
    assert_eq!(s.since_ms, Some(DEC1 + DAY));
    assert_eq!(s.until_ms, Some(DEC1 + 2 * DAY));
    assert_eq!(find(s), [2]);
    let since = Search {
        since_ms: Some(DEC1 + DAY),
        ..Default::default()
    };
    assert_eq!(find(since), [3, 2]);
}

#[test]
fn search_pages_with_a_cursor() {
    let n = MAX_ROWS as u64 + 50;
    let m = memory(
        (0..n)
            .map(|i| msg(i, DEC1 + i, &["alice@example.com"], "s"))
            .collect(),
    );
    let alice = Viewer::user("alice", &["alice@example.com".into()]);
    let (first, next) = search(&m, &alice, &Search::default(), None).unwrap();
    assert_eq!(first.len(), MAX_ROWS);
    assert_eq!(first[0].summary.id.0 % 1000, n - 1);
    let next = next.expect("a cursor");
    let (second, end) = search(&m, &alice, &Search::default(), Some(next)).unwrap();
    assert_eq!(second.len(), 50);
    assert_eq!(end, None);
    assert_eq!(second[0].summary.id.0 % 1000, n - 1 - MAX_ROWS as u64);
}

#[test]
fn search_scan_is_bounded() {
    // Many messages nobody may see: one page looks at MAX_SCAN and offers more.
    let n = MAX_SCAN as u64 + 10;
    let m = memory(
        (0..n)
            .map(|i| msg(i % 1000, DEC1 + i, &["bob@example.com"], "s"))
            .collect(),
    );
    let alice = Viewer::user("alice", &["alice@example.com".into()]);
    let (rows, next) = search(&m, &alice, &Search::default(), None).unwrap();
    assert!(rows.is_empty());
    assert!(next.is_some(), "more to look at");
}

#[test]
fn bad_searches_are_explained() {
    for (q, want) in [
        (
            SearchQuery {
                since: Some("yesterday".into()),
                ..Default::default()
            },
            "From date",
        ),
        (
            SearchQuery {
                until: Some("2026-13-01".into()),
                ..Default::default()
            },
            "To date",
        ),
        (
            SearchQuery {
                before: Some("xyz".into()),
                ..Default::default()
            },
            "cursor",
        ),
    ] {
        let e = q.check().1.unwrap_err();
        assert!(e.contains(want), "{e}");
    }
    let long = "x".repeat(5000);
    let (form, ok) = SearchQuery {
        subject: Some(long),
        ..Default::default()
    }
    .check();
    assert!(ok.is_ok());
    assert_eq!(form.subject.chars().count(), MAX_FIELD);
}

#[test]
fn cookies_origins_and_https() {
    let mut h = HeaderMap::new();
    h.insert(
        header::COOKIE,
        "a=1; bw_session=abc ; bw_login=xyz".parse().unwrap(),
    );
    assert_eq!(cookie(&h, "bw_session"), Some("abc"));
    assert_eq!(cookie(&h, "bw_login"), Some("xyz"));
    assert_eq!(cookie(&h, "bw"), None);
    assert!(is_token(&"ab".repeat(32)));
    assert!(!is_token("abc"));
    assert!(!is_token(&"zz".repeat(32)));
    let t = random_token().unwrap();
    assert!(is_token(&t));
    assert_ne!(t, random_token().unwrap());

    let mut h = HeaderMap::new();
    h.insert(header::HOST, "127.0.0.1:9925".parse().unwrap());
    assert!(same_site(&h).is_ok());
    h.insert(header::ORIGIN, "http://127.0.0.1:9925".parse().unwrap());
    h.insert("sec-fetch-site", "same-origin".parse().unwrap());
    assert!(same_site(&h).is_ok());
    h.insert("sec-fetch-site", "same-site".parse().unwrap());
    assert!(same_site(&h).is_err());
    h.insert("sec-fetch-site", "none".parse().unwrap());
    h.insert(header::ORIGIN, "http://evil.test".parse().unwrap());
    assert!(same_site(&h).is_err());
    h.insert(header::ORIGIN, "null".parse().unwrap());
    assert!(
        same_site(&h).is_err(),
        "null, the browser not saying same-origin"
    );
    h.insert("sec-fetch-site", "same-origin".parse().unwrap());
    assert!(same_site(&h).is_ok(), "our own form under no-referrer");
    h.remove("sec-fetch-site");
    assert!(same_site(&h).is_err(), "null alone");

    let mut h = HeaderMap::new();
    assert!(!is_https(&h));
    h.insert("x-forwarded-proto", "https".parse().unwrap());
    assert!(is_https(&h));
    let mut h = HeaderMap::new();
    h.insert("forwarded", "for=192.0.2.1;proto=https".parse().unwrap());
    assert!(is_https(&h));
    let c = set_cookie("bw_session", "v", None, true);
    assert_eq!(
        c.to_str().unwrap(),
        "bw_session=v; HttpOnly; SameSite=Strict; Path=/mail; Secure"
    );
}

#[tokio::test]
async fn the_journal_source_pages_newest_first() {
    use crate::journal::{Envelope, Journal, MailParams, Options, RcptState, Recipient, Record};
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 1 << 30)).unwrap();
    let mut want = Vec::new();
    for i in 0..5u8 {
        let id = j.next_id();
        let r = Record {
            id,
            message: id,
            purpose: if i == 1 {
                crate::journal::Purpose::Canary {
                    backend: "b".into(),
                    token: "t".into(),
                    during_quiet_time: false,
                }
            } else {
                crate::journal::Purpose::Primary
            },
            envelope: Envelope {
                mail_from: "s@client.test".into(),
                params: MailParams::default(),
                client_ip: "127.0.0.1".parse().unwrap(),
                helo: "c".into(),
                tls: None,
                arrived_ms: id.0 / 1000,
            },
            rcpts: vec![Recipient {
                address: format!("r{i}@example.com"),
                orcpt: None,
                notify: 0,
                state: RcptState::Pending,
                dsn_sent: false,
            }],
            size: 0,
            attempts: 0,
            next_attempt_ms: 0,
            held: i == 3,
            delay_warned: false,
            history: Vec::new(),
        };
        let body = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(5000 * i as usize));
        let mut r = r;
        r.size = body.len() as u64;
        j.enqueue(&r, body.clone().into_bytes()).await.unwrap();
        want.push((id, body));
    }
    let src = JournalSource(j.clone());
    let (page, next) = src.newest(None, 2).unwrap();
    assert_eq!(
        page.iter().map(|s| s.id).collect::<Vec<_>>(),
        [want[4].0, want[3].0]
    );
    assert_eq!(page[1].state, "held");
    assert_eq!(page[0].state, "queued");
    assert_eq!(next, Some(want[3].0));
    let (page, next) = src.newest(next, 10).unwrap();
    assert_eq!(
        page.iter().map(|s| s.id).collect::<Vec<_>>(),
        [want[2].0, want[0].0],
        "no canary (message 1)"
    );
    assert_eq!(next, None);
    assert_eq!(
        src.message(want[1].0).unwrap(),
        None,
        "a canary is not shown"
    );
    let (s, bytes) = src.message(want[4].0).unwrap().unwrap();
    assert_eq!(bytes, want[4].1.as_bytes());
    assert_eq!(s.recipients, ["r4@example.com"]);
    let head = src.head(want[4].0, 100).unwrap().unwrap();
    assert!(head.len() >= 100 && head.len() < want[4].1.len());
    assert!(want[4].1.as_bytes().starts_with(&head));
    assert_eq!(src.message(QueueId(1)).unwrap(), None);
    assert_eq!(src.head(QueueId(1), 100).unwrap(), None);
    j.close().await;
}
