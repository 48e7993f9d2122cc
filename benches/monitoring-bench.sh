#!/usr/bin/env bash
# monitoring-bench.sh - what "knowing when mail stops" costs at the edge (issue 9):
# accept throughput and relay CPU per message with 20 [[flow]]s and [auth] on
# (SPF for MAIL FROM and HELO, DKIM, DMARC against a DNS server on loopback),
# against both off, and Postfix, in the same run.
#
#   OFF   : breakwater-relay.sh's config (DESIGN.md's defaults)
#   ON    : the same + 20 [[flow]]s (envelope, recipient and Subject-regex
#           matchers; one matches the load's sender) + [auth] enabled with
#           resolver = the loopback DNS server (examples/test_dns.rs), which
#           publishes SPF for the sender's domain and the HELO name, and DMARC
#   POSTFIX: the throwaway Postfix of ../shared/bench (no milters)
# Each is ../shared/bench/relay-bench.sh SCENARIOS=normal (accept throughput,
# end to end, relay CPU ms/msg, peak memory), REPEATS times; the rounds go
# OFF ON POSTFIX OFF ON, so both modes see the machine at two moments.
#
# Run from the project root after `cargo build --release --example test_dns`
# (and `cargo build --release`):
#   benches/monitoring-bench.sh
#   MESSAGES=5000 REPEATS=1 SKIP_POSTFIX=1 benches/monitoring-bench.sh   # a quick try
# Needs: postfix (smtp-source, smtp-sink; "No configuration"). Loopback only;
# everything it starts is stopped by PID (trap).
#
# Environment (defaults): MESSAGES=20000 SESSIONS=20 SIZE=10240 REPEATS=3
#   OUT=/tmp/monitoring-bench PORT=2525 SINK_PORT=2526 ADMIN_PORT=9925 DNS_PORT=5391
#   ROUNDS="off on postfix off on" SKIP_POSTFIX=0
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
B=$ROOT/../shared/bench
MESSAGES=${MESSAGES:-20000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-10240} REPEATS=${REPEATS:-3}
OUT=${OUT:-/tmp/monitoring-bench} PORT=${PORT:-2525} SINK_PORT=${SINK_PORT:-2526}
ADMIN_PORT=${ADMIN_PORT:-9925} DNS_PORT=${DNS_PORT:-5391}
ROUNDS=${ROUNDS:-off on postfix off on} SKIP_POSTFIX=${SKIP_POSTFIX:-0}
export PORT SINK_PORT ADMIN_PORT MESSAGES SESSIONS SIZE REPEATS RELAY_DOMAIN=example.test
export SCENARIOS=normal BWB_DIR=$OUT/bw PFB_DIR=$OUT/pf BW_BIN=target/release/breakwater
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

DNS_BIN=target/release/examples/test_dns
[ -x "$DNS_BIN" ] && [ -x "$BW_BIN" ] || {
    echo "build first: cargo build --release && cargo build --release --example test_dns" >&2
    exit 1
}

# relay-bench.sh's load: FROM=sender@client.test HELO=client.test from 127.0.0.1.
cat > "$OUT/zone.toml" <<TOML
listen = "127.0.0.1:$DNS_PORT"
seconds = 7200
[[record]]
name = "client.test"
type = "TXT"
value = "v=spf1 ip4:127.0.0.1 -all"
[[record]]
name = "_dmarc.client.test"
type = "TXT"
value = "v=DMARC1; p=reject"
[[record]]
name = "client.test"
type = "A"
value = "127.0.0.1"
TOML

DNS_PID=""
dns_stop() { [ -n "$DNS_PID" ] && kill "$DNS_PID" 2>/dev/null; wait "$DNS_PID" 2>/dev/null; DNS_PID=""; }
trap 'dns_stop; $B/breakwater-relay.sh stop >/dev/null 2>&1; $B/postfix-relay.sh stop >/dev/null 2>&1' EXIT
"$DNS_BIN" "$OUT/zone.toml" > "$OUT/dns.log" 2>&1 & DNS_PID=$!
for _ in $(seq 50); do grep -q "listening" "$OUT/dns.log" 2>/dev/null && break; sleep 0.1; done
grep -q "listening" "$OUT/dns.log" || { echo "test_dns did not start: $(cat "$OUT/dns.log")" >&2; exit 1; }

# 20 flows: 8 on the sender (one matches the load), 6 on recipients, 6 on a
# Subject regex (each message's header section is searched).
ON_EXTRA="[auth]
enabled = true
dmarc_reject = true
dns_timeout = \"2s\"
resolver = \"127.0.0.1:$DNS_PORT\"
"
for i in $(seq 1 7); do
    ON_EXTRA+="[[flow]]
name = \"sender-$i\"
from = \"*@system$i.example.net\"
max_silence = \"2h\"
"
done
ON_EXTRA+="[[flow]]
name = \"load\"
from = \"*@client.test\"
max_silence = \"2h\"
"
for i in $(seq 1 6); do
    ON_EXTRA+="[[flow]]
name = \"rcpt-$i\"
to = [\"audit$i@example.test\", \"*@dept$i.example.test\"]
max_silence = \"1d\"
"
done
for i in $(seq 1 6); do
    ON_EXTRA+="[[flow]]
name = \"subject-$i\"
header = { name = \"Subject\", regex = \"^\\\\[(AUDIT|ALERT)-$i\\\\] .*(failed|succeeded)\" }
max_silence = \"4h\"
"
done
printf '%s' "$ON_EXTRA" > "$OUT/on-extra.toml"

n=0
for mode in $ROUNDS; do
    n=$((n + 1))
    case $mode in
    off) export BW_EXTRA="" RELAY_CTL=$B/breakwater-relay.sh ;;
    on) export BW_EXTRA="$ON_EXTRA" RELAY_CTL=$B/breakwater-relay.sh ;;
    postfix)
        [ "$SKIP_POSTFIX" = 1 ] && continue
        export BW_EXTRA="" RELAY_CTL=$B/postfix-relay.sh ;;
    *) echo "unknown round $mode" >&2; exit 1 ;;
    esac
    rm -rf "$BWB_DIR"
    log "round $n: $mode"
    OUT_RUN=$OUT/$n-$mode
    keep=0; [ "$mode" = on ] && keep=1
    OUT=$OUT_RUN LABEL=$mode KEEP_RELAY=$keep "$B/relay-bench.sh" > "$OUT_RUN.log" 2>&1 || log "round $n ($mode) failed: see $OUT_RUN.log"
    if [ "$mode" = on ]; then
        # The flows and the header really were there.
        curl -s "http://127.0.0.1:$ADMIN_PORT/metrics" > "$OUT_RUN.metrics" 2>/dev/null || true
    fi
    $B/breakwater-relay.sh stop >/dev/null 2>&1
    $B/postfix-relay.sh stop >/dev/null 2>&1
done

{
    echo "# monitoring-bench $(date -u +%FT%TZ) commit $(git rev-parse --short HEAD)"
    echo "# MESSAGES=$MESSAGES SESSIONS=$SESSIONS SIZE=$SIZE REPEATS=$REPEATS"
    for f in "$OUT"/[0-9]*-*/summary.txt; do
        [ -r "$f" ] || continue
        echo "## $(basename "$(dirname "$f")")"
        grep -E "accept|e2e|end.to.end|cpu|rss|pss" "$f"
    done
} | tee "$OUT/summary.txt"
