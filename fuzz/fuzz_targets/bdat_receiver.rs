//! BDAT framing: a sequence of chunk sizes and one byte stream cut into
//! pieces anywhere (not at chunk boundaries). Each `BdatReceiver` must take
//! exactly its size (or all that is left), whatever the cuts; and `BodyCheck`
//! fed the chunks as they arrive must agree with `reference_check` of their
//! concatenation.
//!
//! Input: the cut header (see `breakwater_fuzz::Cuts`), one byte `c` (the
//! number of chunks, `c % 8 + 1`), `c` size bytes (255 means `u64::MAX`: a
//! chunk that takes the rest), then the stream.
#![no_main]

use breakwater::smtp::data::{BdatReceiver, BodyCheck, reference_check};
use breakwater_fuzz::Cuts;
use libfuzzer_sys::fuzz_target;

fn sizes(data: &[u8]) -> (Vec<u64>, &[u8]) {
    let Some((&c, rest)) = data.split_first() else {
        return (vec![0], data);
    };
    let n = (usize::from(c) % 8 + 1).min(rest.len());
    let sizes = rest[..n]
        .iter()
        .map(|&b| if b == 255 { u64::MAX } else { u64::from(b) })
        .collect();
    (sizes, &rest[n..])
}

fuzz_target!(|data: &[u8]| {
    let (cuts, rest) = Cuts::parse(data);
    let (sizes, stream) = sizes(rest);
    let mut pieces = cuts.pieces(stream).into_iter();
    let mut current: &[u8] = pieces.next().unwrap_or_default();
    let mut offset = 0usize;
    let mut check = BodyCheck::new();
    let mut body = Vec::new();
    for size in sizes {
        let mut rx = BdatReceiver::new(size);
        let mut dropped = rx.clone();
        let mut out = Vec::new();
        let mut taken = 0u64;
        loop {
            let mark = out.len();
            let n = rx.feed(current, Some(&mut out));
            assert_eq!(dropped.feed(current, None), n, "with and without output");
            assert_eq!(out.len() - mark, n, "appended what it took");
            check.feed(&out[mark..]);
            taken += n as u64;
            current = &current[n..];
            if rx.is_done() {
                break;
            }
            assert!(
                current.is_empty(),
                "left bytes of a piece before the chunk's end"
            );
            match pieces.next() {
                Some(p) => current = p,
                None => break,
            }
        }
        let available = (stream.len() - offset) as u64;
        let want = size.min(available);
        assert_eq!(
            taken, want,
            "chunk of {size} took {taken} with {available} left"
        );
        assert_eq!(rx.remaining(), size - taken, "remaining");
        assert_eq!(rx.is_done(), taken == size, "done");
        assert_eq!(out, &stream[offset..offset + want as usize], "chunk bytes");
        offset += want as usize;
        body.extend_from_slice(&out);
        if !rx.is_done() {
            break;
        }
    }
    let (defects, received) = reference_check(&body);
    assert_eq!(check.finish(), defects, "defects of {body:?}");
    if defects.is_empty() {
        assert_eq!(
            check.received_headers(),
            received,
            "Received: count of {body:?}"
        );
    }
});
