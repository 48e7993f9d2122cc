//! The journal commit path: one durable commit per message versus group commit.
//!
//! Each iteration stores `CONCURRENT` messages of 10 KiB from as many concurrent
//! tasks (like sessions finishing DATA at once) and waits until all are durable.
//! `max_ops = 1` forces one fsync per message; 64 and 256 let the writer batch.
//! Only the inserts are timed; the messages are removed again untimed.

use breakwater::journal::{
    BatchLimits, Envelope, Journal, MailParams, Options, RcptState, Recipient, Record,
};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use std::time::{Duration, Instant};

const CONCURRENT: usize = 64;
const SIZE: usize = 10 * 1024;

fn record(j: &Journal) -> Record {
    let id = j.next_id();
    Record {
        id,
        message: id,
        envelope: Envelope {
            mail_from: "sender@client.test".into(),
            params: MailParams::default(),
            client_ip: "127.0.0.1".parse().unwrap(),
            helo: "client.test".into(),
            tls: None,
            arrived_ms: 0,
        },
        rcpts: vec![Recipient {
            address: "rcpt@example.test".into(),
            orcpt: None,
            notify: 0,
            state: RcptState::Pending,
            dsn_sent: false,
        }],
        size: SIZE as u64,
        attempts: 0,
        next_attempt_ms: 0,
        held: false,
        purpose: breakwater::journal::Purpose::Primary,
        delay_warned: false,
        history: Vec::new(),
    }
}

fn commit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("journal_commit");
    group.throughput(Throughput::Elements(CONCURRENT as u64));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    for max_ops in [1usize, 64, 256] {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::new(dir.path(), u64::MAX);
        opts.batch = BatchLimits {
            max_ops,
            ..BatchLimits::default()
        };
        let (journal, _) = Journal::open(&opts).unwrap();
        group.bench_with_input(BenchmarkId::new("max_ops", max_ops), &max_ops, |b, _| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let mut timed = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let tasks: Vec<_> = (0..CONCURRENT)
                            .map(|_| {
                                let j = journal.clone();
                                tokio::spawn(async move {
                                    let r = record(&j);
                                    j.enqueue(&r, vec![b'x'; SIZE]).await.unwrap();
                                    r
                                })
                            })
                            .collect();
                        let mut stored = Vec::with_capacity(CONCURRENT);
                        for t in tasks {
                            stored.push(t.await.unwrap());
                        }
                        timed += start.elapsed();
                        // Keep the journal small between iterations (untimed).
                        let removals: Vec<_> = stored
                            .into_iter()
                            .map(|r| {
                                let j = journal.clone();
                                tokio::spawn(async move {
                                    j.remove(&r, breakwater::journal::now_ms(), 0)
                                        .await
                                        .unwrap()
                                })
                            })
                            .collect();
                        for t in removals {
                            t.await.unwrap();
                        }
                    }
                    timed
                })
            })
        });
        rt.block_on(journal.close());
    }
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
