use super::*;

fn record(j: &Journal, size: usize) -> Record {
    record_with_id(j.next_id(), size)
}

fn record_with_id(id: QueueId, size: usize) -> Record {
    Record {
        id,
        envelope: Envelope {
            mail_from: "s@client.test".into(),
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "client.test".into(),
            tls: None,
            arrived_ms: now_ms(),
        },
        rcpts: vec![Recipient {
            address: "a@example.com".into(),
            orcpt: None,
            notify: 0,
            state: RcptState::Pending,
            dsn_sent: false,
        }],
        size: size as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        bounce: false,
        delay_warned: false,
        history: Vec::new(),
    }
}

fn body(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i % 251) as u8).collect()
}

fn count_parts(j: &Journal) -> usize {
    let db = j.inner.shared.db().unwrap();
    let txn = db.begin_read().unwrap();
    let t = txn.open_table(BODIES).unwrap();
    t.iter().unwrap().count()
}

#[tokio::test]
async fn bodies_roundtrip_across_part_boundaries_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new(dir.path(), 1 << 30);
    let (j, recovered) = Journal::open(&opts).unwrap();
    assert!(recovered.is_empty());
    let sizes = [0, 1, PART - 1, PART, PART + 1, 3 * PART, 10_600];
    let mut records = Vec::new();
    for size in sizes {
        let r = record(&j, size);
        j.enqueue(&r, body(size)).await.unwrap();
        assert_eq!(j.body(r.id).unwrap().unwrap(), body(size), "size {size}");
        records.push(r);
    }
    assert!(j.contains(records[2].id).await.unwrap());
    j.remove(&records[2]).await.unwrap();
    assert_eq!(j.body(records[2].id).unwrap(), None);
    assert!(!j.contains(records[2].id).await.unwrap());
    assert!(
        j.contains(records[0].id).await.unwrap(),
        "an empty body is there"
    );
    assert_eq!(
        j.body(records[3].id).unwrap().unwrap(),
        body(PART),
        "neighbour intact"
    );
    let mut changed = records[4].clone();
    changed.attempts = 3;
    j.save(&changed).await.unwrap();
    j.close().await;
    drop(j);

    let (j, recovered) = Journal::open(&opts).unwrap();
    assert_eq!(recovered.len(), sizes.len() - 1);
    assert!(
        recovered.windows(2).all(|w| w[0].id < w[1].id),
        "oldest first"
    );
    assert_eq!(
        recovered
            .iter()
            .find(|r| r.id == changed.id)
            .unwrap()
            .attempts,
        3
    );
    for r in &recovered {
        assert_eq!(j.body(r.id).unwrap().unwrap(), body(r.size as usize));
    }
    assert!(
        j.next_id() > recovered.last().unwrap().id,
        "ids stay unique across restarts"
    );
    j.close().await;
}

#[tokio::test]
async fn full_journal_refuses_and_frees_space_on_remove() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 10_000)).unwrap();
    let a = record(&j, 6_000);
    j.enqueue(&a, body(6_000)).await.unwrap();
    let b = record(&j, 6_000);
    assert!(matches!(
        j.enqueue(&b, body(6_000)).await,
        Err(Error::Full { .. })
    ));
    assert_eq!(j.body(b.id).unwrap(), None, "nothing stored on refusal");
    j.remove(&a).await.unwrap();
    j.enqueue(&b, body(6_000)).await.unwrap();
    assert_eq!(j.live_bytes(), 6_000);
    j.close().await;
    assert!(matches!(j.save(&b).await, Err(Error::Closed)));
}

/// A spool writes a large message in parts as it arrives, never holding more
/// than `STAGE_BYTES` plus one piece; the result reads back byte for byte.
#[tokio::test]
async fn spool_streams_large_messages_in_parts() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 1 << 30)).unwrap();
    let want = body(1_000_003);
    let mut spool = j.spool(j.next_id());
    for piece in want.chunks(16 * 1024 + 7) {
        spool.buf().extend_from_slice(piece);
        assert!(spool.buf().len() < STAGE_BYTES + 16 * 1024 + 7);
        if spool.needs_flush() {
            spool.flush().await.unwrap();
        }
    }
    assert_eq!(spool.len(), want.len() as u64);
    let r = record_with_id(spool.id(), want.len());
    spool.commit(&r).await.unwrap();
    assert_eq!(j.body(r.id).unwrap().unwrap(), want);
    let mut streamed = Vec::new();
    let total = parts(r.size);
    let mut first = 0;
    while first < total {
        streamed.extend(j.read_parts(r.id, first, 16).await.unwrap());
        first += 16;
    }
    assert_eq!(streamed, want);
    assert_eq!(j.live_bytes(), want.len() as u64);
    j.remove(&r).await.unwrap();
    assert_eq!(count_parts(&j), 0);
    assert_eq!(j.live_bytes(), 0);
    j.close().await;
}

/// A spool dropped before its commit (client vanished, message refused) leaves
/// nothing behind; one left over by a crash is removed at the next open.
#[tokio::test]
async fn unfinished_messages_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new(dir.path(), 1 << 30);
    let (j, _) = Journal::open(&opts).unwrap();
    let mut spool = j.spool(j.next_id());
    spool.buf().extend(body(100_000));
    spool.flush().await.unwrap();
    assert!(count_parts(&j) > 0);
    drop(spool);
    // The discard is not awaited; a later commit is ordered after it.
    j.set_setting("probe", 1).await.unwrap();
    assert_eq!(count_parts(&j), 0);
    assert_eq!(j.live_bytes(), 0);

    // A crash after staging: simulate by staging, then making it durable with
    // another commit and forgetting the spool without its destructor.
    let mut spool = j.spool(j.next_id());
    spool.buf().extend(body(50_000));
    spool.flush().await.unwrap();
    spool.committed = true; // its destructor now does nothing, as after a crash
    drop(spool);
    j.set_setting("probe", 2).await.unwrap();
    assert!(count_parts(&j) > 0);
    j.close().await;
    drop(j);
    let (j, recovered) = Journal::open(&opts).unwrap();
    assert!(recovered.is_empty());
    assert_eq!(count_parts(&j), 0, "staged parts removed at open");
    j.close().await;
}

/// Parts staged before a reopen may be gone: such a message is refused, never
/// stored with holes.
#[tokio::test]
async fn a_reopen_between_stage_and_commit_refuses_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 1 << 30)).unwrap();
    let mut spool = j.spool(j.next_id());
    spool.buf().extend(body(40_000));
    spool.flush().await.unwrap();
    j.inner.shared.broken("simulated I/O error");
    assert!(!j.is_healthy());
    assert!(j.readiness().unwrap_err().contains("simulated"));
    // The writer reopens by itself (before or after failing the next op).
    let _ = j.set_setting("x", 1).await;
    for _ in 0..1000 {
        if j.generation() > 0 && j.is_healthy() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(j.is_healthy() && j.generation() == 1, "reopened");
    let r = record_with_id(spool.id(), 40_000);
    assert!(matches!(
        spool.commit(&r).await,
        Err(Error::Commit(CommitError::StagedLost))
    ));
    assert_eq!(j.record(r.id).unwrap(), None);
    // The spool's discard is ordered before this commit.
    let other = record(&j, 10);
    j.enqueue(&other, body(10)).await.unwrap();
    assert_eq!(count_parts(&j), 1, "only the new message's part is left");
    assert_eq!(j.live_bytes(), 10);
    j.close().await;
}

#[test]
fn journal_directory_and_file_are_private() {
    // The modes are set explicitly after creation, so no umask can widen them
    // (a umask only ever removes bits); the umask itself is process-wide and is
    // not changed here, other tests run in parallel.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a/journal");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let (j, _) = Journal::open(&Options::new(&dir, 1 << 20)).unwrap();
    rt.block_on(j.close());
    drop(j);
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("journal.redb")), 0o600);

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("journal.redb"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (j, _) = Journal::open(&Options::new(&dir, 1 << 20)).unwrap();
    rt.block_on(j.close());
    drop(j);
    assert_eq!(mode(&dir), 0o700, "readable directory tightened");
    assert_eq!(mode(&dir.join("journal.redb")), 0o600);

    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let e = Journal::open(&Options::new(&dir, 1 << 20)).unwrap_err();
    assert!(matches!(e, Error::Insecure { .. }), "{e}");
    assert!(e.to_string().contains("writable by other users"), "{e}");
}

#[tokio::test]
async fn low_free_space_refuses_new_mail() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = Options::new(dir.path(), 1 << 30);
    let (j, _) = Journal::open(&opts).unwrap();
    assert!(j.check_space(1000).is_ok());
    assert!(j.readiness().is_ok());
    j.close().await;
    drop(j);
    opts.min_free_bytes = u64::MAX / 2;
    let (j, _) = Journal::open(&opts).unwrap();
    let e = j.check_space(0).unwrap_err();
    assert!(e.is_full(), "{e}");
    assert!(e.to_string().contains("journal.min_free_bytes"), "{e}");
    assert!(j.readiness().unwrap_err().contains("452 4.3.1"));
    j.close().await;
}

/// A large dropped message is removed over several commits, whatever comes in
/// meanwhile, until nothing of it is left.
#[tokio::test]
async fn large_discards_are_spread_and_finish() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 1 << 30)).unwrap();
    for _ in 0..3 {
        let mut spool = j.spool(j.next_id());
        for piece in body(2_000_000).chunks(STAGE_BYTES) {
            spool.buf().extend_from_slice(piece);
            spool.flush().await.unwrap();
        }
        drop(spool);
    }
    let small = record(&j, 10);
    j.enqueue(&small, body(10)).await.unwrap();
    assert_eq!(j.body(small.id).unwrap().unwrap(), body(10));
    let mut left = count_parts(&j);
    for _ in 0..1000 {
        if left == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        left = count_parts(&j);
    }
    assert_eq!(left, 1, "only the small message's part remains");
    assert_eq!(j.live_bytes(), 10);
    j.close().await;
}
