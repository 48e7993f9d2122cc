//! What the fuzz targets share: how an input says where to cut its payload.
//!
//! Every target's input starts with a small header that the fuzzer mutates
//! like the rest: one byte `h` whose low four bits are the number of cut bytes
//! that follow, whose bit `0x10` means "one byte at a time" instead, and whose
//! bits `0x20`-`0x80` are flags for the target; then the cut bytes, each a
//! fraction `b / 255` of the payload's length (so a cut keeps its meaning when
//! the payload grows or shrinks); then the payload.

/// Bit of the header byte: feed the payload one byte at a time.
const BYTEWISE: u8 = 0x10;

/// How a payload is cut into pieces.
#[derive(Debug, Clone)]
pub struct Cuts {
    fractions: Vec<u8>,
    bytewise: bool,
    /// The header's target-specific bits (`0x20`, `0x40`, `0x80`).
    pub flags: u8,
}

impl Cuts {
    /// Splits `data` into its cut header and the payload.
    pub fn parse(data: &[u8]) -> (Cuts, &[u8]) {
        let Some((&h, rest)) = data.split_first() else {
            return (Cuts::none(), data);
        };
        let n = usize::from(h & 0x0f).min(rest.len());
        let cuts = Cuts {
            fractions: rest[..n].to_vec(),
            bytewise: h & BYTEWISE != 0,
            flags: h & 0xe0,
        };
        (cuts, &rest[n..])
    }

    /// No cuts at all: one piece.
    pub fn none() -> Cuts {
        Cuts {
            fractions: Vec::new(),
            bytewise: false,
            flags: 0,
        }
    }

    /// The cut points for a payload of `len` bytes, ascending (repeats give
    /// empty pieces, which receivers must take too).
    pub fn points(&self, len: usize) -> Vec<usize> {
        if self.bytewise {
            return (1..len).collect();
        }
        let mut p: Vec<usize> = self
            .fractions
            .iter()
            .map(|&b| len * usize::from(b) / 255)
            .collect();
        p.sort_unstable();
        p
    }

    /// `bytes` cut into pieces at [`Cuts::points`] of its length.
    pub fn pieces<'a>(&self, bytes: &'a [u8]) -> Vec<&'a [u8]> {
        let mut start = 0;
        let mut out = Vec::new();
        for p in self.points(bytes.len()) {
            out.push(&bytes[start..p]);
            start = p;
        }
        out.push(&bytes[start..]);
        out
    }
}

/// Overlapping occurrences of `needle` in `haystack`, ASCII case-insensitive.
pub fn count(haystack: &[u8], needle: &[u8]) -> usize {
    haystack
        .windows(needle.len())
        .filter(|w| w.eq_ignore_ascii_case(needle))
        .count()
}
