#!/usr/bin/env bash
# ops-bench.sh - the admin API and metrics with a large queue (issue 7):
#
#   A  accept N1 messages, no scraping                      -> msg/s
#   B  accept N1 messages while GET /metrics runs every 0.1 s -> msg/s
#   A  again (A, B, A: the spread of the two A runs is the noise)
#   fill the queue up to TOTAL messages, then at TOTAL queued:
#      latency (min/median/max of LAT_REPEATS) of GET /metrics, GET /api/queue?limit=100
#      (first page), GET /api/queue?limit=100&state=held (a filter that matches
#      nothing: the worst case, it scans up to the API's bound), GET /api/status,
#      `breakwater queue list --limit 5` and `queue list --state held --limit 0` (the
#      CLI follows the cursor through the whole queue); breakwater_queue_depth checked
#   peak memory (VmHWM, VmRSS) of the relay with TOTAL queued
#   restart recovery: SIGTERM, then `run` again on the same journal: time from spawn
#      to the SMTP port accepting TCP (it is bound before the journal is read), to
#      the 220 greeting (SMTP served) and to /readyz 200; VmHWM after recovery
#
# The only backend is an address where nothing listens, so every message stays
# queued (the circuit goes down after the first failed deliveries; retry = 1h).
#
# Run from the project root after `cargo build --release`:
#   benches/ops-bench.sh
# Needs: postfix's smtp-source (apt-get install postfix, "No configuration"), curl.
# Loopback (127.0.0.1) only; everything it starts is stopped by PID. $OUT is left in
# place (the journal can be inspected); a new run starts from an empty journal.
#
# Environment (defaults):
#   OUT=/tmp/ops-bench       config, journal, logs, summary.txt
#   N1=20000                 messages in each of the phases A, B, A
#   TOTAL=100000             messages queued for the measurements
#   SIZE=1024                smtp-source -l: body bytes per message
#   SESSIONS=20              smtp-source -s: parallel sessions (one message per connection)
#   SCRAPE_INTERVAL=0.1      seconds between /metrics scrapes in phase B
#   SCRAPE_MODE=fork         fork: `curl` per scrape (new connection each time);
#                            keepalive: one curl --rate, one connection (like Prometheus)
#   ROUNDS=1                 phases run A (B A) x ROUNDS; more rounds, less noise
#   LAT_REPEATS=20           requests per latency figure
#   PORT=2725 ADMIN_PORT=9927 DEAD_PORT=2726 (nothing may listen on DEAD_PORT)
#   BW_BIN=target/release/breakwater   SMTP_SOURCE=/usr/sbin/smtp-source
#   SEND_TIMEOUT=1800 START_TIMEOUT=120 STOP_TIMEOUT=60   seconds, every wait is bounded
set -u
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-/tmp/ops-bench}
N1=${N1:-20000}
TOTAL=${TOTAL:-100000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-20}
SCRAPE_INTERVAL=${SCRAPE_INTERVAL:-0.1}
SCRAPE_MODE=${SCRAPE_MODE:-fork}
ROUNDS=${ROUNDS:-1}
LAT_REPEATS=${LAT_REPEATS:-20}
PORT=${PORT:-2725}
ADMIN_PORT=${ADMIN_PORT:-9927}
DEAD_PORT=${DEAD_PORT:-2726}
BW_BIN=${BW_BIN:-target/release/breakwater}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SEND_TIMEOUT=${SEND_TIMEOUT:-1800}
START_TIMEOUT=${START_TIMEOUT:-120}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
ADMIN=http://127.0.0.1:$ADMIN_PORT

die() { echo "ops-bench: $*" >&2; exit 1; }
[ -x "$BW_BIN" ] || die "no binary at $BW_BIN: run cargo build --release first"
"$BW_BIN" queue --help 2>&1 | grep -qw list || die "$BW_BIN has no 'queue list': rebuild (cargo build --release)"
[ -x "$SMTP_SOURCE" ] || die "no smtp-source at $SMTP_SOURCE (apt-get install postfix)"
command -v curl >/dev/null || die "curl is needed"
BW_BIN=$(readlink -f "$BW_BIN")

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT" "$ADMIN_PORT" "$DEAD_PORT"; do
    listening "$p" && die "something already listens on 127.0.0.1:$p (set PORT/ADMIN_PORT/DEAD_PORT)"
done

mkdir -p "$OUT" || exit 1
CONF=$OUT/breakwater.toml
RLOG=$OUT/breakwater.log
BLOG=$OUT/bench.log
SUMMARY=$OUT/summary.txt
rm -rf "$OUT/journal"   # a fresh queue every run (everything in it is recreated below)
: > "$BLOG"; : > "$RLOG"

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$BLOG" >&2; }
now() { echo "${EPOCHREALTIME/,/.}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
# fuzzing: "no", or the names of the processes `pgrep -f fuzz` finds (a fuzz target
# such as "session", or "rustc" building with cfg(fuzzing)), plus the 1-min load
fuzzing() {
    local p n
    p=$(pgrep -f fuzz | tr '\n' ,); p=${p%,}
    if [ -z "$p" ]; then n=no; else n=$(ps -o comm= -p "$p" 2>/dev/null | sort -u | tr '\n' + ); n=${n%+}; n=${n:-gone}; fi
    echo "$n;load $(cut -d' ' -f1 /proc/loadavg)"
}

RELAY_PID=""; SCRAPER_PID=""
cleanup() {
    [ -n "$SCRAPER_PID" ] && { kill "$SCRAPER_PID" 2>/dev/null; wait "$SCRAPER_PID" 2>/dev/null; }
    if [ -n "$RELAY_PID" ] && kill -0 "$RELAY_PID" 2>/dev/null; then
        kill -TERM "$RELAY_PID"
        for _ in $(seq 1 $((STOP_TIMEOUT * 10))); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$RELAY_PID" 2>/dev/null && kill -KILL "$RELAY_PID"
        wait "$RELAY_PID" 2>/dev/null
    fi
    RELAY_PID=""
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------ config
cat > "$CONF" <<TOML
# Written by benches/ops-bench.sh: the relay under test. The backend address has
# nothing listening, so all mail stays queued.
hostname = "relay.bench.invalid"

[smtp]
listen = ["127.0.0.1:$PORT"]

[journal]
path = "$OUT/journal"
max_bytes = 21474836480      # 20 GiB
min_free_bytes = 0

[relay]
domains = ["example.test"]

[[backend]]
name = "b0"
address = "127.0.0.1:$DEAD_PORT"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[health]
interval = "10s"

[delivery]
retry = ["1h"]
TOML
"$BW_BIN" check-config --config "$CONF" >> "$BLOG" 2>&1 || { cat "$BLOG" >&2; die "check-config refused $CONF"; }

# ------------------------------------------------------------------ relay
# start_relay: spawns the relay; sets RELAY_PID and T_SPAWN.
start_relay() {
    echo "--- start $(date -u +%FT%TZ)" >> "$RLOG"
    T_SPAWN=$(now)
    "$BW_BIN" run --config "$CONF" >> "$RLOG" 2>&1 &
    RELAY_PID=$!
}
# wait_smtp: polls the SMTP port every 10 ms (bounded); echoes seconds since T_SPAWN.
wait_smtp() {
    local i
    for ((i = 0; i < START_TIMEOUT * 100; i++)); do
        listening "$PORT" && { sub "$(now)" "$T_SPAWN"; return 0; }
        kill -0 "$RELAY_PID" 2>/dev/null || { log "relay exited; see $RLOG"; return 1; }
        sleep 0.01
    done
    log "SMTP not up after ${START_TIMEOUT}s"; return 1
}
# wait_greeting: connects every 10 ms (bounded) until the 220 greeting arrives (the
# port accepts TCP as soon as it is bound, before the journal is loaded); echoes
# seconds since T_SPAWN.
greets() { ( exec 3<>"/dev/tcp/127.0.0.1/$PORT" && read -r -t 5 l <&3 && [[ $l == 220* ]] && printf 'QUIT\r\n' >&3 ) 2>/dev/null; }
wait_greeting() {
    local i
    for ((i = 0; i < START_TIMEOUT * 100; i++)); do
        greets && { sub "$(now)" "$T_SPAWN"; return 0; }
        kill -0 "$RELAY_PID" 2>/dev/null || { log "relay exited; see $RLOG"; return 1; }
        sleep 0.01
    done
    log "no 220 greeting after ${START_TIMEOUT}s"; return 1
}
# wait_ready: polls /readyz every 10 ms until 200 (bounded); echoes seconds since T_SPAWN.
wait_ready() {
    local i
    for ((i = 0; i < START_TIMEOUT * 100; i++)); do
        [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$ADMIN/readyz")" = 200 ] &&
            { sub "$(now)" "$T_SPAWN"; return 0; }
        kill -0 "$RELAY_PID" 2>/dev/null || { log "relay exited; see $RLOG"; return 1; }
        sleep 0.01
    done
    log "/readyz not 200 after ${START_TIMEOUT}s"; return 1
}
# stop_relay: SIGTERM, bounded wait (then SIGKILL); echoes seconds to exit.
stop_relay() {
    local t0 i
    t0=$(now)
    kill -TERM "$RELAY_PID"
    for ((i = 0; i < STOP_TIMEOUT * 100; i++)); do
        kill -0 "$RELAY_PID" 2>/dev/null || break
        sleep 0.01
    done
    if kill -0 "$RELAY_PID" 2>/dev/null; then
        log "relay still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
        kill -KILL "$RELAY_PID"
    fi
    wait "$RELAY_PID" 2>/dev/null
    RELAY_PID=""
    sub "$(now)" "$t0"
}
depth() { curl -s -m 10 "$ADMIN/metrics" | awk '$1=="breakwater_queue_depth"{printf "%d\n", $2; f=1} END{if (!f) print "n/a"}'; }
mem_kib() { awk -v k="$1:" '$1==k{print $2}' "/proc/$RELAY_PID/status" 2>/dev/null; }
cpu_s() {   # utime+stime of the relay, seconds
    awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f\n", ($12+$13)/hz}' "/proc/$RELAY_PID/stat" 2>/dev/null
}

# send N LABEL: smtp-source N messages, bounded; echoes "msg/s seconds accepted relay_cpu_s"
send() {
    local n=$1 label=$2 d0 d1 t0 t1 c0 c1 rc
    d0=$(depth); c0=$(cpu_s); t0=$(now)
    timeout "$SEND_TIMEOUT" "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$n" \
        -f s@client.test -t a@example.test "127.0.0.1:$PORT" >> "$OUT/smtp-source.$label.log" 2>&1
    rc=$?
    t1=$(now); c1=$(cpu_s); d1=$(depth)
    [ "$rc" = 0 ] || log "  smtp-source ($label) exited $rc; see $OUT/smtp-source.$label.log"
    local secs acc
    secs=$(sub "$t1" "$t0")
    acc=$((d1 - d0))
    [ "$acc" = "$n" ] || log "  WARNING ($label): sent $n, queue grew by $acc"
    awk -v n="$acc" -v s="$secs" -v c="$(sub "$c1" "$c0")" 'BEGIN{printf "%.0f %.2f %d %.2f\n", n/s, s, n, c}'
}

# scraper: GET /metrics every SCRAPE_INTERVAL until killed (bounded by count), on
# a fixed schedule (a slow answer does not push the next one back); one line per
# scrape: http_code time_total. SCRAPE_MODE=fork: a new curl (and connection) per
# scrape; keepalive: one curl, one kept-alive connection (like Prometheus).
scraper() {
    local i max step next t left
    max=$(awk -v t="$SEND_TIMEOUT" -v i="$SCRAPE_INTERVAL" 'BEGIN{printf "%d", t/i}')
    if [ "$SCRAPE_MODE" = keepalive ]; then
        curl -s -m "$SEND_TIMEOUT" --rate "$(awk -v i="$SCRAPE_INTERVAL" 'BEGIN{printf "%d", 60/i}')/m" \
            -w '%{stderr}%{http_code} %{time_total}\n' -o /dev/null "$ADMIN/metrics?[1-$max]" 2>&1
        return
    fi
    step=$(awk -v i="$SCRAPE_INTERVAL" 'BEGIN{printf "%d", i*1000000}')
    next=${EPOCHREALTIME/[.,]/}
    for ((i = 0; i < max; i++)); do
        curl -s -o /dev/null -m 5 -w '%{http_code} %{time_total}\n' "$ADMIN/metrics"
        next=$((next + step)); t=${EPOCHREALTIME/[.,]/}; left=$((next - t))
        if [ "$left" -gt 0 ]; then sleep "$(printf '%d.%06d' $((left / 1000000)) $((left % 1000000)))"; else next=$t; fi
    done
}

# stats FILE: min/median/max (ms) of the seconds in FILE's last column
stats() {
    awk '{print $NF * 1000}' "$1" | sort -n | awk '{v[NR]=$1} END{
        if (NR == 0) { print "n/a"; exit }
        m = (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2
        printf "%.1f / %.1f / %.1f", v[1], m, v[NR]}'
}
# latency NAME URL: LAT_REPEATS requests; checks every answer is 200; echoes stats
latency() {
    local name=$1 url=$2 f=$OUT/lat.$1.txt i
    : > "$f"
    for ((i = 0; i < LAT_REPEATS; i++)); do
        curl -s -o "$OUT/body.$name" -m 30 -w '%{http_code} %{size_download} %{time_total}\n' "$url" >> "$f"
    done
    awk '$1 != 200 {bad++} END{exit bad > 0}' "$f" || log "  WARNING: $name answered non-200; see $f"
    stats "$f"
}

declare -a ROWS
row() { ROWS+=("$(printf '%-52s %s' "$1" "$2")"); log "  $1: $2"; }

T_BEGIN=$(now)
log "ops-bench: $("$BW_BIN" --version 2>/dev/null | head -1), nproc=$(nproc), N1=$N1 TOTAL=$TOTAL SIZE=$SIZE SESSIONS=$SESSIONS, fuzzer running: $(fuzzing)"

start_relay
wait_smtp >/dev/null || exit 1
t=$(wait_greeting) || exit 1
wait_ready >/dev/null || exit 1
log "relay up (pid $RELAY_PID) in ${t}s, empty journal"

# ------------------------------------------------------------------ A, B, A
# phase_a K: accept run A<K>; sets A_RATE[K]
declare -a A_RATE B_RATE
phase_a() {
    local F r s n c
    log "phase A$1: $N1 messages, no scraping"
    F=$(fuzzing); read -r r s n c < <(send "$N1" "A$1")
    A_RATE[$1]=$r
    row "A$1 accept, no scrape (msg/s; relay CPU s) [fuzz:$F]" "$r ($n in ${s}s; relay cpu ${c}s)"
}
phase_b() {
    local F r s n c f=$OUT/scrapes.B$1.txt
    log "phase B$1: $N1 messages, GET /metrics every ${SCRAPE_INTERVAL}s ($SCRAPE_MODE)"
    scraper > "$f" & SCRAPER_PID=$!
    F=$(fuzzing); read -r r s n c < <(send "$N1" "B$1")
    kill "$SCRAPER_PID" 2>/dev/null; wait "$SCRAPER_PID" 2>/dev/null; SCRAPER_PID=""
    B_RATE[$1]=$r
    row "B$1 accept, scrape/${SCRAPE_INTERVAL}s $SCRAPE_MODE (msg/s; CPU) [fuzz:$F]" "$r ($n in ${s}s; relay cpu ${c}s)"
    row "B$1 scrapes (count, per s; ms min/med/max)" "$(wc -l < "$f"), $(awk -v n="$(wc -l < "$f")" -v s="$s" 'BEGIN{printf "%.1f/s", n/s}'); $(stats "$f")"
    awk '$1 != 200 {bad++} END{exit bad > 0}' "$f" || log "  WARNING: some scrapes were not 200; see $f"
}
phase_a 1
for ((k = 1; k <= ROUNDS; k++)); do
    phase_b "$k"
    phase_a $((k + 1))
    row "B$k vs mean(A$k,A$((k + 1)))" "$(awk -v a="${A_RATE[k]}" -v b="${B_RATE[k]}" -v c="${A_RATE[k + 1]}" 'BEGIN{m=(a+c)/2; printf "%+.1f%% (the two A differ by %.1f%%)", (b-m)/m*100, (a>c?a-c:c-a)/m*100}')"
done

# ------------------------------------------------------------------ fill
d=$(depth)
rest=$((TOTAL - d))
if [ "$rest" -gt 0 ]; then
    log "fill: $rest messages to reach $TOTAL"
    F=$(fuzzing); read -r fr fs fn fc < <(send "$rest" fill)
    row "fill to $TOTAL (msg/s; s) [fuzz:$F]" "$fr ($fn in ${fs}s; cpu ${fc}s)"
fi
DEPTH=$(depth)
row "breakwater_queue_depth (want $TOTAL)" "$DEPTH"
[ "$DEPTH" = "$TOTAL" ] || log "  WARNING: depth $DEPTH, not $TOTAL"
sleep 2   # let the last commits and the dispatcher settle

# ------------------------------------------------------------------ latency at TOTAL
log "latency at $DEPTH queued ($LAT_REPEATS requests each, ms min/median/max)"
F=$(fuzzing)
row "GET /metrics (ms min/med/max) [fuzz:$F]" "$(latency metrics "$ADMIN/metrics")"
row "GET /api/queue?limit=100 (ms) [fuzz:$F]" "$(latency page "$ADMIN/api/queue?limit=100")"
npage=$(grep -o '"id":"' "$OUT/body.page" | wc -l)
row "  messages in that page; bytes" "$npage; $(wc -c < "$OUT/body.page")"
row "GET /api/queue?limit=100&state=held (ms) [fuzz:$F]" "$(latency held "$ADMIN/api/queue?limit=100&state=held")"
row "  its answer" "$(head -c 120 "$OUT/body.held")"
row "GET /api/status (ms) [fuzz:$F]" "$(latency status "$ADMIN/api/status")"
f=$OUT/lat.cli.txt; : > "$f"
for ((i = 0; i < LAT_REPEATS; i++)); do
    t0=$(now)
    "$BW_BIN" queue list --limit 5 --admin "$ADMIN" > "$OUT/queue-list.out" 2>&1 || log "  WARNING: queue list failed; see $OUT/queue-list.out"
    sub "$(now)" "$t0" >> "$f"; echo >> "$f"
done
row "breakwater queue list --limit 5 (ms, whole process)" "$(stats "$f")"
row "  its last line" "$(tail -1 "$OUT/queue-list.out")"
f=$OUT/lat.cli-held.txt; : > "$f"
for ((i = 0; i < 5; i++)); do
    t0=$(now)
    "$BW_BIN" queue list --state held --limit 0 --admin "$ADMIN" > "$OUT/queue-list-held.out" 2>&1 || log "  WARNING: queue list --state held failed; see $OUT/queue-list-held.out"
    sub "$(now)" "$t0" >> "$f"; echo >> "$f"
done
row "queue list --state held --limit 0 (whole queue; ms, 5x)" "$(stats "$f")"
row "  its last line" "$(tail -1 "$OUT/queue-list-held.out")"

# ------------------------------------------------------------------ memory
row "relay VmHWM / VmRSS at $DEPTH queued (MiB)" "$(awk -v a="$(mem_kib VmHWM)" -v b="$(mem_kib VmRSS)" 'BEGIN{printf "%.1f / %.1f", a/1024, b/1024}')"

# ------------------------------------------------------------------ restart recovery
log "restart recovery"
row "SIGTERM to exit (s)" "$(stop_relay)"
F=$(fuzzing)
start_relay
ts=$(wait_smtp) || exit 1
tg=$(wait_greeting) || exit 1
tr=$(wait_ready) || exit 1
row "restart: spawn to SMTP port accepting TCP (s) [fuzz:$F]" "$ts"
row "restart: spawn to SMTP 220 greeting (s)" "$tg"
row "restart: spawn to /readyz 200 (s)" "$tr"
row "  VmHWM / VmRSS right after (MiB)" "$(awk -v a="$(mem_kib VmHWM)" -v b="$(mem_kib VmRSS)" 'BEGIN{printf "%.1f / %.1f", a/1024, b/1024}')"
row "  queue depth after restart" "$(depth)"
sleep 5
row "  VmHWM / VmRSS 5 s later (MiB)" "$(awk -v a="$(mem_kib VmHWM)" -v b="$(mem_kib VmRSS)" 'BEGIN{printf "%.1f / %.1f", a/1024, b/1024}')"
F=$(fuzzing)
row "  GET /metrics after restart (ms) [fuzz:$F]" "$(latency metrics2 "$ADMIN/metrics")"
row "  GET /api/queue?limit=100 after restart (ms)" "$(latency page2 "$ADMIN/api/queue?limit=100")"

cleanup
row "journal on disk (du -sh)" "$(du -sh "$OUT/journal" | cut -f1) ($(du -sb --apparent-size "$OUT/journal/journal.redb" | cut -f1) bytes apparent)"
row "bench runtime (s)" "$(sub "$(now)" "$T_BEGIN")"

{
    echo "breakwater ops-bench $(date -u +%FT%TZ)  N1=$N1 TOTAL=$TOTAL SIZE=$SIZE SESSIONS=$SESSIONS nproc=$(nproc)"
    echo "(latencies: min / median / max of $LAT_REPEATS; [fuzz:X] = what pgrep -f fuzz found then (no = nothing) and the 1-min load average)"
    printf '%s\n' "${ROWS[@]}"
} > "$SUMMARY"
echo
cat "$SUMMARY"
echo "(summary in $SUMMARY; journal, config and logs left in $OUT)"
