#!/usr/bin/env bash
# docker/smoke.sh: the container image, end to end, on a machine with no image
# registry, everything on loopback.
#
#   sudo docker/smoke.sh            (tests/docker_bundle.rs runs it with BREAKWATER_DOCKER_SMOKE=1)
#
# 1. installs what is missing (docker.io, debootstrap, postfix for smtp-sink, swaks,
#    curl); starts a docker daemon if none answers (--bridge=none --iptables=false),
#    and stops it at the end if it started it;
# 2. makes debian:bookworm-slim locally with debootstrap if it is not there (the rootfs
#    is cached in /var/cache/breakwater-smoke, so later runs skip this);
# 3. builds the runtime image (docker/Dockerfile.runtime) around target/release/breakwater;
# 4. runs it with --network host, read-only, no capabilities, on 127.0.0.1 ports, the
#    journal bind-mounted from a temp dir owned by uid 10025 with mode 0700, in front of
#    Postfix's smtp-sink on 127.0.0.1 playing the backend;
# 5. checks: check-config of the baked-in config inside the image; /healthz; docker's
#    HEALTHCHECK turns "healthy"; N messages sent with swaks are accepted, each reaches
#    the backend exactly once; breakwater_messages_delivered_total = N and
#    breakwater_queue_depth = 0 on /metrics; a foreign recipient gets 550 5.7.1; the
#    process runs as uid 10025 and the journal file is 0600; with the backend stopped a
#    message is held, survives replacing the container (docker stop, exit 0, a new
#    container on the same journal) and is delivered once the backend is back;
# 6. stops what it started (container, smtp-sink, dockerd) by name/PID, removes its temp dir.
#
# Exit 0 when everything verified passed, or when it cannot run here (not root, no
# apt-get, no docker daemon possible, no Debian mirror for debootstrap): then it
# prints "SKIPPED: reason". Exit 1 when a check failed.
#
# Environment: BREAKWATER_SMOKE_MESSAGES (5), BREAKWATER_SMOKE_CACHE
# (/var/cache/breakwater-smoke), BREAKWATER_SMOKE_MIRROR (http://deb.debian.org/debian),
# BREAKWATER_BIN (target/release/breakwater).
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS
N=${BREAKWATER_SMOKE_MESSAGES:-5}
CACHE=${BREAKWATER_SMOKE_CACHE:-/var/cache/breakwater-smoke}
MIRROR=${BREAKWATER_SMOKE_MIRROR:-http://deb.debian.org/debian}
BIN=${BREAKWATER_BIN:-$ROOT/target/release/breakwater}
IMAGE=breakwater:smoke
BASE=debian:bookworm-slim
BW_UID=10025
RUN_ID="$(date +%s)-$$"
CNAME="breakwater-smoke-$$"

say() { printf 'smoke: %s\n' "$*"; }
skip() { printf 'smoke: SKIPPED: %s\n' "$*"; exit 0; }
fail() {
    printf 'smoke: FAILED: %s\n' "$*" >&2
    if [ -n "${CONTAINER_UP:-}" ]; then
        say "container log (last 40 lines):" >&2
        docker logs --tail 40 "$CNAME" >&2 2>&1 || true
    fi
    exit 1
}
VERIFIED=()
ok() { VERIFIED+=("$*"); say "ok: $*"; }

[ "$(id -u)" = 0 ] || skip "needs root (it installs packages and may start dockerd); run it with sudo"
command -v apt-get >/dev/null 2>&1 || skip "apt-get not found (Debian or Ubuntu needed)"

TMP=""
SINK_PID=""
DOCKERD_PID=""
CONTAINER_UP=""

stop_sink() {  # by PID; smtp-sink is this shell's child
    if [ -n "$SINK_PID" ]; then
        kill -TERM "$SINK_PID" 2>/dev/null
        wait "$SINK_PID" 2>/dev/null || true   # 143: it died of our SIGTERM
        SINK_PID=""
    fi
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ -n "$CONTAINER_UP" ]; then
        docker rm -f "$CNAME" >/dev/null 2>&1
    fi
    stop_sink
    if [ -n "$DOCKERD_PID" ]; then
        say "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill -TERM "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 1 40); do
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            say "dockerd did not stop within 20 s: SIGKILL"
            kill -KILL "$DOCKERD_PID" 2>/dev/null
        fi
        wait "$DOCKERD_PID" 2>/dev/null
    fi
    [ -n "$TMP" ] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# wait_for DESCRIPTION SECONDS COMMAND...: runs COMMAND every 0.5 s until it succeeds,
# at most SECONDS seconds (and 2*SECONDS tries); returns 1 if it never did.
wait_for() {
    local what=$1 limit=$2 tries=0
    shift 2
    local deadline=$((SECONDS + limit))
    while [ "$SECONDS" -lt "$deadline" ] && [ "$tries" -lt $((limit * 2)) ]; do
        if "$@"; then return 0; fi
        tries=$((tries + 1))
        sleep 0.5
    done
    say "gave up waiting ${limit}s for: $what"
    return 1
}

# ---- 1. packages and a docker daemon -----------------------------------------------
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -x /usr/sbin/smtp-sink ] || need+=(postfix)
command -v swaks >/dev/null 2>&1 || need+=(swaks)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${#need[@]}" -gt 0 ]; then
    say "installing: ${need[*]}"
    # postfix only for its smtp-sink: "No configuration" leaves no MTA running.
    echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}"; } >/dev/null 2>&1; then
        skip "apt-get install ${need[*]} failed (no Debian mirror reachable?)"
    fi
fi
command -v docker >/dev/null 2>&1 || skip "no docker client after installing docker.io"

TMP=$(mktemp -d /tmp/breakwater-smoke.XXXXXX)
chmod 0711 "$TMP"      # smtp-sink runs as nobody and writes under $TMP/sink

if timeout 20 docker info >/dev/null 2>&1; then
    say "using the running docker daemon"
else
    say "no docker daemon answers: starting dockerd --bridge=none --iptables=false"
    dockerd --bridge=none --iptables=false >"$TMP/dockerd.log" 2>&1 &
    DOCKERD_PID=$!
    daemon_up() { kill -0 "$DOCKERD_PID" 2>/dev/null && timeout 5 docker info >/dev/null 2>&1; }
    if ! wait_for "dockerd to answer" 60 daemon_up; then
        tail -n 15 "$TMP/dockerd.log" | sed 's/^/smoke:   dockerd: /'
        skip "could not start a docker daemon here (log above)"
    fi
    say "dockerd started (pid $DOCKERD_PID)"
fi

# ---- 2. the base image, without a registry -------------------------------------------
if docker image inspect "$BASE" >/dev/null 2>&1; then
    say "$BASE exists"
else
    ROOTFS="$CACHE/bookworm-minbase"
    if [ ! -e "$ROOTFS/.complete" ]; then
        say "debootstrap --variant=minbase bookworm into $ROOTFS (once; cached)"
        rm -rf "$ROOTFS"
        mkdir -p "$CACHE"
        # ca-certificates and busybox: what Dockerfile.runtime would otherwise
        # apt-get install inside the build, which needs no network this way.
        if ! debootstrap --variant=minbase --include=ca-certificates,busybox \
                bookworm "$ROOTFS" "$MIRROR" >"$TMP/debootstrap.log" 2>&1; then
            tail -n 10 "$TMP/debootstrap.log" | sed 's/^/smoke:   debootstrap: /'
            rm -rf "$ROOTFS"
            skip "debootstrap failed (no Debian mirror at $MIRROR?)"
        fi
        chroot "$ROOTFS" apt-get clean
        rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/*.bin \
            "$ROOTFS"/usr/share/doc/* "$ROOTFS"/usr/share/man/* "$ROOTFS"/usr/share/locale/*
        touch "$ROOTFS/.complete"
    fi
    say "importing $ROOTFS as $BASE"
    tar -C "$ROOTFS" --exclude=./.complete -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        -c 'CMD ["bash"]' - "$BASE" >/dev/null
fi

# ---- 3. the runtime image around the host's binary -----------------------------------
if [ ! -x "$BIN" ]; then
    say "$BIN missing: cargo build --release --locked"
    cargo build --release --locked >"$TMP/cargo.log" 2>&1 || { tail -n 20 "$TMP/cargo.log"; fail "cargo build --release failed"; }
fi
say "binary: $BIN ($(date -u -r "$BIN" '+%Y-%m-%d %H:%M UTC'))"
mkdir "$TMP/ctx"
# Without debug info (a debug build is hundreds of MB); a plain copy if objcopy is absent.
objcopy --strip-debug "$BIN" "$TMP/ctx/breakwater" 2>/dev/null || cp "$BIN" "$TMP/ctx/breakwater"
cp docker/breakwater.toml "$TMP/ctx/breakwater.toml"
cp docker/Dockerfile.runtime "$TMP/ctx/Dockerfile"
chmod 0755 "$TMP/ctx/breakwater"
chmod 0644 "$TMP/ctx/breakwater.toml"
say "docker build -f docker/Dockerfile.runtime -t $IMAGE"
if ! DOCKER_BUILDKIT=0 docker build --network host -t "$IMAGE" "$TMP/ctx" >"$TMP/build.log" 2>&1; then
    tail -n 20 "$TMP/build.log"
    fail "docker build of docker/Dockerfile.runtime failed"
fi
rm -rf "$TMP/ctx"
ok "image $IMAGE built from docker/Dockerfile.runtime ($(docker image inspect --format '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"

out=$(docker run --rm --network none "$IMAGE" check-config --config /etc/breakwater/breakwater.toml 2>&1) \
    || fail "check-config of the baked-in docker/breakwater.toml inside the image: $out"
ok "baked-in /etc/breakwater/breakwater.toml passes check-config inside the image"
[ "$(docker image inspect --format '{{.Config.User}}' "$IMAGE")" = "breakwater:breakwater" ] \
    || fail "image USER is not breakwater:breakwater"

# ---- 4. backend, config, container ----------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
taken=" "
# pick_port VAR: sets VAR to a free 127.0.0.1 port not picked before.
pick_port() {
    local p i
    for i in $(seq 1 200); do
        p=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        case "$taken" in *" $p "*) continue ;; esac
        if port_free "$p"; then taken="$taken$p "; printf -v "$1" '%s' "$p"; return 0; fi
    done
    fail "no free port on 127.0.0.1 after 200 tries"
}
pick_port SMTP_PORT
pick_port SINK_PORT
# The image's own HEALTHCHECK probes 127.0.0.1:9925: use that port when it is free so
# the check runs exactly as built; otherwise another port and the same command.
if port_free 9925; then
    ADMIN_PORT=9925
    HEALTH_CMD=()
else
    pick_port ADMIN_PORT
    HEALTH_CMD=(--health-cmd "busybox wget -q -O /dev/null http://127.0.0.1:$ADMIN_PORT/healthz")
fi
ADMIN="http://127.0.0.1:$ADMIN_PORT"
say "ports (127.0.0.1): smtp $SMTP_PORT, admin $ADMIN_PORT, backend $SINK_PORT"

mkdir -p "$TMP/sink"
chown nobody "$TMP/sink"
sink_listening() { kill -0 "$SINK_PID" 2>/dev/null && ! port_free "$SINK_PORT"; }
start_sink() {
    /usr/sbin/smtp-sink -u nobody -h backend.smoke.test -d "$TMP/sink/%H%M%S." \
        "127.0.0.1:$SINK_PORT" 100 >>"$TMP/sink.log" 2>&1 &
    SINK_PID=$!
    wait_for "smtp-sink on 127.0.0.1:$SINK_PORT" 10 sink_listening \
        || fail "smtp-sink did not start: $(cat "$TMP/sink.log")"
}
start_sink

# docker/breakwater.toml with loopback addresses (host network) and faster probes.
sed -e "s|^listen = \\[\"0.0.0.0:2525\"\\]|listen = [\"127.0.0.1:$SMTP_PORT\"]|" \
    -e "s|^listen = \"0.0.0.0:9925\"|listen = \"127.0.0.1:$ADMIN_PORT\"|" \
    -e "s|^address = \"backend:25\"|address = \"127.0.0.1:$SINK_PORT\"|" \
    -e "s|^interval = \"10s\"|interval = \"1s\"|" \
    docker/breakwater.toml >"$TMP/breakwater.toml"
for want in "127.0.0.1:$SMTP_PORT" "127.0.0.1:$ADMIN_PORT" "127.0.0.1:$SINK_PORT" 'interval = "1s"'; do
    grep -qF "$want" "$TMP/breakwater.toml" || fail "docker/breakwater.toml changed shape: no '$want' after rewriting; update smoke.sh"
done
! grep -v '^[[:space:]]*#' "$TMP/breakwater.toml" | grep -q '0\.0\.0\.0\|backend:25' || fail "docker/breakwater.toml: an address was not rewritten; update smoke.sh"
chmod 0644 "$TMP/breakwater.toml"

mkdir "$TMP/journal"
chown "$BW_UID:$BW_UID" "$TMP/journal"
chmod 0700 "$TMP/journal"

run_container() {
    docker run -d --name "$CNAME" --network host \
        --read-only --cap-drop ALL --security-opt no-new-privileges \
        --health-interval 2s --health-timeout 3s --health-retries 3 --health-start-period 2s \
        "${HEALTH_CMD[@]}" \
        -e RUST_LOG=info \
        -v "$TMP/breakwater.toml:/etc/breakwater/breakwater.toml:ro" \
        -v "$TMP/journal:/var/lib/breakwater" \
        "$IMAGE" >/dev/null || fail "docker run failed"
    CONTAINER_UP=1
}
running() { [ "$(docker inspect --format '{{.State.Running}}' "$CNAME" 2>/dev/null)" = true ]; }
healthz() { running && curl -fsS --max-time 2 "$ADMIN/healthz" >/dev/null 2>&1; }
wait_healthz() {
    wait_for "$ADMIN/healthz" 30 healthz || fail "no answer on $ADMIN/healthz (running: $(running && echo yes || echo no))"
}
# metric NAME: its value on /metrics (unlabelled samples), or empty.
metric() { curl -fsS --max-time 3 "$ADMIN/metrics" 2>/dev/null | awk -v n="$1" '$1 == n { print $2; exit }'; }
metric_is() { local v; v=$(metric "$1"); [ -n "$v" ] && awk -v a="$v" -v b="$2" 'BEGIN { exit !(a + 0 == b + 0) }'; }
backend_up() { curl -fsS --max-time 3 "$ADMIN/metrics" 2>/dev/null | grep -q '^breakwater_backend_up{.*} 1$'; }
backend_down() { curl -fsS --max-time 3 "$ADMIN/metrics" 2>/dev/null | grep -q '^breakwater_backend_up{.*} 0$'; }
# delivered TOKEN: how many messages with TOKEN the backend stored.
delivered() { grep -lF -- "$1" "$TMP/sink"/* 2>/dev/null | wc -l; }
delivered_is() { [ "$(delivered "$1")" -eq "$2" ]; }
send() { # send TO SUBJECT LOG
    swaks --server 127.0.0.1 --port "$SMTP_PORT" --timeout 20 \
        --from smoke@client.smoke.test --to "$1" \
        --header "Subject: $2" --body "breakwater smoke test, run $RUN_ID" >"$3" 2>&1
}

run_container
wait_healthz
ok "container up: $ADMIN/healthz answers"
pid=$(docker inspect --format '{{.State.Pid}}' "$CNAME")
uid=$(awk '/^Uid:/ { print $2 " " $3 }' "/proc/$pid/status" 2>/dev/null || true)
[ "$uid" = "$BW_UID $BW_UID" ] || fail "relay process (pid $pid) runs as real/effective uid '$uid', want $BW_UID"
caps=$(awk '/^CapEff:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || true)
[ "$caps" = 0000000000000000 ] || fail "relay process has capabilities $caps, want none"
ok "relay runs as uid $BW_UID, read-only root file system, no capabilities"
wait_for "backend up on /metrics" 20 backend_up || fail "breakwater_backend_up never 1 for smtp-sink"

# ---- 5. mail through the container ------------------------------------------------------
for i in $(seq 1 "$N"); do
    send "user$i@example.com" "breakwater-smoke $RUN_ID msg-$i-end" "$TMP/swaks.$i.log" \
        || { cat "$TMP/swaks.$i.log"; fail "message $i not accepted"; }
    grep -q '<-  250 .*queued as' "$TMP/swaks.$i.log" || { cat "$TMP/swaks.$i.log"; fail "message $i: no '250 ... queued as'"; }
done
ok "$N messages accepted (250 queued as ...)"
all_there() { for i in $(seq 1 "$N"); do delivered_is "breakwater-smoke $RUN_ID msg-$i-end" 1 || return 1; done; }
wait_for "$N messages at the backend" 60 all_there || fail "the backend got $(delivered "breakwater-smoke $RUN_ID msg-") of $N messages"
ok "backend (smtp-sink) got each of the $N messages exactly once"
wait_for "breakwater_messages_delivered_total = $N" 20 metric_is breakwater_messages_delivered_total "$N" \
    || fail "breakwater_messages_delivered_total is '$(metric breakwater_messages_delivered_total)', want $N"
wait_for "breakwater_queue_depth = 0" 20 metric_is breakwater_queue_depth 0 \
    || fail "breakwater_queue_depth is '$(metric breakwater_queue_depth)', want 0"
ok "/metrics: breakwater_messages_delivered_total = $N, breakwater_queue_depth = 0"
[ "$(delivered "breakwater-smoke $RUN_ID msg-")" -eq "$N" ] || fail "the backend got more than $N messages"

if send "someone@elsewhere.test" "breakwater-smoke $RUN_ID relay" "$TMP/swaks.relay.log"; then
    cat "$TMP/swaks.relay.log"; fail "a recipient outside relay.domains was accepted (open relay)"
fi
grep -q '<\*\* 550 5\.7\.1' "$TMP/swaks.relay.log" || { cat "$TMP/swaks.relay.log"; fail "foreign recipient: no 550 5.7.1"; }
ok "recipient outside relay.domains refused with 550 5.7.1"

healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$CNAME" 2>/dev/null)" = healthy ]; }
wait_for "docker health status healthy" 30 healthy \
    || fail "docker HEALTHCHECK status is '$(docker inspect --format '{{.State.Health.Status}}' "$CNAME")', want healthy; last probes: $(docker inspect --format '{{range .State.Health.Log}}[exit {{.ExitCode}}: {{.Output}}] {{end}}' "$CNAME")"
ok "docker HEALTHCHECK (busybox wget $ADMIN/healthz) reports healthy"

[ "$(stat -c '%u %a' "$TMP/journal/journal.redb" 2>/dev/null)" = "$BW_UID 600" ] \
    || fail "journal file: $(stat -c '%u %a' "$TMP/journal/journal.redb" 2>&1), want '$BW_UID 600'"
[ "$(stat -c '%u %a' "$TMP/journal")" = "$BW_UID 700" ] || fail "journal dir: $(stat -c '%u %a' "$TMP/journal"), want '$BW_UID 700'"
ok "journal on the bind mount: dir 0700, journal.redb 0600, owner uid $BW_UID"

# ---- 6. held mail survives replacing the container ------------------------------------
stop_sink
wait_for "backend down on /metrics" 30 backend_down || fail "breakwater_backend_up never 0 with the backend stopped"
send "held@example.com" "breakwater-smoke $RUN_ID held" "$TMP/swaks.held.log" \
    || { cat "$TMP/swaks.held.log"; fail "message not accepted while the backend is down"; }
wait_for "breakwater_queue_depth = 1" 20 metric_is breakwater_queue_depth 1 \
    || fail "with the backend down, breakwater_queue_depth is '$(metric breakwater_queue_depth)', want 1"
ok "backend down: message accepted and held (breakwater_queue_depth = 1)"

docker stop -t 30 "$CNAME" >/dev/null || fail "docker stop failed"
code=$(docker inspect --format '{{.State.ExitCode}}' "$CNAME")
[ "$code" = 0 ] || fail "after docker stop (SIGTERM) the relay exited with $code, want 0"
docker rm "$CNAME" >/dev/null
CONTAINER_UP=""
ok "docker stop: graceful exit 0 on SIGTERM"

run_container
wait_healthz
wait_for "breakwater_queue_depth = 1 after the restart" 20 metric_is breakwater_queue_depth 1 \
    || fail "new container: breakwater_queue_depth is '$(metric breakwater_queue_depth)', want 1 (journal lost?)"
start_sink
wait_for "the held message at the backend" 60 delivered_is "breakwater-smoke $RUN_ID held" 1 \
    || fail "the held message did not reach the backend after it came back"
wait_for "breakwater_queue_depth = 0" 20 metric_is breakwater_queue_depth 0 \
    || fail "breakwater_queue_depth is '$(metric breakwater_queue_depth)' after the flush, want 0"
metric_is breakwater_messages_delivered_total 1 \
    || fail "new container: breakwater_messages_delivered_total is '$(metric breakwater_messages_delivered_total)', want 1"
ok "new container on the same journal: the held message was delivered when the backend came back (no command typed)"

docker stop -t 30 "$CNAME" >/dev/null
code=$(docker inspect --format '{{.State.ExitCode}}' "$CNAME")
[ "$code" = 0 ] || fail "second container exited with $code on SIGTERM"
docker rm "$CNAME" >/dev/null
CONTAINER_UP=""

say "PASSED in $((SECONDS - START)) s; verified:"
for v in "${VERIFIED[@]}"; do say "  - $v"; done
