#!/usr/bin/env bash
# continuity-bench.sh - the continuity features (issue 8) under load: mirror copies,
# retention, replay.
#
#   1  accept + drain with one [[mirror]] and without, same run, alternated:
#        NONE (no mirror), UP (mirror -> a second smtp-sink, the standby),
#        NONE again, DOWN (mirror -> a port where nothing listens)
#      each phase: fresh journal, relay started, smtp-source sends N messages;
#        accept msg/s (wall time of smtp-source), drain (end of sending until
#        breakwater_messages_delivered_total = N, polled every POLL s), end to end
#        msg/s (N / first send to N delivered); UP: until
#        breakwater_mirror_queue_depth{mirror="standby"} = 0 and what the standby
#        sink counted; DOWN: the mirror depth at the end (want N) and whether the
#        primary kept its pace; relay CPU ms/msg (utime+stime, /proc/PID/stat) from
#        the first send to the end of the phase's work, peak RSS (VmHWM)
#   2  replay: journal.retain_delivered = "7d", REPLAY_N messages delivered, wait
#      until breakwater_retained_messages = REPLAY_N; `breakwater replay --since T
#      --dry-run` (selection time), then the real one: time until it printed
#      "queued" (the POST) and until it exited (every replayed copy delivered; the
#      CLI waits) -> replayed msg/s; then the same replay again (--json, must say
#      "queued": 0) and its time
#   3  disk per retained message: journal file (breakwater_journal_bytes = size of
#      journal.redb; du too) / retained count, beside breakwater_retained_bytes /
#      count (the bytes stored per message) -> overhead ratio; before and after the
#      replay; and (QUEUED_CMP=1) the file with REPLAY_N messages queued, not
#      retained (backend = DEAD_PORT), for comparison
#
# Backend and standby are Postfix's smtp-sink (-c counts what it got), load is
# smtp-source, one message per connection. [health] interval = 1s (fall 2), so a
# dead standby is found within seconds; before sending, UP waits (bounded) until
# breakwater_mirror_up{mirror="standby"} is 1 and DOWN until it is 0.
#
# Run from the project root after `cargo build --release`:
#   benches/continuity-bench.sh
#   N=2000 REPLAY_N=2000 benches/continuity-bench.sh        # a quick try
# Needs: postfix's smtp-source and smtp-sink (apt-get install postfix, "No
# configuration"), curl. Loopback (127.0.0.1) only; everything it starts is stopped
# by PID (trap). $OUT is left in place (last journal, configs, logs, sink counters);
# each phase starts from an empty journal. Give $OUT room: journal.min_free_bytes is 0
# here, and the relay's log (stderr, $OUT/breakwater.log) must stay writable - a full
# file system under it has been seen to hang the relay for good.
#
# Environment (defaults):
#   OUT=/tmp/continuity-bench   configs, journal, logs, summary.txt, results.tsv
#   N=20000                  messages in each throughput phase
#   REPLAY_N=20000           messages retained and replayed
#   SIZE=1024                smtp-source -l: body bytes per message
#   SESSIONS=20              smtp-source -s: parallel sessions
#   PHASES="none up none down"   throughput phases, in this order (none|up|down)
#   REPLAY=1                 0: skip the replay and disk part (2, 3)
#   QUEUED_CMP=1             0: skip the "queued, not retained" file size
#   CONCURRENCY=16           [delivery] concurrency
#   HEALTH_INTERVAL=1s       [health] interval
#   MIRROR_CONNECTIONS=4     [[mirror]] max_connections
#   PORT=2825 ADMIN_PORT=9929 SINK_PORT=2826 STANDBY_PORT=2827
#   DEAD_PORT=2828           nothing may listen there (the DOWN standby, QUEUED backend)
#   POLL=0.05                seconds between /metrics polls while waiting
#   BW_BIN=target/release/breakwater
#   SMTP_SOURCE=/usr/sbin/smtp-source SMTP_SINK=/usr/sbin/smtp-sink SINK_USER=nobody
#   SEND_TIMEOUT=1800 DRAIN_TIMEOUT=900 REPLAY_TIMEOUT=1800 START_TIMEOUT=120
#   STOP_TIMEOUT=60 MIRROR_STATE_TIMEOUT=20   seconds; every wait is bounded
#   STALL_TIMEOUT=60         a counter waited for that does not move this long ends the wait
#   MIN_FREE_MIB=2048        warn below this much free space on $OUT's file system (the
#                            relay's own guard, journal.min_free_bytes, is 0 here)
set -u
cd "$(dirname "$0")/.." || exit 1
# the command line as given: the knobs set in the environment, then the script
CMDLINE=""
for k in OUT N REPLAY_N SIZE SESSIONS PHASES REPLAY QUEUED_CMP CONCURRENCY HEALTH_INTERVAL \
    MIRROR_CONNECTIONS PORT ADMIN_PORT SINK_PORT STANDBY_PORT DEAD_PORT POLL BW_BIN SMTP_SOURCE \
    SMTP_SINK SINK_USER SEND_TIMEOUT DRAIN_TIMEOUT REPLAY_TIMEOUT START_TIMEOUT STOP_TIMEOUT \
    MIRROR_STATE_TIMEOUT STALL_TIMEOUT MIN_FREE_MIB; do
    [ -n "${!k+x}" ] && CMDLINE+="$k='${!k}' "
done
CMDLINE+="$0${*:+ $*}"

OUT=${OUT:-/tmp/continuity-bench}
N=${N:-20000}
REPLAY_N=${REPLAY_N:-20000}
SIZE=${SIZE:-1024}
SESSIONS=${SESSIONS:-20}
PHASES=${PHASES:-none up none down}
REPLAY=${REPLAY:-1}
QUEUED_CMP=${QUEUED_CMP:-1}
CONCURRENCY=${CONCURRENCY:-16}
HEALTH_INTERVAL=${HEALTH_INTERVAL:-1s}
MIRROR_CONNECTIONS=${MIRROR_CONNECTIONS:-4}
PORT=${PORT:-2825}
ADMIN_PORT=${ADMIN_PORT:-9929}
SINK_PORT=${SINK_PORT:-2826}
STANDBY_PORT=${STANDBY_PORT:-2827}
DEAD_PORT=${DEAD_PORT:-2828}
POLL=${POLL:-0.05}
BW_BIN=${BW_BIN:-target/release/breakwater}
SMTP_SOURCE=${SMTP_SOURCE:-/usr/sbin/smtp-source}
SMTP_SINK=${SMTP_SINK:-/usr/sbin/smtp-sink}
SINK_USER=${SINK_USER:-nobody}
SEND_TIMEOUT=${SEND_TIMEOUT:-1800}
DRAIN_TIMEOUT=${DRAIN_TIMEOUT:-900}
REPLAY_TIMEOUT=${REPLAY_TIMEOUT:-1800}
START_TIMEOUT=${START_TIMEOUT:-120}
STOP_TIMEOUT=${STOP_TIMEOUT:-60}
MIRROR_STATE_TIMEOUT=${MIRROR_STATE_TIMEOUT:-20}
STALL_TIMEOUT=${STALL_TIMEOUT:-60}
MIN_FREE_MIB=${MIN_FREE_MIB:-2048}
ADMIN=http://127.0.0.1:$ADMIN_PORT
MIRROR_DEPTH_KEY='breakwater_mirror_queue_depth{mirror="standby"}'
MIRROR_UP_KEY='breakwater_mirror_up{mirror="standby"}'
MIRROR_OK_KEY='breakwater_mirror_deliveries_total{mirror="standby",result="delivered"}'
MIRROR_DEFER_KEY='breakwater_mirror_deliveries_total{mirror="standby",result="deferred"}'

die() { echo "continuity-bench: $*" >&2; exit 1; }
[ -x "$BW_BIN" ] || die "no binary at $BW_BIN: run cargo build --release first"
"$BW_BIN" --help 2>&1 | grep -qw replay || die "$BW_BIN has no 'replay': rebuild (cargo build --release)"
[ -x "$SMTP_SOURCE" ] || die "no smtp-source at $SMTP_SOURCE (apt-get install postfix)"
[ -x "$SMTP_SINK" ] || die "no smtp-sink at $SMTP_SINK (apt-get install postfix)"
command -v curl >/dev/null || die "curl is needed"
for p in $PHASES; do case $p in none | up | down) ;; *) die "PHASES: unknown phase '$p' (none, up, down)" ;; esac; done
BW_BIN=$(readlink -f "$BW_BIN")

listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$PORT" "$ADMIN_PORT" "$SINK_PORT" "$STANDBY_PORT" "$DEAD_PORT"; do
    listening "$p" && die "something already listens on 127.0.0.1:$p (set PORT/ADMIN_PORT/SINK_PORT/STANDBY_PORT/DEAD_PORT)"
done

mkdir -p "$OUT" || exit 1
RLOG=$OUT/breakwater.log
BLOG=$OUT/bench.log
RESULTS=$OUT/results.tsv
SUMMARY=$OUT/summary.txt
: > "$BLOG"; : > "$RLOG"; : > "$RESULTS"
rm -f "$OUT"/sink.*.out "$OUT"/smtp-source.*.log "$OUT"/replay-*.out

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$BLOG" >&2; }
now() { echo "${EPOCHREALTIME/,/.}"; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN{printf "%.3f", a-b}'; }
# div A B [FORMAT]: A/B, n/a if either is not a number or B is 0
div() {
    awk -v a="$1" -v b="$2" -v f="${3:-%.1f}" 'BEGIN{
        if (a !~ /^-?[0-9.]+$/ || b !~ /^-?[0-9.]+$/ || b + 0 == 0) print "n/a"; else printf f "\n", a/b}'
}
# busy: the 1-min load average and how many rustc / fuzz processes run (others' work
# on this shared machine), as "LOAD RUSTC/FUZZ"
busy() { echo "$(cut -d' ' -f1 /proc/loadavg) $(pgrep -c -x rustc)/$(pgrep -c -f fuzz)"; }
free_mib() { df -P -BM "$OUT" 2>/dev/null | awk 'NR == 2 {sub(/M$/, "", $4); print $4}'; }
host_busy() { awk '/^cpu /{print $2+$3+$4+$7+$8+$9, $2+$3+$4+$5+$6+$7+$8+$9}' /proc/stat; }
busy_pct() {   # busy_pct "b0 t0" "b1 t1": % of the machine's CPU time busy in between
    awk -v x="$1" -v y="$2" 'BEGIN{split(x, a); split(y, b); if (b[2] > a[2]) printf "%.0f", 100*(b[1]-a[1])/(b[2]-a[2]); else print "n/a"}'
}

RELAY_PID=""; SINK_PID=""; STANDBY_PID=""; CLI_PID=""
stop_pid() {   # stop_pid PID: SIGTERM, bounded wait, SIGKILL
    local pid=$1 i
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid still running ${STOP_TIMEOUT}s after SIGTERM: SIGKILL"
        kill -KILL "$pid" 2>/dev/null
    fi
    wait "$pid" 2>/dev/null
}
cleanup() {
    stop_pid "$CLI_PID"; CLI_PID=""
    stop_pid "$RELAY_PID"; RELAY_PID=""
    stop_pid "$SINK_PID"; SINK_PID=""
    stop_pid "$STANDBY_PID"; STANDBY_PID=""
}
trap cleanup EXIT
trap 'log interrupted; exit 130' INT TERM

# ------------------------------------------------------------------ sinks
# start_sink VAR PORT FILE: smtp-sink -c (running counters "... mesg=N" in FILE); its
# PID goes into the variable VAR (SINK_PID or STANDBY_PID)
start_sink() {
    local var=$1 port=$2 file=$3 u=()
    listening "$port" && { log "ERROR: something already listens on 127.0.0.1:$port"; return 1; }
    [ "$(id -u)" = 0 ] && u=(-u "$SINK_USER")
    "$SMTP_SINK" -c "${u[@]}" "127.0.0.1:$port" 1024 > "$file" 2>> "$OUT/sink.err" &
    printf -v "$var" %s "$!"
    for _ in $(seq 1 100); do listening "$port" && return 0; sleep 0.05; done
    log "ERROR: smtp-sink on $port did not come up"; return 1
}
sink_count() {   # sink_count FILE: the last mesg= counter
    [ -s "$1" ] || { echo 0; return; }
    tail -c 256 "$1" | tr '\r' '\n' | sed -n 's/.*mesg=\([0-9][0-9]*\)$/\1/p' | tail -1 | grep . || echo 0
}
# wait_sink FILE WANT SECONDS: until the sink counted WANT (its counters lag a little)
wait_sink() {
    local i n
    for ((i = 0; i < $3 * 10; i++)); do
        n=$(sink_count "$1"); [ "$n" -ge "$2" ] && break; sleep 0.1
    done
    sink_count "$1"
}

# ------------------------------------------------------------------ config
# write_config FILE BACKEND_PORT RETAIN MIRROR_PORT(or "") RETRY
write_config() {
    local f=$1 backend=$2 retain=$3 mirror=$4 retry=$5
    cat > "$f" <<TOML
# Written by benches/continuity-bench.sh.
hostname = "relay.bench.invalid"

[smtp]
listen = ["127.0.0.1:$PORT"]

[journal]
path = "$OUT/journal"
max_bytes = 21474836480      # 20 GiB
min_free_bytes = 0
retain_delivered = "$retain"

[relay]
domains = ["example.test"]

[[backend]]
name = "sink"
address = "127.0.0.1:$backend"

[admin]
listen = "127.0.0.1:$ADMIN_PORT"

[health]
interval = "$HEALTH_INTERVAL"

[delivery]
concurrency = $CONCURRENCY
retry = [$retry]
TOML
    if [ -n "$mirror" ]; then
        cat >> "$f" <<TOML

[[mirror]]
name = "standby"
address = "127.0.0.1:$mirror"
max_connections = $MIRROR_CONNECTIONS
TOML
    fi
    "$BW_BIN" check-config --config "$f" >> "$BLOG" 2>&1 || { tail -20 "$BLOG" >&2; die "check-config refused $f"; }
}

# ------------------------------------------------------------------ relay
# start_relay CONFIG: fresh journal, spawn, wait (bounded) for the 220 greeting and /readyz
greets() { ( exec 3<>"/dev/tcp/127.0.0.1/$PORT" && read -r -t 5 l <&3 && [[ $l == 220* ]] && printf 'QUIT\r\n' >&3 ) 2>/dev/null; }
start_relay() {
    local i
    rm -rf "$OUT/journal"
    echo "--- start $(date -u +%FT%TZ) $1" >> "$RLOG"
    "$BW_BIN" run --config "$1" >> "$RLOG" 2>&1 &
    RELAY_PID=$!
    for ((i = 0; i < START_TIMEOUT * 20; i++)); do
        kill -0 "$RELAY_PID" 2>/dev/null || { log "relay exited; see $RLOG"; RELAY_PID=""; return 1; }
        greets && [ "$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$ADMIN/readyz")" = 200 ] && return 0
        sleep 0.05
    done
    log "relay not ready after ${START_TIMEOUT}s"; return 1
}
stop_relay() { stop_pid "$RELAY_PID"; RELAY_PID=""; }
mem_kib() { awk -v k="$1:" '$1==k{print $2}' "/proc/$RELAY_PID/status" 2>/dev/null; }
mib() { awk -v k="$1" 'BEGIN{ if (k == "") print "n/a"; else printf "%.1f", k/1024}'; }
cpu_s() {   # utime+stime of the relay (all threads), seconds
    awk -v hz="$(getconf CLK_TCK)" '{sub(/.*\) /, ""); printf "%.2f\n", ($12+$13)/hz}' "/proc/$RELAY_PID/stat" 2>/dev/null
}

# metric KEY: the value on /metrics (KEY = name with its labels as printed), n/a if absent
metric() {
    curl -s -m 5 "$ADMIN/metrics" | awk -v k="$1" '$1==k {printf "%.0f\n", $2; f=1; exit} END{if (!f) print "n/a"}'
}
# wait_metric KEY OP WANT SECONDS (OP: ge or eq): polls every POLL s; sets WAIT_T to the
# time it held ("timeout" if it never did within SECONDS, then returns 1) and
# LAST_VALUE to the last value seen
# A value that has not moved for STALL_TIMEOUT s ends the wait early (WAIT_T=stalled):
# a relay that stopped working shows at once, with what stuck() finds.
LAST_VALUE=""; WAIT_T=""
wait_metric() {
    local key=$1 op=$2 want=$3 deadline v t last="" moved
    t=$(now); moved=$t
    deadline=$(awk -v t="$t" -v d="$4" 'BEGIN{printf "%.3f", t+d}')
    while :; do
        v=$(metric "$key"); LAST_VALUE=$v; t=$(now)
        if [[ $v =~ ^[0-9]+$ ]]; then
            case $op in
            ge) [ "$v" -ge "$want" ] && { WAIT_T=$t; return 0; } ;;
            eq) [ "$v" -eq "$want" ] && { WAIT_T=$t; return 0; } ;;
            esac
        fi
        [ "$v" != "$last" ] && { last=$v; moved=$t; }
        awk -v t="$t" -v d="$deadline" 'BEGIN{exit !(t > d)}' && { WAIT_T=timeout; stuck "$key"; return 1; }
        awk -v t="$t" -v m="$moved" -v s="$STALL_TIMEOUT" 'BEGIN{exit !(t - m > s)}' && { WAIT_T=stalled; stuck "$key"; return 1; }
        sleep "$POLL"
    done
}
failed() { [ "$1" = timeout ] || [ "$1" = stalled ]; }
# stuck KEY: what the log needs when a wait fails: the relay's threads (is
# journal-commit alive?), whether SMTP still greets, the queue's counts
stuck() {
    local th
    th=$(cat /proc/"$RELAY_PID"/task/*/comm 2>/dev/null | sort | uniq -c | awk '{printf "%s%s x%s", (NR > 1 ? ", " : ""), $2, $1}')
    log "  STUCK waiting for $1 (last value $LAST_VALUE): relay threads: ${th:-none}; SMTP 220 within 5s: $(greets && echo yes || echo NO)"
    log "  $(curl -s -m 5 "$ADMIN/metrics" | awk '/^breakwater_(queue_messages|messages_received_total|messages_delivered_total|queue_depth)/{printf "%s=%s ", $1, $2}')"
    log "  free space where the journal is: $(free_mib) MiB; last relay log line: $(tail -c 200 "$RLOG" | tail -1)"
}

# send N LABEL: smtp-source, bounded; sets SEND_S (wall seconds) and SEND_RC
send() {
    local t0
    t0=$(now)
    timeout "$SEND_TIMEOUT" "$SMTP_SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$1" \
        -f s@client.test -t a@example.test "127.0.0.1:$PORT" >> "$OUT/smtp-source.$2.log" 2>&1
    SEND_RC=$?
    SEND_S=$(sub "$(now)" "$t0")
    [ "$SEND_RC" = 0 ] || log "  smtp-source ($2) exited $SEND_RC; see $OUT/smtp-source.$2.log"
}

# ------------------------------------------------------------------ results
# rec COLUMN METRIC VALUE: one figure (results.tsv, the log, the tables)
declare -A R
rec() { R["$1|$2"]=$3; printf '%s\t%s\t%s\n' "$1" "$2" "$3" >> "$RESULTS"; log "  [$1] $2 = $3"; }
get() { echo "${R["$1|$2"]:-n/a}"; }

# ------------------------------------------------------------------ 1: throughput phases
# phase KIND COLUMN
phase() {
    local kind=$1 col=$2 conf=$OUT/$2.toml mirror="" sinkf=$OUT/sink.$2.out standf=$OUT/sink.$2-standby.out
    local t0 t1 t2 t3 tend c0 c1 h0 h1 v l o
    case $kind in up) mirror=$STANDBY_PORT ;; down) mirror=$DEAD_PORT ;; esac
    log "phase $col: $N messages, mirror: ${mirror:-none}"
    read -r l o < <(busy); rec "$col" load_at_start "$l"; rec "$col" others_at_start "$o"
    rec "$col" free_mib_at_start "$(free_mib)"
    write_config "$conf" "$SINK_PORT" 0s "$mirror" '"1m", "5m", "15m", "1h"'
    start_sink SINK_PID "$SINK_PORT" "$sinkf" || return 1
    if [ "$kind" = up ]; then start_sink STANDBY_PID "$STANDBY_PORT" "$standf" || return 1; fi
    if [ "$kind" = down ] && listening "$DEAD_PORT"; then log "ERROR: something listens on DEAD_PORT $DEAD_PORT"; return 1; fi
    start_relay "$conf" || return 1
    rec "$col" journal_bytes_empty "$(metric breakwater_journal_bytes)"
    if [ -n "$mirror" ]; then
        local want=1; [ "$kind" = down ] && want=0
        t0=$(now)
        if ! wait_metric "$MIRROR_UP_KEY" eq "$want" "$MIRROR_STATE_TIMEOUT"; then
            log "  WARNING: mirror_up stayed $LAST_VALUE (wanted $want) for ${MIRROR_STATE_TIMEOUT}s"
        fi
        rec "$col" mirror_state_s "$(sub "$(now)" "$t0")"
        rec "$col" mirror_up_before_send "$LAST_VALUE"
    fi
    c0=$(cpu_s); h0=$(host_busy); t0=$(now)
    send "$N" "$col"
    t1=$(now)
    rec "$col" accept_s "$SEND_S"
    rec "$col" source_rc "$SEND_RC"
    rec "$col" accept_msg_per_s "$(div "$N" "$SEND_S" %.0f)"
    rec "$col" received_total "$(metric breakwater_messages_received_total)"
    wait_metric breakwater_messages_delivered_total ge "$N" "$DRAIN_TIMEOUT"; t2=$WAIT_T
    if failed "$t2"; then
        log "  WARNING: breakwater_messages_delivered_total = $LAST_VALUE, not $N ($t2)"
        rec "$col" drain_s "$t2 ($LAST_VALUE delivered)"; tend=$(now)
    else
        rec "$col" drain_s "$(sub "$t2" "$t1")"
        rec "$col" e2e_s "$(sub "$t2" "$t0")"
        rec "$col" e2e_msg_per_s "$(div "$N" "$(sub "$t2" "$t0")" %.0f)"
        tend=$t2
    fi
    rec "$col" delivered_total "$(metric breakwater_messages_delivered_total)"
    if [ "$kind" = up ]; then
        wait_metric "$MIRROR_DEPTH_KEY" eq 0 "$DRAIN_TIMEOUT"; t3=$WAIT_T
        if failed "$t3"; then
            log "  WARNING: mirror depth $LAST_VALUE ($t3)"
            rec "$col" standby_all_s "$t3 (depth $LAST_VALUE)"; tend=$(now)
        else
            rec "$col" standby_all_s "$(sub "$t3" "$t0")"
            failed "$t2" || rec "$col" standby_lag_s "$(sub "$t3" "$t2")"
            rec "$col" standby_msg_per_s "$(div "$N" "$(sub "$t3" "$t0")" %.0f)"
            awk -v a="$t3" -v b="$tend" 'BEGIN{exit !(a > b)}' && tend=$t3
        fi
    fi
    c1=$(cpu_s); h1=$(host_busy)
    rec "$col" relay_cpu_s "$(sub "$c1" "$c0")"
    rec "$col" relay_cpu_ms_per_msg "$(div "$(sub "$c1" "$c0")" "$N" %.6f | awk '{ if ($1 == "n/a") print; else printf "%.3f", $1 * 1000}')"
    rec "$col" host_busy_pct "$(busy_pct "$h0" "$h1")"
    rec "$col" work_s "$(sub "$tend" "$t0")"
    if [ -n "$mirror" ]; then
        rec "$col" mirror_depth_end "$(metric "$MIRROR_DEPTH_KEY")"
        rec "$col" mirror_delivered_total "$(metric "$MIRROR_OK_KEY")"
        rec "$col" mirror_deferred_total "$(metric "$MIRROR_DEFER_KEY")"
    fi
    rec "$col" queue_depth_end "$(metric breakwater_queue_depth)"
    rec "$col" journal_bytes_end "$(metric breakwater_journal_bytes)"
    rec "$col" backend_sink_got "$(wait_sink "$sinkf" "$N" 5)"
    [ "$kind" = up ] && rec "$col" standby_sink_got "$(wait_sink "$standf" "$N" 5)"
    v=$(mem_kib VmHWM); rec "$col" vmhwm_mib "$(mib "$v")"
    v=$(mem_kib VmRSS); rec "$col" vmrss_mib "$(mib "$v")"
    stop_relay
    stop_pid "$SINK_PID"; SINK_PID=""
    stop_pid "$STANDBY_PID"; STANDBY_PID=""
    [ "$(get "$col" backend_sink_got)" = "$N" ] || log "  WARNING ($col): the backend sink got $(get "$col" backend_sink_got), not $N"
    if [ "$kind" = up ] && [ "$(get "$col" standby_sink_got)" != "$N" ]; then log "  WARNING ($col): the standby got $(get "$col" standby_sink_got), not $N"; fi
    if [ "$kind" = down ] && [ "$(get "$col" mirror_depth_end)" != "$N" ]; then log "  WARNING ($col): mirror depth $(get "$col" mirror_depth_end) at the end, not $N"; fi
    return 0
}

# ------------------------------------------------------------------ 2 + 3: replay, disk
# disk_rec PREFIX: the journal's size against what it retains
disk_rec() {
    local p=$1 page cnt rb jb fs du
    page=$(curl -s -m 10 "$ADMIN/metrics")
    cnt=$(awk '$1=="breakwater_retained_messages"{printf "%.0f", $2}' <<< "$page")
    rb=$(awk '$1=="breakwater_retained_bytes"{printf "%.0f", $2}' <<< "$page")
    jb=$(awk '$1=="breakwater_journal_bytes"{printf "%.0f", $2}' <<< "$page")
    fs=$(stat -c %s "$OUT/journal/journal.redb" 2>/dev/null || echo n/a)
    du=$(du -B1 "$OUT/journal/journal.redb" 2>/dev/null | cut -f1)
    rec replay "${p}_retained_messages" "${cnt:-n/a}"
    rec replay "${p}_retained_bytes" "${rb:-n/a}"
    rec replay "${p}_journal_bytes_metric" "${jb:-n/a}"
    rec replay "${p}_file_bytes_stat" "$fs"
    rec replay "${p}_file_bytes_du" "${du:-n/a}"
    rec replay "${p}_stored_bytes_per_msg" "$(div "${rb:-x}" "${cnt:-0}" %.0f)"
    rec replay "${p}_file_bytes_per_msg" "$(div "$fs" "${cnt:-0}" %.0f)"
    rec replay "${p}_du_bytes_per_msg" "$(div "${du:-x}" "${cnt:-0}" %.0f)"
    rec replay "${p}_overhead_ratio" "$(div "$fs" "${rb:-x}" %.2f)"
}

# run_cli OUTFILE ARGS...: the CLI in the background, bounded by REPLAY_TIMEOUT; sets
# CLI_FIRST (seconds until its first output line: for a real replay, the POST's answer),
# CLI_S (seconds to exit) and CLI_RC
run_cli() {
    local f=$1 t0 first="" i; shift
    t0=$(now)
    "$BW_BIN" "$@" > "$f" 2>&1 &
    CLI_PID=$!
    for ((i = 0; ; i++)); do
        kill -0 "$CLI_PID" 2>/dev/null || break
        [ -z "$first" ] && [ -s "$f" ] && first=$(now)
        if [ "$i" -ge $((REPLAY_TIMEOUT * 100)) ]; then log "  CLI still running after ${REPLAY_TIMEOUT}s: stopping it"; stop_pid "$CLI_PID"; break; fi
        sleep 0.01
    done
    wait "$CLI_PID"; CLI_RC=$?; CLI_PID=""
    local t1; t1=$(now)
    [ -n "$first" ] || first=$t1
    CLI_FIRST=$(sub "$first" "$t0"); CLI_S=$(sub "$t1" "$t0")
    [ "$CLI_RC" = 0 ] || log "  WARNING: breakwater $* exited $CLI_RC; see $f"
}

phase_replay() {
    local conf=$OUT/replay.toml sinkf=$OUT/sink.replay.out since t0 t2 c0 c1 got q
    log "replay: $REPLAY_N messages retained (retain_delivered = 7d), then replayed"
    rec replay load_at_start "$(busy)"
    rec replay free_mib_at_start "$(free_mib)"
    write_config "$conf" "$SINK_PORT" 7d "" '"1m", "5m", "15m", "1h"'
    start_sink SINK_PID "$SINK_PORT" "$sinkf" || return 1
    start_relay "$conf" || return 1
    since=$(date -u -d '-1 min' +%Y-%m-%dT%H:%M:%SZ)
    rec replay since "$since"
    t0=$(now)
    send "$REPLAY_N" replay
    rec replay send_msg_per_s "$(div "$REPLAY_N" "$SEND_S" %.0f)"
    rec replay source_rc "$SEND_RC"
    wait_metric breakwater_messages_delivered_total ge "$REPLAY_N" "$DRAIN_TIMEOUT"; t2=$WAIT_T
    if failed "$t2"; then log "  WARNING: only $LAST_VALUE delivered ($t2)"; t2=$(now); fi
    rec replay first_delivery_e2e_s "$(sub "$t2" "$t0")"
    wait_metric breakwater_retained_messages eq "$REPLAY_N" "$DRAIN_TIMEOUT"; t2=$WAIT_T
    if failed "$t2"; then
        log "  WARNING: breakwater_retained_messages = $LAST_VALUE, not $REPLAY_N ($t2)"
        rec replay retained_after_s "$t2 ($LAST_VALUE)"
    else
        rec replay retained_after_s "$(sub "$t2" "$t0")"
    fi
    rec replay sink_got_first "$(wait_sink "$sinkf" "$REPLAY_N" 5)"
    disk_rec before
    rec replay vmhwm_mib_before "$(mib "$(mem_kib VmHWM)")"

    log "  replay --dry-run"
    rec replay load_at_dry_run "$(busy)"
    run_cli "$OUT/replay-dry.out" replay --since "$since" --dry-run --admin "$ADMIN"
    rec replay dry_run_s "$CLI_S"
    rec replay dry_run_says "$(tail -1 "$OUT/replay-dry.out")"
    rec replay vmhwm_mib_dry "$(mib "$(mem_kib VmHWM)")"

    log "  replay (real; the CLI waits until every copy is delivered)"
    rec replay load_at_replay "$(busy)"
    c0=$(cpu_s)
    run_cli "$OUT/replay-1.out" replay --since "$since" --admin "$ADMIN"
    c1=$(cpu_s)
    rec replay replay_queue_s "$CLI_FIRST"
    rec replay replay_total_s "$CLI_S"
    rec replay vmhwm_mib_replay "$(mib "$(mem_kib VmHWM)")"
    rec replay replay_msg_per_s "$(div "$REPLAY_N" "$CLI_S" %.0f)"
    rec replay replay_queue_msg_per_s "$(div "$REPLAY_N" "$CLI_FIRST" %.0f)"
    rec replay replay_relay_cpu_ms_per_msg "$(awk -v a="$c0" -v b="$c1" -v n="$REPLAY_N" 'BEGIN{printf "%.3f", (b-a)*1000/n}')"
    rec replay replay_says "$(head -1 "$OUT/replay-1.out") / $(tail -1 "$OUT/replay-1.out")"
    got=$(wait_sink "$sinkf" $((2 * REPLAY_N)) 10)
    rec replay sink_got_total "$got (want $((2 * REPLAY_N)))"
    rec replay replayed_messages_total "$(metric breakwater_replayed_messages_total)"
    rec replay delivered_total_after "$(metric breakwater_messages_delivered_total)"
    rec replay queue_depth_after "$(metric breakwater_queue_depth)"
    [ "$got" = $((2 * REPLAY_N)) ] || log "  WARNING: the sink got $got, not $((2 * REPLAY_N))"

    log "  the same replay again (--json): must queue nothing"
    run_cli "$OUT/replay-2.out" replay --since "$since" --admin "$ADMIN" --json
    rec replay replay_again_s "$CLI_S"
    q=$(tr -d ' \n' < "$OUT/replay-2.out" | grep -o '"queued":[0-9]*' | cut -d: -f2)
    rec replay replay_again_queued "${q:-n/a}"
    rec replay replay_again_says "$(tr -d ' \n' < "$OUT/replay-2.out" | head -c 200)"
    [ "$q" = 0 ] || log "  WARNING: the second replay queued ${q:-?}, not 0"
    sleep 1
    rec replay sink_got_after_again "$(sink_count "$sinkf")"
    disk_rec after
    rec replay vmhwm_mib "$(mib "$(mem_kib VmHWM)")"
    rec replay vmrss_mib "$(mib "$(mem_kib VmRSS)")"
    stop_relay
    stop_pid "$SINK_PID"; SINK_PID=""
}

# the same REPLAY_N messages queued (backend: DEAD_PORT), retain_delivered = 0s
phase_queued() {
    local conf=$OUT/queued.toml t fs du jb
    log "queued: $REPLAY_N messages queued, not retained (backend down), for the file size"
    rec queued load_at_start "$(busy)"
    write_config "$conf" "$DEAD_PORT" 0s "" '"1h"'
    start_relay "$conf" || return 1
    send "$REPLAY_N" queued
    wait_metric breakwater_queue_depth ge "$REPLAY_N" 60; t=$WAIT_T
    failed "$t" && log "  WARNING: queue depth $LAST_VALUE, not $REPLAY_N ($t)"
    sleep 1
    jb=$(metric breakwater_journal_bytes)
    fs=$(stat -c %s "$OUT/journal/journal.redb" 2>/dev/null || echo n/a)
    du=$(du -B1 "$OUT/journal/journal.redb" 2>/dev/null | cut -f1)
    rec queued queue_depth "$LAST_VALUE"
    rec queued journal_bytes_metric "$jb"
    rec queued file_bytes_stat "$fs"
    rec queued file_bytes_per_msg "$(div "$fs" "$LAST_VALUE" %.0f)"
    rec queued du_bytes_per_msg "$(div "${du:-x}" "$LAST_VALUE" %.0f)"
    stop_relay
}

# ------------------------------------------------------------------ main
T_BEGIN=$(now)
FREE0=$(free_mib)
# journal.min_free_bytes = 0 switches off the relay's own guard: a file system that
# fills up (this machine's disk is shared) would make the figures meaningless
[ "${FREE0:-0}" -ge "$MIN_FREE_MIB" ] || log "WARNING: only ${FREE0:-?} MiB free on the file system of $OUT"
START_DATE=$(date -u +%FT%TZ)
START_UPTIME=$(uptime)
log "continuity-bench: $("$BW_BIN" --version 2>/dev/null | head -1), nproc=$(nproc), N=$N REPLAY_N=$REPLAY_N SIZE=$SIZE SESSIONS=$SESSIONS PHASES='$PHASES', load and rustc/fuzz processes: $(busy)"
declare -a COLS KINDS
declare -A SEEN
for k in $PHASES; do
    SEEN[$k]=$(( ${SEEN[$k]:-0} + 1 ))
    COLS+=("$k${SEEN[$k]}"); KINDS+=("$k")
done
for i in "${!COLS[@]}"; do
    phase "${KINDS[$i]}" "${COLS[$i]}" || { log "phase ${COLS[$i]} failed"; cleanup; }
done
if [ "$REPLAY" = 1 ]; then
    phase_replay || { log "replay phase failed"; cleanup; }
    if [ "$QUEUED_CMP" = 1 ]; then phase_queued || { log "queued phase failed"; cleanup; }; fi
fi
cleanup
END_UPTIME=$(uptime)

# ------------------------------------------------------------------ summary
line() { printf '%-44s' "$1"; shift; for c in "$@"; do printf ' %13s' "$c"; done; echo; }
trow() {   # trow LABEL METRIC: one row over the throughput phases
    local l=$1 m=$2 c v=()
    for c in "${COLS[@]}"; do v+=("$(get "$c" "$m")"); done
    line "$l" "${v[@]}"
}
kv() { printf '%-52s %s\n' "$1" "$2"; }
vs_none() {   # vs_none LABEL METRIC: each phase against the mean of the none phases
    local l=$1 m=$2 c i sum=0 n=0 x v=()
    for i in "${!COLS[@]}"; do
        x=$(get "${COLS[$i]}" "$m")
        [ "${KINDS[$i]}" = none ] && [[ $x =~ ^[0-9.]+$ ]] && { sum=$(awk -v a="$sum" -v b="$x" 'BEGIN{print a+b}'); n=$((n + 1)); }
    done
    for c in "${COLS[@]}"; do
        x=$(get "$c" "$m")
        if [ "$n" -gt 0 ] && [[ $x =~ ^[0-9.]+$ ]]; then
            v+=("$(awk -v x="$x" -v s="$sum" -v n="$n" 'BEGIN{m=s/n; if (m == 0) print "n/a"; else printf "%+.1f%%", (x-m)/m*100}')")
        else v+=(n/a); fi
    done
    line "$l" "${v[@]}"
}
{
    echo "breakwater continuity-bench $START_DATE  $("$BW_BIN" --version 2>/dev/null | head -1)"
    echo "command: $CMDLINE"
    echo "(N=$N REPLAY_N=$REPLAY_N SIZE=$SIZE SESSIONS=$SESSIONS PHASES='$PHASES'; free on $OUT's file system at start: ${FREE0:-?} MiB)"
    echo "uptime at start: $START_UPTIME"
    echo "uptime at end:   $END_UPTIME"
    echo "nproc=$(nproc); [delivery] concurrency=$CONCURRENCY, [health] interval=$HEALTH_INTERVAL, mirror max_connections=$MIRROR_CONNECTIONS; smtp-source -s $SESSIONS -l $SIZE, one message per connection"
    if [ "${#COLS[@]}" -gt 0 ]; then
    echo
    echo "1. accept + drain, $N messages per phase (up = [[mirror]] to a live smtp-sink, down = to a closed port)"
    line "phase" "${COLS[@]}"
    trow "1-min load average at start" load_at_start
    trow "  rustc / fuzz processes then (others')" others_at_start
    trow "free MiB where the journal is, at start" free_mib_at_start
    trow "smtp-source exit status" source_rc
    trow "mirror_up before sending (want 1 up, 0 down)" mirror_up_before_send
    trow "  reached after the relay was ready, s" mirror_state_s
    trow "accept (smtp-source wall), s" accept_s
    trow "accept, msg/s" accept_msg_per_s
    trow "drain after the last send, s" drain_s
    trow "end to end (first send to N delivered), s" e2e_s
    trow "end to end, msg/s" e2e_msg_per_s
    trow "standby has every copy (from 1st send), s" standby_all_s
    trow "  standby, msg/s" standby_msg_per_s
    trow "  standby after the backend had all, s" standby_lag_s
    trow "backend sink got" backend_sink_got
    trow "standby sink got" standby_sink_got
    trow "mirror_deliveries_total{delivered}" mirror_delivered_total
    trow "mirror_deliveries_total{deferred}" mirror_deferred_total
    trow "mirror_queue_depth at the end" mirror_depth_end
    trow "queue_depth at the end" queue_depth_end
    trow "relay CPU, ms/msg (send to end of work)" relay_cpu_ms_per_msg
    trow "host CPU busy, % (2 cores, same span)" host_busy_pct
    trow "relay peak RSS (VmHWM), MiB" vmhwm_mib
    trow "relay VmRSS at the end, MiB" vmrss_mib
    trow "journal file at the end, bytes" journal_bytes_end
    vs_none "end to end msg/s vs mean of the none phases" e2e_msg_per_s
    vs_none "relay CPU/msg vs mean of the none phases" relay_cpu_ms_per_msg
    echo "(n/a: no such figure for the phase, or a metric not exported yet, e.g. a counter never incremented)"
    fi
    if [ "$REPLAY" = 1 ]; then
        echo
        echo "2. replay of $REPLAY_N retained messages (retain_delivered = 7d)"
        kv "1-min load, rustc/fuzz: at start; dry run; replay" "$(get replay load_at_start); $(get replay load_at_dry_run); $(get replay load_at_replay)"
        kv "smtp-source exit status; free MiB at start" "$(get replay source_rc); $(get replay free_mib_at_start)"
        kv "first delivery: accept msg/s; e2e s" "$(get replay send_msg_per_s); $(get replay first_delivery_e2e_s)"
        kv "retained = REPLAY_N after (from the 1st send), s" "$(get replay retained_after_s)"
        kv "replay --dry-run (selection), s" "$(get replay dry_run_s)"
        kv "  it said" "$(get replay dry_run_says)"
        kv "replay: POST answered (all queued), s" "$(get replay replay_queue_s)"
        kv "  queued, msg/s" "$(get replay replay_queue_msg_per_s)"
        kv "replay: all delivered (CLI exit), s" "$(get replay replay_total_s)"
        kv "  replayed, msg/s" "$(get replay replay_msg_per_s)"
        kv "  relay CPU, ms per replayed msg" "$(get replay replay_relay_cpu_ms_per_msg)"
        kv "  it said" "$(get replay replay_says)"
        kv "  sink got in all" "$(get replay sink_got_total)"
        kv "  breakwater_replayed_messages_total" "$(get replay replayed_messages_total)"
        kv "  breakwater_messages_delivered_total after" "$(get replay delivered_total_after)"
        kv "  breakwater_queue_depth after" "$(get replay queue_depth_after)"
        kv "same replay again: s; queued" "$(get replay replay_again_s); $(get replay replay_again_queued)"
        kv "  it said (--json)" "$(get replay replay_again_says)"
        kv "  sink got in all after it" "$(get replay sink_got_after_again)"
        kv "relay VmHWM MiB: retained; +dry run; +replay; end" "$(get replay vmhwm_mib_before); $(get replay vmhwm_mib_dry); $(get replay vmhwm_mib_replay); $(get replay vmhwm_mib)"
        kv "relay VmRSS at the end, MiB" "$(get replay vmrss_mib)"
        echo
        echo "3. disk per retained message ($SIZE-byte bodies as smtp-source sends them)"
        line "" "before replay" "after replay"
        for m in retained_messages retained_bytes stored_bytes_per_msg file_bytes_stat file_bytes_du file_bytes_per_msg du_bytes_per_msg overhead_ratio; do
            line "$m" "$(get replay "before_$m")" "$(get replay "after_$m")"
        done
        if [ "$QUEUED_CMP" = 1 ]; then
            kv "same $REPLAY_N queued, not retained: file bytes; per msg" "$(get queued file_bytes_stat); $(get queued file_bytes_per_msg) (du: $(get queued du_bytes_per_msg)/msg) [load, rustc/fuzz: $(get queued load_at_start)]"
        fi
        kv "empty journal file, bytes (none1 at start)" "$(get "${COLS[0]:-x}" journal_bytes_empty)"
    fi
    echo
    echo "bench runtime: $(sub "$(now)" "$T_BEGIN") s; raw figures: $RESULTS; logs: $BLOG, $RLOG"
} > "$SUMMARY"
echo
cat "$SUMMARY"
