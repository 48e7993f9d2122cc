#!/usr/bin/env bash
# edge-bench.sh - the internet-facing edge, measured: accept throughput with
# STARTTLS on every session (breakwater and Postfix, same run, same client),
# memory with many connections held open, and memory with sessions holding
# unfinished large messages.
#
# Run from the project root after `cargo build --release`:
#   benches/edge-bench.sh
# Needs: postfix (smtp-sink, and the throwaway Postfix of ../shared/bench),
# openssl. Loopback only; everything it starts is stopped by PID.
#
# Environment (defaults): REPEATS=3 MESSAGES=3000 SESSIONS=20 SIZE=10240
#   CONNECTIONS=1000 DATA_SESSIONS=20 DATA_MB=40 OUT=/tmp/edge-bench
#   PORT=2525 SINK_PORT=2526 ADMIN_PORT=9925 SKIP_POSTFIX=0
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
B=$ROOT/../shared/bench
REPEATS=${REPEATS:-3} MESSAGES=${MESSAGES:-3000} SESSIONS=${SESSIONS:-20} SIZE=${SIZE:-10240}
CONNECTIONS=${CONNECTIONS:-1000} DATA_SESSIONS=${DATA_SESSIONS:-20} DATA_MB=${DATA_MB:-40}
OUT=${OUT:-/tmp/edge-bench} PORT=${PORT:-2525} SINK_PORT=${SINK_PORT:-2526}
ADMIN_PORT=${ADMIN_PORT:-9925} SKIP_POSTFIX=${SKIP_POSTFIX:-0}
export PORT SINK_PORT ADMIN_PORT RELAY_DOMAIN=example.test
export BWB_DIR=$OUT/bw PFB_DIR=$OUT/pf
mkdir -p "$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

cargo bench --bench edge --no-run -q 2>/dev/null || { echo "cannot build benches/edge.rs" >&2; exit 1; }
CLIENT=$(ls -t target/release/deps/edge-* 2>/dev/null | grep -v '\.d$' | head -1)
[ -x "$CLIENT" ] || { echo "edge client not built" >&2; exit 1; }

# A certificate for both relays.
[ -r "$OUT/cert.pem" ] || openssl req -x509 -newkey rsa:2048 -nodes -days 30 \
    -subj /CN=relay.bench.invalid -keyout "$OUT/key.pem" -out "$OUT/cert.pem" 2>/dev/null
chmod 600 "$OUT/key.pem"

SINK_PID=""
sink_start() {
    local u=""; [ "$(id -u)" = 0 ] && u="-u nobody"
    /usr/sbin/smtp-sink -c $u "127.0.0.1:$SINK_PORT" 1024 >/dev/null 2>&1 & SINK_PID=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT) 2>/dev/null && return 0; sleep 0.1; done
    echo "smtp-sink did not start" >&2; exit 1
}
sink_stop() { [ -n "$SINK_PID" ] && kill "$SINK_PID" 2>/dev/null; wait "$SINK_PID" 2>/dev/null; SINK_PID=""; }
trap 'sink_stop; BW_BIN=target/release/breakwater $B/breakwater-relay.sh stop; $B/postfix-relay.sh stop >/dev/null 2>&1' EXIT

BW_TLS="[smtp.tls]
cert = \"$OUT/cert.pem\"
key = \"$OUT/key.pem\""
PF_TLS="smtpd_tls_security_level=may smtpd_tls_cert_file=$OUT/cert.pem smtpd_tls_key_file=$OUT/key.pem"

# memory_kib PIDS... -> "rss_kib pss_kib" summed over the processes
memory_kib() {
    local rss=0 pss=0 p
    for p in "$@"; do
        rss=$((rss + $(awk '/^VmRSS:/{print $2}' /proc/$p/status 2>/dev/null || echo 0)))
        pss=$((pss + $(awk '/^Pss:/{s+=$2} END{print s+0}' /proc/$p/smaps_rollup 2>/dev/null || echo 0)))
    done
    echo "$rss $pss"
}

median() { sort -n | awk '{a[NR]=$1} END{print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

relay() {   # relay NAME start|stop|pids
    case $1 in
    breakwater) BW_BIN=target/release/breakwater BW_EXTRA="$BW_TLS" "$B/breakwater-relay.sh" "$2" ;;
    postfix) PF_EXTRA="$PF_TLS" "$B/postfix-relay.sh" "$2" ;;
    esac
}

tls_run() {   # tls_run NAME MODE -> msg/s
    relay "$1" start >/dev/null || { echo "$1 did not start" >&2; exit 1; }
    local line; line=$("$CLIENT" tls "127.0.0.1:$PORT" "$MESSAGES" "$SESSIONS" "$SIZE" $2)
    relay "$1" stop >/dev/null
    log "$1 $2: $line (messages seconds msg/s errors)"
    echo "$line" | awk '{print $3}'
}

sink_start
RELAYS="breakwater"; [ "$SKIP_POSTFIX" = 1 ] || RELAYS="breakwater postfix"
: > "$OUT/tls.tsv"
for r in $(seq "$REPEATS"); do
    for name in $RELAYS; do
        for mode in tls plain; do
            echo "$name $mode $(tls_run "$name" "$mode")" >> "$OUT/tls.tsv"
        done
    done
done

# Memory: breakwater with CONNECTIONS sessions open, then with DATA_SESSIONS
# sessions each holding DATA_MB of an unfinished message.
mkdir -p "$OUT/mem"
cat > "$OUT/mem/breakwater.toml" <<TOML
hostname = "relay.bench.invalid"
[smtp]
listen = ["127.0.0.1:$PORT"]
max_message_size = 104857600
max_connections_per_ip = 2000
[journal]
path = "$OUT/mem/journal"
[relay]
domains = ["example.test"]
[[backend]]
name = "sink"
address = "127.0.0.1:$SINK_PORT"
[admin]
listen = "127.0.0.1:$ADMIN_PORT"
TOML
target/release/breakwater run --config "$OUT/mem/breakwater.toml" 2> "$OUT/mem/breakwater.log" &
PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.1; done
sleep 1
idle=$(memory_kib "$PID")
"$CLIENT" hold "127.0.0.1:$PORT" "$CONNECTIONS" 8 > "$OUT/hold.out" &
HOLD=$!
for _ in $(seq 200); do grep -q held "$OUT/hold.out" 2>/dev/null && break; sleep 0.1; done
sleep 1
held=$(memory_kib "$PID"); held_n=$(awk '{print $2}' "$OUT/hold.out")
wait $HOLD
"$CLIENT" hold-data "127.0.0.1:$PORT" "$DATA_SESSIONS" "$DATA_MB" 6 > "$OUT/data.out" &
HOLD=$!
peak="0 0"
for _ in $(seq 1200); do
    m=$(memory_kib "$PID"); [ "${m%% *}" -gt "${peak%% *}" ] && peak=$m
    grep -q sent "$OUT/data.out" 2>/dev/null && break; sleep 0.1
done
sleep 1; m=$(memory_kib "$PID"); [ "${m%% *}" -gt "${peak%% *}" ] && peak=$m
wait $HOLD
kill -TERM "$PID"; wait "$PID" 2>/dev/null
sink_stop

{
    echo "TLS accept throughput, msg/s (median of $REPEATS; $MESSAGES x $SIZE B, $SESSIONS sessions, one message per connection)"
    for name in $RELAYS; do
        for mode in tls plain; do
            printf '  %-10s %-5s %s\n' "$name" "$mode" \
                "$(awk -v n="$name" -v m="$mode" '$1==n && $2==m {print $3}' "$OUT/tls.tsv" | median)"
        done
    done
    echo "breakwater memory, KiB (rss pss): idle $idle; $held_n connections held: $held;"
    echo "  $DATA_SESSIONS sessions x $DATA_MB MB unfinished DATA, peak: $peak"
} | tee "$OUT/summary.txt"
