#!/usr/bin/env bash
# Runs every fuzz target (or those named in TARGETS) for SECONDS each, one
# after another, and prints per target: executions, exec/s, final coverage,
# and whether anything was found.
#
#   fuzz/run.sh [SECONDS]          default 60
#   TARGETS="session" fuzz/run.sh 600
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, -Cpasses=sancov);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. `-a` keeps debug
# assertions and overflow checks on. Logs: fuzz/logs/<target>.log; crashes:
# fuzz/artifacts/<target>/.
set -uo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
targets=${TARGETS:-command_parser data_receiver bdat_receiver outbound_encoder session}
export RUSTC_BOOTSTRAP=1
mkdir -p logs

# The session target keeps a journal in /dev/shm/breakwater-fuzz-<pid>;
# remove those whose process is gone.
tidy() {
    for d in /dev/shm/breakwater-fuzz-* "${TMPDIR:-/tmp}"/breakwater-fuzz-*; do
        [ -d "$d" ] || continue
        kill -0 "${d##*-}" 2>/dev/null || rm -rf "$d"
    done
}

cargo fuzz build -a || exit 1
status=0
printf '%-16s %8s %12s %8s %8s %8s  %s\n' target seconds execs exec/s cov ft findings
for t in $targets; do
    log=logs/$t.log
    mkdir -p "corpus/$t"
    extra=()
    # The session target's relay (journal, dispatcher) lives across runs and
    # keeps what it was given: that is no leak, and checking for one after
    # every run costs more than the run itself.
    [ "$t" = session ] && extra=(-detect_leaks=0)
    cargo fuzz run -a "$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
        -print_final_stats=1 "${extra[@]}" >"$log" 2>&1
    rc=$?
    tidy
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    if [ "$rc" = 0 ]; then
        found=none
    else
        status=1
        found="exit $rc: $(grep -m1 -oE 'Test unit written to [^ ]+|panicked at [^ ]+' "$log" || echo "see $log")"
    fi
    printf '%-16s %8s %12s %8s %8s %8s  %s\n' "$t" "$secs" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${ft:-?}" "$found"
done
exit $status
