use super::*;
use crate::smtp::data::DataReceiver;

/// Encodes `input` cut at `cuts` (sorted offsets) in one encoder.
fn encode_split(mode: Mode, limit: usize, input: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut e = Encoder::new(mode, limit);
    let mut out = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
        e.encode(&input[start..cut], &mut out);
        start = cut;
    }
    e.finish(&mut out);
    out
}

fn check(mode: Mode, limit: usize, input: &[u8], cuts: &[usize]) {
    let want = reference_encode(mode, limit, input);
    let got = encode_split(mode, limit, input, cuts);
    assert_eq!(
        got, want,
        "{mode:?} limit {limit} {input:?} cut at {cuts:?}"
    );
}

/// What a DATA receiver makes of `wire`; asserts the end marker ends it exactly.
fn receive(wire: &[u8]) -> Vec<u8> {
    let mut rx = DataReceiver::new();
    let mut msg = Vec::new();
    assert_eq!(rx.feed(wire, &mut msg), wire.len(), "{wire:?}");
    assert!(rx.is_done(), "no end marker in {wire:?}");
    msg
}

/// No line (between CR LFs) longer than `limit`.
fn assert_lines_fit(folded: &[u8], limit: usize) {
    let text = folded.strip_suffix(b"\r\n").unwrap_or(folded);
    for line in text.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        assert!(line.len() <= limit, "{} > {limit}: {line:?}", line.len());
    }
}

const L: usize = 10;

/// (input, BDAT output, DATA output) at a limit of 10.
const CASES: &[(&[u8], &[u8], &[u8])] = &[
    (b"", b"", b".\r\n"),
    (b"\r\n", b"\r\n", b"\r\n.\r\n"),
    (b".", b".", b"..\r\n.\r\n"),
    (
        b".a\r\n..b\r\n.\r\nc.\r\n",
        b".a\r\n..b\r\n.\r\nc.\r\n",
        b"..a\r\n...b\r\n..\r\nc.\r\n.\r\n",
    ),
    (b"0123456789\r\n", b"0123456789\r\n", b"0123456789\r\n.\r\n"),
    (
        b"0123456789A\r\n",
        b"0123456789\r\n A\r\n",
        b"0123456789\r\n A\r\n.\r\n",
    ),
    (
        b"0123456789abcdefghijklmnopqrst\r\n",
        b"0123456789\r\n abcdefghi\r\n jklmnopqr\r\n st\r\n",
        b"0123456789\r\n abcdefghi\r\n jklmnopqr\r\n st\r\n.\r\n",
    ),
    (
        b"x\r\n0123456789AB",
        b"x\r\n0123456789\r\n AB",
        b"x\r\n0123456789\r\n AB\r\n.\r\n",
    ),
    // The stuffed dot does not count; a dot after a fold is not at a line start.
    (
        b".123456789A\r\n",
        b".123456789\r\n A\r\n",
        b"..123456789\r\n A\r\n.\r\n",
    ),
    (
        b"0123456789.x\r\n",
        b"0123456789\r\n .x\r\n",
        b"0123456789\r\n .x\r\n.\r\n",
    ),
    // A CR not followed by LF is text, and counts.
    (
        b"0123456789\rX\r\n",
        b"0123456789\r\n \rX\r\n",
        b"0123456789\r\n \rX\r\n.\r\n",
    ),
    (
        b"0123456789\r",
        b"0123456789\r\n \r",
        b"0123456789\r\n \r\r\n.\r\n",
    ),
    (
        b"a\r\r\n.\n.\r\n",
        b"a\r\r\n.\n.\r\n",
        b"a\r\r\n..\n.\r\n.\r\n",
    ),
];

#[test]
fn table_of_cases_at_every_single_and_double_split() {
    for &(input, bdat, data) in CASES {
        assert_eq!(reference_encode(Mode::Bdat, L, input), bdat, "{input:?}");
        assert_eq!(reference_encode(Mode::Data, L, input), data, "{input:?}");
        for mode in [Mode::Bdat, Mode::Data] {
            for a in 0..=input.len() {
                check(mode, L, input, &[a]);
                for b in a..=input.len() {
                    check(mode, L, input, &[a, b]);
                }
            }
            let every: Vec<usize> = (1..input.len()).collect();
            check(mode, L, input, &every);
        }
    }
}

#[test]
fn without_folding_bdat_is_the_input_and_data_round_trips() {
    for &(input, _, _) in CASES {
        assert_eq!(encode_split(Mode::Bdat, 0, input, &[]), input);
        let mut want = input.to_vec();
        if !want.is_empty() && !want.ends_with(b"\r\n") {
            want.extend_from_slice(b"\r\n");
        }
        assert_eq!(receive(&encode_split(Mode::Data, 0, input, &[])), want);
    }
}

#[test]
fn lines_around_998() {
    for (len, folded) in [(997, false), (998, false), (999, true), (2994, true)] {
        let mut msg = b"Subject: x\r\n\r\n".to_vec();
        msg.extend(std::iter::repeat_n(b'a', len));
        msg.extend_from_slice(b"\r\n");
        let bdat = encode_split(Mode::Bdat, 998, &msg, &[7, 1000]);
        assert_eq!(bdat != msg, folded, "{len}");
        assert_lines_fit(&bdat, 998);
        assert_eq!(receive(&encode_split(Mode::Data, 998, &msg, &[999])), bdat);
        // The content is the original with CR LF SPACE inserted.
        let folds = len.saturating_sub(998).div_ceil(997);
        assert_eq!(bdat.len(), msg.len() + 3 * folds, "{len}");
        let unfolded: Vec<u8> = String::from_utf8(bdat)
            .unwrap()
            .replace("\r\n a", "a")
            .into();
        assert_eq!(unfolded, msg);
    }
}

#[test]
fn random_inputs_match_the_reference_under_random_splits() {
    let tokens: &[&[u8]] = &[b"\r", b"\n", b".", b"a", b"bcdefg", b"\r\n", b"\r\n.", b" "];
    let mut rng = crate::testkit::Random::new(0x2545_F491_4F6C_DD1D);
    for _ in 0..20_000 {
        let input = rng.tokens(tokens, 23);
        let limit = [0, 1, 2, 3, 5, 8, 78][rng.below(7)];
        let cuts = rng.cuts(input.len(), 4);
        for mode in [Mode::Bdat, Mode::Data] {
            check(mode, limit, &input, &cuts);
        }
        let bdat = encode_split(Mode::Bdat, limit, &input, &cuts);
        if limit > 0 {
            assert_lines_fit(&bdat, limit.max(2));
        }
        let mut want = bdat;
        if !want.is_empty() && !want.ends_with(b"\r\n") {
            want.extend_from_slice(b"\r\n");
        }
        let data = encode_split(Mode::Data, limit, &input, &cuts);
        assert_eq!(receive(&data), want, "{input:?} limit {limit}");
    }
}

#[test]
fn an_encoder_is_reusable_after_finish() {
    let mut e = Encoder::new(Mode::Data, L);
    let mut out = Vec::new();
    e.encode(b"0123456789ab\r", &mut out);
    e.finish(&mut out);
    e.encode(b".x", &mut out);
    e.finish(&mut out);
    assert_eq!(out, b"0123456789\r\n ab\r\r\n.\r\n..x\r\n.\r\n");
}
