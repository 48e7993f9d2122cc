use super::*;

fn record(j: &Journal, size: usize) -> Record {
    record_with_id(j.next_id(), size)
}

fn record_with_id(id: QueueId, size: usize) -> Record {
    Record {
        id,
        message: id,
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
        purpose: crate::journal::Purpose::Primary,
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
    j.remove(&records[2], now_ms(), 0).await.unwrap();
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
    j.remove(&a, now_ms(), 0).await.unwrap();
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
    spool.commit(std::slice::from_ref(&r)).await.unwrap();
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
    j.remove(&r, now_ms(), 0).await.unwrap();
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
        spool.commit(std::slice::from_ref(&r)).await,
        Err(Error::Commit(CommitError::StagedLost))
    ));
    assert!(j.entry(r.id).unwrap().is_none());
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

fn delivered(mut r: Record) -> Record {
    for x in &mut r.rcpts {
        x.state = RcptState::Delivered {
            backend: "b0".into(),
            reply: BackendReply::new(250, "2.0.0", "ok"),
        };
    }
    r
}

/// Retention under controlled time: a delivered message stays (bytes,
/// envelope, outcome) until `now + retain`, then goes; one that nobody got
/// is not retained; retained state survives a reopen.
#[tokio::test]
async fn retained_messages_expire_at_their_time() {
    let dir = tempfile::tempdir().unwrap();
    let opts = Options::new(dir.path(), 1 << 30);
    let (j, _) = Journal::open(&opts).unwrap();
    let t0 = 1_000_000_000_000;
    let day = 86_400_000;
    let a = record(&j, 5000);
    j.enqueue(&a, body(5000)).await.unwrap();
    j.remove(&delivered(a.clone()), t0, 7 * day).await.unwrap();
    let mut failed = record(&j, 100);
    j.enqueue(&failed, body(100)).await.unwrap();
    failed.rcpts[0].state = RcptState::Failed {
        reply: BackendReply::new(550, "5.1.1", "no"),
    };
    failed.rcpts[0].dsn_sent = true;
    j.remove(&failed, t0, 7 * day).await.unwrap();
    assert_eq!(j.message_count(), 0, "retained mail is not queued mail");
    assert_eq!(j.retained(), (1, 5000));
    assert!(
        j.body(failed.id).unwrap().is_none(),
        "undelivered: not kept"
    );
    let e = j.entry(a.id).unwrap().unwrap();
    assert!(e.is_retained());
    assert_eq!(e.message.retain_until_ms, t0 + 7 * day);
    assert!(e.message.finished.as_ref().unwrap().any_delivered());
    assert_eq!(j.next_expiry_ms(), Some(t0 + 7 * day));
    j.close().await;
    drop((j, e));

    let (j, recovered) = Journal::open(&opts).unwrap();
    assert!(recovered.is_empty(), "nothing to deliver");
    assert_eq!(j.retained(), (1, 5000));
    assert_eq!(j.live_bytes(), 5000);
    assert_eq!(j.expire_retained(t0 + 7 * day - 1), 0);
    assert_eq!(j.body(a.id).unwrap().unwrap(), body(5000));
    assert_eq!(j.expire_retained(t0 + 7 * day), 1);
    j.set_setting("sync", 1).await.unwrap(); // the expiry is committed before this
    assert!(j.entry(a.id).unwrap().is_none());
    assert!(j.body(a.id).unwrap().is_none());
    assert_eq!(count_parts(&j), 0);
    assert_eq!((j.retained(), j.live_bytes()), ((0, 0), 0));
}

/// Retained bytes count against `journal.max_bytes` but are given up,
/// oldest first, before new mail is refused; queued mail never is.
#[tokio::test]
async fn retained_mail_makes_room_oldest_first_queued_never() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 20_000)).unwrap();
    let mut kept = Vec::new();
    for _ in 0..3 {
        let r = record(&j, 5000);
        j.enqueue(&r, body(5000)).await.unwrap();
        j.remove(&delivered(r.clone()), now_ms(), 86_400_000)
            .await
            .unwrap();
        kept.push(r.id);
    }
    let queued = record(&j, 5000);
    j.enqueue(&queued, body(5000)).await.unwrap();
    assert_eq!(j.live_bytes(), 20_000, "full: three retained, one queued");
    j.check_space(5000)
        .expect("retained mail does not refuse new mail");
    // New mail: the oldest retained message makes room for it.
    let new = record(&j, 5000);
    j.enqueue(&new, body(5000)).await.unwrap();
    j.set_setting("sync", 1).await.unwrap();
    assert!(j.entry(kept[0]).unwrap().is_none(), "oldest given up");
    assert!(j.entry(kept[1]).unwrap().is_some());
    assert_eq!(j.retained(), (2, 10_000));
    // Two more: the other two retained go; queued mail stays.
    for _ in 0..2 {
        let r = record(&j, 5000);
        j.enqueue(&r, body(5000)).await.unwrap();
    }
    assert_eq!(j.retained(), (0, 0));
    // Now only queued mail is left: new mail is refused, nothing queued lost.
    let refused = record(&j, 5000);
    assert!(j.enqueue(&refused, body(5000)).await.unwrap_err().is_full());
    assert!(matches!(j.check_space(1), Err(Error::Full { .. })));
    assert_eq!(j.body(queued.id).unwrap().unwrap(), body(5000));
    assert_eq!(j.message_count(), 4);
}

/// A replay job for a retained message: stored once per replay, the
/// message is queued again meanwhile and retained again after.
#[tokio::test]
async fn one_job_per_replay_and_message() {
    let dir = tempfile::tempdir().unwrap();
    let (j, _) = Journal::open(&Options::new(dir.path(), 1 << 30)).unwrap();
    let r = record(&j, 300);
    j.enqueue(&r, body(300)).await.unwrap();
    j.remove(&delivered(r.clone()), now_ms(), 86_400_000)
        .await
        .unwrap();
    let job = |j: &Journal| Record {
        id: j.next_id(),
        purpose: Purpose::Replay {
            replay: "R1".into(),
            to: None,
        },
        ..r.clone()
    };
    let first = job(&j);
    assert_eq!(j.add_job(&first, "R1").await.unwrap(), Added::Added);
    assert_eq!(j.message_count(), 1);
    assert_eq!(j.retained(), (0, 0));
    assert_eq!(j.add_job(&job(&j), "R1").await.unwrap(), Added::Skipped);
    let e = j.entry(r.id).unwrap().unwrap();
    assert_eq!(e.jobs.len(), 1);
    assert_eq!(e.jobs[0].id, first.id);
    j.remove(&delivered(first.clone()), now_ms(), 86_400_000)
        .await
        .unwrap();
    assert_eq!((j.message_count(), j.retained().0), (0, 1));
    assert_eq!(j.add_job(&job(&j), "R1").await.unwrap(), Added::Skipped);
    assert_eq!(j.retained().0, 1, "a refused job leaves it retained");
    let gone = Record {
        message: QueueId(7),
        ..job(&j)
    };
    assert_eq!(j.add_job(&gone, "R1").await.unwrap(), Added::Missing);
}
