//! Message bodies on the way in, sans-IO: where DATA ends, dot-unstuffing, BDAT
//! chunk framing, and the checks every body gets (bare CR, bare LF, NUL, the
//! `Received:` count for loop detection).
//!
//! Only `CR LF . CR LF` ends DATA, where the first CR LF may be the one that
//! ended the `DATA` command. Every receiver here is a state machine fed whatever
//! the socket delivered: its result does not depend on how the input was split
//! into reads (tested against [`reference_data`] on every split of every known
//! smuggling sequence, and fuzzed).
//!
//! Why our own and not smtp-proto's `DataReceiver`: in its "CR LF ." state every
//! CR keeps that state, so `CR LF . CR CR LF` ended DATA there and what followed
//! in the same write was read as a second transaction (SMTP smuggling).

/// The fake ends of DATA that SMTP smuggling uses (SEC Consult, 2023, and
/// the variants found since): a server that takes any of them for the end of
/// the message, while the next hop does not, lets a second message through.
/// None of them ends DATA here; each leaves a bare CR, bare LF or NUL, so the
/// message is refused (`550 5.6.0`). For tests and fuzzing seeds.
pub const SMUGGLING: &[&[u8]] = &[
    b"\n.\n",
    b"\n.\r\n",
    b"\r.\r",
    b"\r\n.\r",
    b"\r.\r\n",
    b"\n.\r\r\n",
    b"\r\n.\r\r\n",
    b"\r\r\n.\r\r\n",
    b"\r\n\x00.\r\n",
];

/// Where a DATA body is between two calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a line (after CR LF, or right after the DATA command).
    LineStart,
    /// Inside a line.
    Text,
    /// Inside a line, just after a CR.
    Cr,
    /// A line that started with a dot: the dot is held back.
    Dot,
    /// A line that started with `.` CR: end of data if LF follows.
    DotCr,
    /// The end-of-data marker was seen.
    Done,
}

/// Receives a DATA body: removes the dot-stuffing and finds the end marker.
#[derive(Debug, Clone)]
pub struct DataReceiver {
    state: State,
}

impl Default for DataReceiver {
    fn default() -> Self {
        DataReceiver::new()
    }
}

impl DataReceiver {
    /// A receiver positioned just after the `DATA` command's CR LF.
    pub fn new() -> DataReceiver {
        DataReceiver {
            state: State::LineStart,
        }
    }

    /// True once the end marker has been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `input` up to and including the end marker, appending the
    /// message (unstuffed, ending with the CR LF before the final dot) to `out`.
    /// Returns how many bytes of `input` belong to the message; when the marker
    /// was found ([`DataReceiver::is_done`]) the rest is the client's next command.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> usize {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                State::Done => return i,
                State::Text => {
                    // Copy the run up to the next CR in one go.
                    let run = input[i..]
                        .iter()
                        .position(|&b| b == b'\r')
                        .unwrap_or(input.len() - i);
                    out.extend_from_slice(&input[i..i + run]);
                    i += run;
                    if i < input.len() {
                        out.push(b'\r');
                        self.state = State::Cr;
                        i += 1;
                    }
                    continue;
                }
                State::LineStart => {
                    self.state = if input[i] == b'.' {
                        State::Dot
                    } else {
                        self.byte(input[i], out)
                    };
                }
                State::Cr => {
                    out.push(input[i]);
                    self.state = match input[i] {
                        b'\n' => State::LineStart,
                        b'\r' => State::Cr,
                        _ => State::Text,
                    };
                }
                State::Dot => {
                    // The leading dot is dropped (RFC 5321 4.5.2); CR may start the end.
                    self.state = if input[i] == b'\r' {
                        State::DotCr
                    } else {
                        self.byte(input[i], out)
                    };
                }
                State::DotCr => {
                    if input[i] == b'\n' {
                        self.state = State::Done;
                        return i + 1;
                    }
                    // `.` CR then something else: a line `.\r...` with its dot removed.
                    out.push(b'\r');
                    out.push(input[i]);
                    self.state = match input[i] {
                        b'\r' => State::Cr,
                        _ => State::Text,
                    };
                }
            }
            i += 1;
        }
        i
    }

    /// Appends an ordinary byte and says which state follows it.
    fn byte(&mut self, b: u8, out: &mut Vec<u8>) -> State {
        out.push(b);
        if b == b'\r' { State::Cr } else { State::Text }
    }
}

/// Frames one BDAT chunk of a known size (RFC 3030): the bytes are taken as
/// they are, nothing inside them ends the chunk.
#[derive(Debug, Clone)]
pub struct BdatReceiver {
    remaining: u64,
}

impl BdatReceiver {
    /// A chunk of `size` bytes.
    pub fn new(size: u64) -> BdatReceiver {
        BdatReceiver { remaining: size }
    }

    /// True once every byte of the chunk has been taken.
    pub fn is_done(&self) -> bool {
        self.remaining == 0
    }

    /// Bytes still to come.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }

    /// Takes what belongs to the chunk from `input` (appended to `out`, or
    /// dropped when `out` is `None`); returns how many bytes it took.
    pub fn feed(&mut self, input: &[u8], out: Option<&mut Vec<u8>>) -> usize {
        let n = (input.len() as u64).min(self.remaining) as usize;
        if let Some(out) = out {
            out.extend_from_slice(&input[..n]);
        }
        self.remaining -= n as u64;
        n
    }
}

/// What is wrong with a message body, if anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Defects {
    /// A CR not followed by LF.
    pub bare_cr: bool,
    /// An LF not preceded by CR.
    pub bare_lf: bool,
    /// A NUL byte.
    pub nul: bool,
}

impl Defects {
    /// True if the body is clean.
    pub fn is_empty(&self) -> bool {
        !(self.bare_cr || self.bare_lf || self.nul)
    }
}

/// Checks a body as it streams past: bare CR/LF and NUL anywhere, and the
/// `Received:` headers of the header section (lines up to the first empty line).
/// Fed the unstuffed message in any number of pieces.
#[derive(Debug, Clone, Default)]
pub struct BodyCheck {
    defects: Defects,
    /// The previous byte was a CR.
    pending_cr: bool,
    /// Still in the header section.
    past_headers: bool,
    /// Bytes of the current line seen so far (only the first few matter).
    line_pos: usize,
    /// The current line so far matches `received:` (case-insensitively).
    line_matches: bool,
    received: usize,
    /// The header section as received, up to [`HEADER_CAPTURE`] bytes (for
    /// `[[flow]]` header matches).
    header: Vec<u8>,
}

const RECEIVED: &[u8] = b"received:";

/// Most bytes of the header section kept by [`BodyCheck`].
pub const HEADER_CAPTURE: usize = 64 * 1024;

impl BodyCheck {
    /// A check at the start of a message.
    pub fn new() -> BodyCheck {
        BodyCheck::default()
    }

    /// Looks at the next piece of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.pending_cr && b != b'\n' {
                self.defects.bare_cr = true;
            }
            match b {
                b'\n' if !self.pending_cr => self.defects.bare_lf = true,
                0 => self.defects.nul = true,
                _ => {}
            }
            if !self.past_headers {
                if self.header.len() < HEADER_CAPTURE {
                    self.header.push(b);
                }
                self.header_byte(b);
            }
            self.pending_cr = b == b'\r';
        }
    }

    fn header_byte(&mut self, b: u8) {
        if b == b'\n' {
            if self.line_pos == 1 && self.pending_cr {
                self.past_headers = true; // the empty line (CR LF)
            }
            self.line_pos = 0;
            return;
        }
        if self.line_pos == 0 {
            self.line_matches = true;
        }
        if self.line_matches && self.line_pos < RECEIVED.len() {
            self.line_matches = b.eq_ignore_ascii_case(&RECEIVED[self.line_pos]);
            if self.line_matches && self.line_pos + 1 == RECEIVED.len() {
                self.received += 1;
            }
        }
        self.line_pos = self.line_pos.saturating_add(1);
    }

    /// The defects found in the whole message; call after its last byte (a CR
    /// at the very end is bare).
    pub fn finish(&self) -> Defects {
        let mut d = self.defects;
        d.bare_cr |= self.pending_cr;
        d
    }

    /// `Received:` header lines seen in the header section so far.
    pub fn received_headers(&self) -> usize {
        self.received
    }

    /// The header section seen so far (at most [`HEADER_CAPTURE`] bytes).
    pub fn header_section(&self) -> &[u8] {
        &self.header
    }
}

/// The reference model of DATA, for tests and the fuzzer: the whole input at
/// once, the obvious way. `None` if the input holds no end marker; else the
/// unstuffed message and how many input bytes it took.
pub fn reference_data(input: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut s = b"\r\n".to_vec();
    s.extend_from_slice(input);
    let end = s.windows(5).position(|w| w == b"\r\n.\r\n")?;
    let raw = &s[2..end + 2]; // the message, with the CR LF before the dot
    let mut out = Vec::with_capacity(raw.len());
    let mut line_start = true;
    for (i, &b) in raw.iter().enumerate() {
        if !(line_start && b == b'.') {
            out.push(b);
        }
        line_start = b == b'\n' && i > 0 && raw[i - 1] == b'\r';
    }
    Some((out, end + 3))
}

/// The reference model of [`BodyCheck`]: defects and `Received:` count of a
/// whole message.
pub fn reference_check(msg: &[u8]) -> (Defects, usize) {
    let mut d = Defects::default();
    for (i, &b) in msg.iter().enumerate() {
        if b == b'\r' && msg.get(i + 1) != Some(&b'\n') {
            d.bare_cr = true;
        }
        if b == b'\n' && (i == 0 || msg[i - 1] != b'\r') {
            d.bare_lf = true;
        }
        if b == 0 {
            d.nul = true;
        }
    }
    let mut received = 0;
    let mut start = 0;
    loop {
        let end = msg[start..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|i| start + i);
        let line = &msg[start..end.unwrap_or(msg.len())];
        if end.is_some() && line.is_empty() {
            break; // the empty line ends the header section
        }
        if line.len() >= RECEIVED.len() && line[..RECEIVED.len()].eq_ignore_ascii_case(RECEIVED) {
            received += 1;
        }
        match end {
            Some(e) => start = e + 2,
            None => break,
        }
    }
    (d, received)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// More fake endings, and the plain ones, beside [`SMUGGLING`].
    const MORE_ENDINGS: &[&[u8]] = &[b"\r\n.\n", b"\r\n.\x00\r\n", b"\r\n..\r\n", b"\r\n.\r\n"];

    fn endings() -> impl Iterator<Item = &'static &'static [u8]> {
        SMUGGLING.iter().chain(MORE_ENDINGS)
    }

    const SMUGGLED: &[u8] = b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@example.com>\r\n\
        DATA\r\nSubject: smuggled\r\n\r\nevil\r\n";

    /// Feeds `input` split at the given cut points; returns (output, consumed, done).
    fn run_split(input: &[u8], cuts: &[usize]) -> (Vec<u8>, usize, bool) {
        let mut rx = DataReceiver::new();
        let mut out = Vec::new();
        let mut consumed = 0;
        let mut start = 0;
        for &cut in cuts.iter().chain(std::iter::once(&input.len())) {
            if rx.is_done() {
                break;
            }
            let piece = &input[start..cut];
            consumed += rx.feed(piece, &mut out);
            start = cut;
        }
        (out, consumed, rx.is_done())
    }

    fn assert_matches_reference(input: &[u8], cuts: &[usize]) {
        let (out, consumed, done) = run_split(input, cuts);
        match reference_data(input) {
            Some((want, n)) => {
                assert!(done, "{input:?} cut at {cuts:?}: should end");
                assert_eq!(consumed, n, "{input:?} cut at {cuts:?}");
                assert_eq!(out, want, "{input:?} cut at {cuts:?}");
            }
            None => {
                assert!(!done, "{input:?} cut at {cuts:?}: must not end");
                assert_eq!(consumed, input.len());
            }
        }
    }

    #[test]
    fn smuggling_sequences_at_every_single_and_double_split() {
        for ending in endings() {
            let input = [b"Subject: x\r\n\r\na", *ending, SMUGGLED, b"b\r\n.\r\n"].concat();
            assert_matches_reference(&input, &[]);
            for a in 0..=input.len() {
                assert_matches_reference(&input, &[a]);
            }
            // Every pair of cut points around the sequence (where it matters).
            let lo = 14;
            let hi = (lo + ending.len() + 3).min(input.len());
            for a in lo..=hi {
                for b in a..=hi {
                    assert_matches_reference(&input, &[a, b]);
                }
            }
            // One byte at a time.
            let every: Vec<usize> = (1..input.len()).collect();
            assert_matches_reference(&input, &every);
        }
    }

    #[test]
    fn smuggling_sequences_never_end_early() {
        for ending in endings() {
            let input = [b"a", *ending, SMUGGLED, b"b\r\n.\r\n"].concat();
            let (msg, n) = reference_data(&input).unwrap();
            if *ending == b"\r\n.\r\n" {
                assert_eq!(msg, b"a\r\n");
                continue;
            }
            assert_eq!(n, input.len(), "{ending:?} ended early");
            let (defects, _) = reference_check(&msg);
            // The only clean non-endings are the stuffed dot and the message
            // proper; every smuggling variant leaves a defect to refuse.
            if *ending != b"\r\n..\r\n" {
                assert!(!defects.is_empty(), "{ending:?} left no defect in {msg:?}");
            }
        }
    }

    #[test]
    fn unstuffing_and_plain_cases() {
        let cases: &[(&[u8], Option<&[u8]>)] = &[
            (b".\r\n", Some(b"")),
            (b"a\r\n.\r\n", Some(b"a\r\n")),
            (b"..lead\r\nx\r\n.\r\n", Some(b".lead\r\nx\r\n")),
            (b"a\r\n..\r\n.\r\n", Some(b"a\r\n.\r\n")),
            (b"a\r\n.\r\r\nb\r\n.\r\n", Some(b"a\r\n\r\r\nb\r\n")),
            (b"a\r\n.x\r\n.\r\n", Some(b"a\r\nx\r\n")),
            (b"a\r\n.\r", None),
            (b"a", None),
        ];
        for (input, want) in cases {
            let (out, _, done) = run_split(input, &[]);
            match want {
                Some(w) => {
                    assert!(done, "{input:?}");
                    assert_eq!(&out, w, "{input:?}");
                }
                None => assert!(!done, "{input:?}"),
            }
            assert_matches_reference(input, &[]);
        }
    }

    #[test]
    fn random_inputs_match_the_reference_under_random_splits() {
        let tokens: &[&[u8]] = &[b"\r", b"\n", b".", b"\0", b"a", b"Received:", b"\r\n"];
        let mut rng = crate::testkit::Random::new(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let input = rng.tokens(tokens, 15);
            let cuts = rng.cuts(input.len(), 3);
            assert_matches_reference(&input, &cuts);
            if let Some((msg, _)) = reference_data(&input) {
                let mut check = BodyCheck::new();
                for piece in msg.chunks(1 + rng.below(5)) {
                    check.feed(piece);
                }
                let (want, received) = reference_check(&msg);
                assert_eq!(check.finish(), want, "{msg:?}");
                if want.is_empty() {
                    assert_eq!(check.received_headers(), received, "{msg:?}");
                }
            }
        }
    }

    #[test]
    fn body_check_finds_defects_and_counts_received() {
        let clean = b"Received: a\r\nreceived: b\r\nRECEIVED:c\r\nX: y\r\n\r\nReceived: body\r\n";
        for size in 1..clean.len() {
            let mut c = BodyCheck::new();
            for piece in clean.chunks(size) {
                c.feed(piece);
            }
            assert!(c.finish().is_empty());
            assert_eq!(c.received_headers(), 3, "piece size {size}");
        }
        assert_eq!(reference_check(clean), (Defects::default(), 3));
        let cases: &[(&[u8], Defects)] = &[
            (
                b"a\nb\r\n",
                Defects {
                    bare_lf: true,
                    ..Default::default()
                },
            ),
            (
                b"a\rb\r\n",
                Defects {
                    bare_cr: true,
                    ..Default::default()
                },
            ),
            (
                b"a\r",
                Defects {
                    bare_cr: true,
                    ..Default::default()
                },
            ),
            (
                b"a\x00\r\n",
                Defects {
                    nul: true,
                    ..Default::default()
                },
            ),
        ];
        for (msg, want) in cases {
            let mut c = BodyCheck::new();
            c.feed(msg);
            assert_eq!(c.finish(), *want, "{msg:?}");
            assert_eq!(reference_check(msg).0, *want, "{msg:?}");
        }
        let mut c = BodyCheck::new();
        c.feed(b"Receiv");
        c.feed(b"ed: x\r\nReceived: y\r");
        c.feed(b"\n\r\n");
        assert_eq!(c.received_headers(), 2);
    }

    #[test]
    fn bdat_takes_exactly_its_size_whatever_the_bytes() {
        let input = b"ab\r\n.\r\ncdMAIL FROM:<x>\r\n";
        for split in 0..=input.len() {
            let mut rx = BdatReceiver::new(9);
            let mut out = Vec::new();
            let mut taken = rx.feed(&input[..split], Some(&mut out));
            if !rx.is_done() {
                taken += rx.feed(&input[split..], Some(&mut out));
            }
            assert!(rx.is_done());
            assert_eq!(taken, 9);
            assert_eq!(out, b"ab\r\n.\r\ncd");
        }
        let mut rx = BdatReceiver::new(u64::MAX);
        assert_eq!(rx.feed(b"xyz", None), 3);
        assert_eq!(rx.remaining(), u64::MAX - 3);
    }
}
