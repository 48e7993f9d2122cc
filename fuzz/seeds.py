#!/usr/bin/env python3
"""Writes the seed corpus: fuzz/corpus/<target>/seed-<name>.

Run from anywhere: python3 fuzz/seeds.py. The seeds are committed; libFuzzer
adds what it finds next to them (ignored by git). Every input starts with the
cut header of fuzz/src/lib.rs: a byte h (low 4 bits: how many cut bytes follow;
0x10: one byte at a time; 0x20/0x40/0x80: target flags), the cut bytes (each
a fraction b/255 of the payload length), then the payload.
"""
import os

HERE = os.path.dirname(os.path.abspath(__file__))
BYTEWISE, PREGREET, TLS = 0x10, 0x20, 0x40

# Every smuggling sequence of the issue, plus the real end and a stuffed dot.
ENDINGS = {
    "lf-dot-lf": b"\n.\n",
    "lf-dot-crlf": b"\n.\r\n",
    "cr-dot-cr": b"\r.\r",
    "crlf-dot-cr": b"\r\n.\r",
    "cr-dot-crlf": b"\r.\r\n",
    "lf-dot-cr-crlf": b"\n.\r\r\n",
    "crlf-dot-cr-crlf": b"\r\n.\r\r\n",
    "cr-crlf-dot-cr-crlf": b"\r\r\n.\r\r\n",
    "crlf-nul-dot-crlf": b"\r\n\x00.\r\n",
    "crlf-dot-crlf": b"\r\n.\r\n",
    "crlf-dotdot-crlf": b"\r\n..\r\n",
}

SMUGGLED = (b"MAIL FROM:<evil@client.test>\r\nRCPT TO:<victim@example.com>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n")

EHLO = b"EHLO client.test\r\n"
ENVELOPE = (b"MAIL FROM:<alice@client.test> SIZE=120 BODY=8BITMIME\r\n"
            b"RCPT TO:<bob@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.com\r\n")
MESSAGE = (b"Received: from a by b; Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           b"Subject: hello\r\n\r\n..a stuffed dot\r\nbody\r\n")


def header(cuts=(), flags=0):
    return bytes([len(cuts) | flags]) + bytes(cuts)


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


def session():
    t = "session"
    data_session = EHLO + ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\nQUIT\r\n"
    write(t, "data", header() + data_session)
    write(t, "data-cut", header((40, 90, 91, 200, 250)) + data_session)
    write(t, "data-bytewise", header(flags=BYTEWISE) + data_session)
    write(t, "pipelined-two", header((128,)) + EHLO + (ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n") * 2
          + b"RSET\r\nNOOP\r\nQUIT\r\n")
    write(t, "helo", header() + b"HELO client.test\r\nMAIL FROM:<>\r\nRCPT TO:<postmaster>\r\n"
          b"DATA\r\nSubject: x\r\n\r\n.\r\nQUIT\r\n")
    bdat = (EHLO + ENVELOPE + b"BDAT 20\r\nSubject: chunked\r\n\r\nBDAT 9 LAST\r\nbody\r\n.\r\n"
            b"MAIL FROM:<a@client.test>\r\nRCPT TO:<b@example.com>\r\nBDAT 0 LAST\r\nQUIT\r\n")
    write(t, "bdat", header() + bdat)
    write(t, "bdat-cut", header((60, 130, 131, 132, 180)) + bdat)
    tls = (EHLO + b"STARTTLS\r\n" + EHLO + ENVELOPE + b"DATA\r\n" + MESSAGE + b".\r\n"
           b"STARTTLS\r\nQUIT\r\n")
    write(t, "starttls", header(flags=TLS) + tls)
    write(t, "starttls-cut", header((30, 60, 200), flags=TLS) + tls)
    write(t, "starttls-injection", header() + EHLO + b"STARTTLS\r\n" + ENVELOPE + b"QUIT\r\n")
    write(t, "pregreet", header((20,), flags=PREGREET) + EHLO + b"QUIT\r\n")
    write(t, "errors", header() + b"MAIL FROM:<a@b>\r\nEHLO x\r\nRCPT TO:<a@example.com>\r\nDATA\r\n"
          b"MAIL FROM:<a@b> BODY=BINARYMIME\r\nMAIL FROM:<a@b> SIZE=1 SIZE=2\r\n"
          b"MAIL FROM:<a@b> SIZE=99999999999999999999\r\nMAIL FROM:<a@b>\r\n"
          b"RCPT TO:<a@other.test>\r\nRCPT TO:<@hop:a@example.com>\r\nRCPT TO:<a%b@example.com>\r\n"
          b"RCPT TO:<a@[127.0.0.1]>\r\nRCPT TO:<1@example.com>\r\nRCPT TO:<2@example.com>\r\n"
          b"RCPT TO:<3@example.com>\r\nRCPT TO:<4@example.com>\r\nRCPT TO:<5@example.com>\r\n"
          b"RCPT TO:<6@example.com>\r\nBDAT 5000\r\nVRFY a\r\nHELP\r\nXYZZY\r\nLHLO x\r\n"
          + b"A" * 4100 + b"\r\nQUIT\r\n")
    write(t, "loop-and-defects", header() + EHLO + ENVELOPE + b"DATA\r\n"
          + b"Received: 1\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n\r\nx\r\n.\r\n"
          + ENVELOPE + b"DATA\r\nbare\nlf\r\n.\r\n" + ENVELOPE + b"DATA\r\nnul\x00\r\n.\r\n"
          + ENVELOPE + b"DATA\r\n" + b"x" * 5000 + b"\r\n.\r\nQUIT\r\n")
    for name, ending in ENDINGS.items():
        body = b"Subject: x\r\n\r\na" + ending + SMUGGLED + b"b\r\n.\r\nQUIT\r\n"
        payload = EHLO + ENVELOPE + b"DATA\r\n" + body
        at = len(EHLO + ENVELOPE + b"DATA\r\n") + 16
        cut = at * 255 // len(payload)
        write(t, "smuggle-" + name, header() + payload)
        write(t, "smuggle-cut-" + name, header((cut, cut + 1)) + payload)
        bdat_payload = (EHLO + ENVELOPE + b"BDAT %d LAST\r\n" % len(body[:-len(b"QUIT\r\n")])
                        + body)
        write(t, "smuggle-bdat-" + name, header() + bdat_payload)


def data_receiver():
    t = "data_receiver"
    write(t, "message", header() + MESSAGE + b".\r\nMAIL FROM:<next@client.test>\r\n")
    write(t, "message-bytewise", header(flags=BYTEWISE) + MESSAGE + b".\r\n")
    write(t, "empty", header() + b".\r\n")
    write(t, "unterminated", header((100,)) + MESSAGE + b".\r")
    for name, ending in ENDINGS.items():
        body = b"Subject: x\r\n\r\na" + ending + SMUGGLED + b"b\r\n.\r\n"
        write(t, name, header() + body)
        write(t, "cut-" + name, header((60, 61, 62, 63)) + body)
        write(t, "bytewise-" + name, header(flags=BYTEWISE) + body)


def bdat_receiver():
    t = "bdat_receiver"
    stream = MESSAGE + b".\r\n"
    write(t, "one", header() + bytes([0, len(stream)]) + stream)
    write(t, "three-cut", header((10, 50, 51, 200)) + bytes([2, 20, 0, len(stream) - 20]) + stream)
    write(t, "bytewise", header(flags=BYTEWISE) + bytes([1, 30, 100]) + stream)
    write(t, "short", header((128,)) + bytes([1, 40, 250]) + stream)
    write(t, "rest", header((77,)) + bytes([1, 5, 255]) + stream)
    for name, ending in ENDINGS.items():
        body = b"Subject: x\r\n\r\na" + ending + SMUGGLED
        write(t, name, header((90, 91)) + bytes([2, 16, 3, len(body) - 19]) + body)


def command_parser():
    t = "command_parser"
    lines = [
        EHLO, b"HELO client.test\r\n", b"LHLO x\r\n", ENVELOPE,
        b"MAIL FROM:<\"quoted>local\"@client.test> SMTPUTF8 RET=HDRS ENVID=abc\r\n",
        b"MAIL FROM:<a@b> BY=120;R HOLDFOR=10 MT-PRIORITY=3 AUTH=<>\r\n",
        b"MAIL FROM:<a@b> SIZE=99999999999999999999999 BODY=BINARYMIME\r\n",
        b"MAIL FROM:<j\xc3\xb6rg@client.test> SMTPUTF8\r\n", b"MAIL FROM:<>\r\n",
        b"RCPT TO:<@hop1,@hop2:a@example.com>\r\n", b"RCPT TO:<a@[192.0.2.1]>\r\n",
        b"RCPT TO:<a@[IPv6:2001:db8::1]>\r\n", b"RCPT TO:<postmaster>\r\n",
        b"RCPT TO:<\"a@b\"@example.com> NOTIFY=NEVER NOTIFY=NEVER\r\n",
        b"BDAT 100 LAST\r\n", b"bdat 0\r\n", b"BDAT 99999999999999999999 LAST\r\n",
        b"BDAT -1\r\n", b"BDAT 10 FIRST\r\n", b"DATA\r\n", b"RSET\r\n", b"NOOP x\r\n",
        b"VRFY a\r\n", b"EXPN a\r\n", b"HELP DATA\r\n", b"STARTTLS\r\n", b"QUIT\r\n",
        b"AUTH PLAIN AGFAYg==\r\n", b"ETRN example.com\r\n", b"BURL imap://x LAST\r\n",
        b"EHLO a\rb\r\n", b"EHLO a\x00b\n", b"MAIL FROM:<a@b>\n",
    ]
    for i, line in enumerate(lines):
        write(t, "line-%02d" % i, line)
    write(t, "all", b"".join(lines))


def outbound_encoder():
    t = "outbound_encoder"
    # payload: a limit selector byte, then the stored message
    long_line = b"x" * 2000
    messages = {
        "plain": MESSAGE,
        "leading-dots": b".\r\n..\r\n.x\r\n",
        "long-line": b"Subject: long\r\n\r\n" + long_line + b"\r\n",
        "long-header": b"X-Long: " + b"y" * 1500 + b"\r\n\r\nbody\r\n",
        "no-final-crlf": b"Subject: bdat\r\n\r\nno end",
        "lone-cr-lf": b"a\rb\nc\r\n",
        "empty": b"",
    }
    for name, msg in messages.items():
        for k, limit in enumerate((0, 6, 5)):  # off, 998, 78
            write(t, "%s-%d" % (name, k), header((128,)) + bytes([limit]) + msg)


if __name__ == "__main__":
    outbound_encoder()
    session()
    data_receiver()
    bdat_receiver()
    command_parser()
