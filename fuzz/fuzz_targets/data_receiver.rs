//! `DataReceiver` fed in input-chosen pieces must agree with `reference_data`
//! (done or not, bytes consumed, unstuffed output), and `BodyCheck` fed that
//! output in pieces must agree with `reference_check` (defects always; the
//! `Received:` count when the message is clean). Any disagreement panics.
#![no_main]

use breakwater::smtp::data::{BodyCheck, DataReceiver, reference_check, reference_data};
use breakwater_fuzz::Cuts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (cuts, input) = Cuts::parse(data);
    let mut rx = DataReceiver::new();
    let mut out = Vec::new();
    let mut consumed = 0;
    for piece in cuts.pieces(input) {
        if rx.is_done() {
            // Past the marker: nothing more is taken, nothing is appended.
            let before = out.len();
            assert_eq!(rx.feed(piece, &mut out), 0, "took bytes after the end");
            assert_eq!(out.len(), before, "wrote bytes after the end");
            continue;
        }
        let n = rx.feed(piece, &mut out);
        assert!(n <= piece.len(), "took {n} of a {}-byte piece", piece.len());
        assert!(
            rx.is_done() || n == piece.len(),
            "stopped early without the end"
        );
        consumed += n;
    }
    match reference_data(input) {
        Some((want, n)) => {
            assert!(
                rx.is_done(),
                "the reference ends after {n} bytes, the receiver does not"
            );
            assert_eq!(consumed, n, "consumed");
            assert_eq!(out, want, "unstuffed message");
            check_body(&cuts, &out);
        }
        None => {
            assert!(
                !rx.is_done(),
                "ended after {consumed} bytes; the reference never ends"
            );
            assert_eq!(consumed, input.len(), "consumed");
        }
    }
    // BodyCheck on the raw input too: more shapes than unstuffed output has.
    check_body(&cuts, input);
});

fn check_body(cuts: &Cuts, msg: &[u8]) {
    let mut check = BodyCheck::new();
    for piece in cuts.pieces(msg) {
        check.feed(piece);
    }
    let (defects, received) = reference_check(msg);
    assert_eq!(check.finish(), defects, "defects of {msg:?}");
    if defects.is_empty() {
        assert_eq!(
            check.received_headers(),
            received,
            "Received: count of {msg:?}"
        );
    }
}
