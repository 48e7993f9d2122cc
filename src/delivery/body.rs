//! Message bodies on the way out, sans-IO: the bytes to send after `DATA` (dot
//! stuffing, a final CR LF, the `.` CR LF end marker) or in `BDAT` chunks (the
//! bytes as they are), with over-long lines folded in both modes.
//!
//! Folding follows Postfix's `smtp_line_length_limit` (default 998), which
//! postconf(5) describes as "the maximal length of message header and body
//! lines that Postfix will send via SMTP. This limit does not include the
//! <CR><LF> at the end of each line. Longer lines are broken by inserting
//! <CR><LF><SPACE>, to minimize the damage to MIME formatted mail"
//! (<https://www.postfix.org/postconf.5.html#smtp_line_length_limit>). A long
//! header line so becomes a folded header (RFC 5322 2.2.3). The inserted space
//! counts on its continuation line; the dot doubled for transparency does not
//! (RFC 5321 4.5.3.1.6: 1000 octets with CR LF, "not counting the leading dot
//! duplicated for transparency").
//!
//! A line is what lies between two CR LF (or the start or end of the message):
//! a lone CR or LF is an ordinary byte of its line. The [`Encoder`] is fed the
//! stored message in pieces of any size; its output does not depend on where
//! the pieces were cut (tested against [`reference_encode`], which takes the
//! whole message at once).

/// How the message goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// After `DATA`: a `.` starting a line is doubled (RFC 5321 4.5.2), the
    /// message is made to end with CR LF, and `.` CR LF follows.
    Data,
    /// In `BDAT` chunks (RFC 3030): the bytes as they are, nothing added at the end.
    Bdat,
}

/// Turns a stored message into the bytes to send, piece by piece. Holds back at
/// most one byte (a CR that may start a CR LF) between calls.
#[derive(Debug, Clone)]
pub struct Encoder {
    mode: Mode,
    /// Longest line sent, CR LF not counted; 0 = no folding.
    limit: usize,
    /// Bytes of the current output line so far (a continuation's space
    /// included, a stuffed dot not); 0 only at the start of a message line.
    col: usize,
    /// The last input byte was a CR, not yet written.
    pending_cr: bool,
}

impl Encoder {
    /// An encoder at the start of a message. `limit` is the longest line to
    /// send (CR LF not counted), 0 for no folding; a limit of 1 is taken as 2,
    /// since a continuation line needs room for its space and one byte.
    pub fn new(mode: Mode, limit: usize) -> Encoder {
        Encoder {
            mode,
            limit: effective_limit(limit),
            col: 0,
            pending_cr: false,
        }
    }

    /// Appends to `out` what `input`, the next piece of the message, turns into.
    pub fn encode(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while let Some((&b, rest)) = input.split_first() {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    out.extend_from_slice(b"\r\n");
                    self.col = 0;
                    input = rest;
                } else {
                    // A CR on its own is text; `b` is looked at again.
                    self.text(b'\r', out);
                }
                continue;
            }
            if b == b'\r' {
                self.pending_cr = true;
                input = rest;
                continue;
            }
            let room = if self.limit == 0 {
                usize::MAX
            } else {
                self.limit - self.col
            };
            if self.col == 0 || room == 0 {
                // A line start (maybe a dot to stuff) or a fold: one byte alone.
                self.text(b, out);
                input = rest;
                continue;
            }
            // The run up to the next CR that still fits the line, in one copy.
            let window = &input[..room.min(input.len())];
            let n = window
                .iter()
                .position(|&c| c == b'\r')
                .unwrap_or(window.len());
            out.extend_from_slice(&input[..n]);
            self.col += n;
            input = &input[n..];
        }
    }

    /// Appends the end of the message to `out`: a held-back CR, and for DATA a
    /// CR LF if the message does not end with one, then `.` CR LF. The encoder
    /// is then at the start of a new message.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if std::mem::take(&mut self.pending_cr) {
            self.text(b'\r', out);
        }
        if self.mode == Mode::Data {
            if self.col != 0 {
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b".\r\n");
        }
        self.col = 0;
    }

    /// Writes one byte of line text: folds first if the line is full, stuffs a
    /// dot at the start of a line in DATA mode.
    fn text(&mut self, b: u8, out: &mut Vec<u8>) {
        if self.limit != 0 && self.col == self.limit {
            out.extend_from_slice(b"\r\n ");
            self.col = 1;
        }
        if self.col == 0 && b == b'.' && self.mode == Mode::Data {
            out.push(b'.');
        }
        out.push(b);
        self.col = self.col.saturating_add(1);
    }
}

fn effective_limit(limit: usize) -> usize {
    if limit == 1 { 2 } else { limit }
}

/// The reference model of [`Encoder`], for tests and the fuzzer: the whole
/// message at once, the obvious way (split at CR LF, fold each line, stuff,
/// join).
pub fn reference_encode(mode: Mode, limit: usize, message: &[u8]) -> Vec<u8> {
    let limit = effective_limit(limit);
    let mut lines: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i + 1 < message.len() {
        if &message[i..i + 2] == b"\r\n" {
            lines.push(&message[start..i]);
            i += 2;
            start = i;
        } else {
            i += 1;
        }
    }
    let tail = &message[start..];
    let mut out = Vec::with_capacity(message.len() + 16);
    let n = lines.len();
    for (k, line) in lines.into_iter().chain(std::iter::once(tail)).enumerate() {
        let last = k == n;
        if last && line.is_empty() {
            break;
        }
        if mode == Mode::Data && line.first() == Some(&b'.') {
            out.push(b'.');
        }
        fold(line, limit, &mut out);
        if !last || mode == Mode::Data {
            out.extend_from_slice(b"\r\n");
        }
    }
    if mode == Mode::Data {
        out.extend_from_slice(b".\r\n");
    }
    out
}

/// One line, folded: `limit` bytes, then continuation lines of a space and
/// `limit - 1` bytes each.
fn fold(line: &[u8], limit: usize, out: &mut Vec<u8>) {
    if limit == 0 || line.len() <= limit {
        out.extend_from_slice(line);
        return;
    }
    out.extend_from_slice(&line[..limit]);
    for piece in line[limit..].chunks(limit - 1) {
        out.extend_from_slice(b"\r\n ");
        out.extend_from_slice(piece);
    }
}

#[cfg(test)]
mod tests;
