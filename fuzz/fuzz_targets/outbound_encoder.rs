//! The outbound encoder (dot-stuffing for DATA, line folding in both modes)
//! fed the stored message in input-chosen pieces must agree with
//! `reference_encode`; no line it sends may exceed the limit; and its DATA
//! output, read back by our own inbound `DataReceiver`, must end exactly at
//! its end marker and give back the (folded) message, so what we send can
//! never be read as a different message or smuggle a second one.
#![no_main]

use breakwater::delivery::body::{Encoder, Mode, reference_encode};
use breakwater::smtp::data::DataReceiver;
use breakwater_fuzz::Cuts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = Cuts::parse(data);
    // The first payload byte picks the limit: off, tiny, odd, RFC sizes.
    let (limit, message) = match input.split_first() {
        Some((&b, rest)) => ([0, 1, 2, 3, 7, 78, 998][usize::from(b) % 7], rest),
        None => (0, input),
    };
    for mode in [Mode::Bdat, Mode::Data] {
        let mut e = Encoder::new(mode, limit);
        let mut out = Vec::new();
        for piece in cuts.pieces(message) {
            e.encode(piece, &mut out);
        }
        e.finish(&mut out);
        assert_eq!(out, reference_encode(mode, limit, message), "{mode:?} limit {limit}");
        if limit > 0 {
            let max = limit.max(2) + usize::from(mode == Mode::Data); // a stuffed dot
            for line in out.split(|&b| b == b'\n') {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                assert!(line.len() <= max, "a {}-byte line at limit {limit}", line.len());
            }
        }
        if mode == Mode::Data {
            let mut rx = DataReceiver::new();
            let mut back = Vec::new();
            let n = rx.feed(&out, &mut back);
            assert!(rx.is_done(), "the DATA output never ends");
            assert_eq!(n, out.len(), "it ends before its end marker");
            let mut want = reference_encode(Mode::Bdat, limit, message);
            if !want.is_empty() && !want.ends_with(b"\r\n") {
                want.extend_from_slice(b"\r\n");
            }
            assert_eq!(back, want, "read back differently");
        }
    }
});
