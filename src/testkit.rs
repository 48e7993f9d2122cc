//! Helpers for the unit tests: a seeded generator of inputs made of tokens
//! (the bytes that matter to a protocol, in random order) and of split points.

/// xorshift64: deterministic, seeded, good enough to shuffle test inputs.
pub struct Random(u64);

impl Random {
    /// A generator starting from `seed` (not 0).
    pub fn new(seed: u64) -> Random {
        Random(seed | 1)
    }

    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// A number below `n` (which must not be 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// Up to `max_tokens` of `tokens` strung together.
    pub fn tokens(&mut self, tokens: &[&[u8]], max_tokens: usize) -> Vec<u8> {
        let n = self.below(max_tokens + 1);
        (0..n)
            .flat_map(|_| tokens[self.below(tokens.len())].to_vec())
            .collect()
    }

    /// Up to `max_cuts` sorted split points into an input of `len` bytes.
    pub fn cuts(&mut self, len: usize, max_cuts: usize) -> Vec<usize> {
        let n = self.below(max_cuts + 1);
        let mut cuts: Vec<usize> = (0..n).map(|_| self.below(len + 1)).collect();
        cuts.sort_unstable();
        cuts
    }
}
