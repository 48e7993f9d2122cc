//! The docker/ bundle: alert rules pass `promtool check rules` and their unit tests,
//! the Grafana dashboard and the alerts use only contract metric names, the container
//! config passes `check-config`, the two Dockerfiles' runtime stages agree, and (with
//! `BREAKWATER_DOCKER_SMOKE=1`, as root) `docker/smoke.sh` runs the image end to end.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Metric names of DESIGN.md's metrics contract.
const CONTRACT_METRICS: &[&str] = &[
    "breakwater_queue_depth",
    "breakwater_queue_oldest_age_seconds",
    "breakwater_messages_received_total",
    "breakwater_messages_delivered_total",
    "breakwater_messages_bounced_total",
    "breakwater_delivery_attempts_total",
    "breakwater_backend_up",
    "breakwater_quiet_time_active",
    "breakwater_journal_bytes",
    "breakwater_smtp_sessions_active",
    "breakwater_queue_messages",
    "breakwater_delivery_duration_seconds",
    "breakwater_config_reload_failures_total",
    "breakwater_config_last_reload_success_timestamp_seconds",
    "breakwater_smtp_rejections_total",
    "breakwater_tls_sessions_total",
    "breakwater_build_info",
    "breakwater_flow_last_seen_timestamp_seconds",
    "breakwater_flow_silent",
    "breakwater_flow_messages_total",
    "breakwater_mirror_queue_depth",
    "breakwater_canary_last_success_timestamp_seconds",
    "breakwater_canary_duration_seconds",
    "breakwater_canary_e2e_seconds",
];

/// Histograms: their series carry these suffixes.
const HISTOGRAMS: &[&str] = &[
    "breakwater_delivery_duration_seconds",
    "breakwater_canary_duration_seconds",
    "breakwater_canary_e2e_seconds",
];

/// Alert names that are a contract (routes and silences match them).
const CONTRACT_ALERTS: &[&str] = &[
    "BreakwaterBackendDown",
    "BreakwaterQueueGrowing",
    "BreakwaterOldestMessageTooOld",
    "BreakwaterQuietTimeOverrun",
    "BreakwaterJournalNearlyFull",
    "BreakwaterCanaryFailing",
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    let path = repo().join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

struct Output {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion, at most `limit`: polls `try_wait`; when time is up it
/// stops the child by PID (SIGTERM, then SIGKILL) and panics. stdout and stderr are
/// drained by threads so a chatty child cannot block on a full pipe.
fn run_bounded(mut cmd: Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > limit {
            // SIGTERM to this child's PID only (smoke.sh's trap then stops what it
            // started), SIGKILL if it is still there 30 s later.
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill(2) on our own child's PID; no memory involved.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let grace = Instant::now();
            while child.try_wait().ok().flatten().is_none()
                && grace.elapsed() < Duration::from_secs(30)
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {limit:?}; killed (pid {})\nstdout:\n{}\nstderr:\n{}",
                child.id(),
                out.join().unwrap_or_default(),
                err.join().unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        code: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    }
}

fn on_path(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(program))
            .find(|p| p.is_file())
    })
}

#[test]
fn alert_rules_pass_promtool_check_and_unit_tests() {
    let Some(promtool) = on_path("promtool") else {
        println!("skipped: promtool not installed (apt-get install prometheus)");
        return;
    };
    let docker = repo().join("docker");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let mut cmd = Command::new(&promtool);
        cmd.args(args).current_dir(&docker);
        let out = run_bounded(cmd, Duration::from_secs(60));
        assert_eq!(
            out.code,
            Some(0),
            "promtool {}:\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr
        );
        assert!(
            out.stdout.contains("SUCCESS"),
            "promtool {}: {}",
            args.join(" "),
            out.stdout
        );
    }
}

/// Every `breakwater_*` name in `text` (a name starts where the previous character
/// cannot be part of an identifier, and runs over `[A-Za-z0-9_:]`).
fn metric_names(text: &str) -> Vec<String> {
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let bytes = text.as_bytes();
    let mut names = Vec::new();
    let mut from = 0;
    while let Some(at) = text[from..].find("breakwater_") {
        let start = from + at;
        let mut end = start;
        while end < bytes.len() && ident(bytes[end]) {
            end += 1;
        }
        if start == 0 || !ident(bytes[start - 1]) {
            names.push(text[start..end].to_owned());
        }
        from = end.max(start + 1);
    }
    names
}

fn is_contract_metric(name: &str) -> bool {
    CONTRACT_METRICS.contains(&name)
        || HISTOGRAMS.iter().any(|h| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .any(|suffix| name.strip_prefix(h) == Some(suffix))
        })
}

#[test]
fn metric_name_scan_finds_names_and_suffixes() {
    let names = metric_names(
        r#"sum(rate(breakwater_delivery_duration_seconds_bucket{a="b"}[5m])) x_breakwater_no "breakwater_queue_depth""#,
    );
    assert_eq!(
        names,
        [
            "breakwater_delivery_duration_seconds_bucket",
            "breakwater_queue_depth"
        ]
    );
    assert!(is_contract_metric(
        "breakwater_delivery_duration_seconds_count"
    ));
    assert!(!is_contract_metric("breakwater_queue_depth_bucket"));
    assert!(!is_contract_metric("breakwater_queue_dept"));
}

#[test]
fn dashboard_and_alerts_use_only_contract_metrics() {
    let dashboard_text = read("docker/grafana/breakwater.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&dashboard_text).expect("docker/grafana/breakwater.json is JSON");
    assert!(
        dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36),
        "schemaVersion: {}",
        dashboard["schemaVersion"]
    );
    assert_eq!(dashboard["uid"], "breakwater");

    // Every panel with queries has a Prometheus datasource and non-empty expressions.
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("?");
        let uid = panel["datasource"]["uid"].as_str().unwrap_or("");
        assert!(
            uid == "${DS_PROMETHEUS}" || uid == "prometheus",
            "panel {title}: datasource uid {uid:?}"
        );
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title} has no query");
        for t in targets {
            let e = t["expr"].as_str().unwrap_or("");
            assert!(!e.trim().is_empty(), "panel {title}: empty expr");
            exprs.push(e.to_owned());
        }
    }
    let all = exprs.join("\n");
    for needed in [
        "breakwater_queue_depth",
        "breakwater_queue_oldest_age_seconds",
        "sum by (result) (rate(breakwater_delivery_attempts_total",
        "histogram_quantile(0.5, sum by (le) (rate(breakwater_delivery_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le) (rate(breakwater_delivery_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le) (rate(breakwater_delivery_duration_seconds_bucket",
        "breakwater_backend_up",
        "breakwater_quiet_time_active",
        "sum by (state) (breakwater_queue_messages",
        "sum by (reason) (rate(breakwater_smtp_rejections_total",
    ] {
        assert!(
            all.contains(needed),
            "no dashboard query contains {needed:?}"
        );
    }

    let alerts = read("docker/alerts.yml");
    for (file, text) in [
        ("docker/grafana/breakwater.json", dashboard_text.as_str()),
        ("docker/alerts.yml", alerts.as_str()),
        (
            "docker/alerts.test.yml",
            read("docker/alerts.test.yml").as_str(),
        ),
    ] {
        let names = metric_names(text);
        assert!(!names.is_empty(), "{file}: no breakwater_* metric found");
        let unknown: Vec<_> = names.iter().filter(|n| !is_contract_metric(n)).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metric names outside DESIGN.md's metrics contract: {unknown:?}"
        );
    }

    // The contract alert names are defined, each once, and each has unit tests.
    let tests = read("docker/alerts.test.yml");
    for name in CONTRACT_ALERTS {
        let defined = alerts.matches(&format!("- alert: {name}\n")).count();
        assert_eq!(
            defined, 1,
            "docker/alerts.yml defines {name} {defined} times"
        );
        assert!(
            tests.contains(&format!("alertname: {name}\n")),
            "docker/alerts.test.yml has no case for {name}"
        );
    }
}

#[test]
fn container_config_passes_check_config() {
    let config = repo().join("docker/breakwater.toml");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_breakwater"));
    cmd.arg("check-config").arg("--config").arg(&config);
    let out = run_bounded(cmd, Duration::from_secs(30));
    assert_eq!(
        out.code,
        Some(0),
        "check-config {}:\n{}{}",
        config.display(),
        out.stdout,
        out.stderr
    );

    // docker/smoke.sh rewrites these lines for --network host, and the Dockerfiles
    // and compose.yaml publish these ports: keep them in step.
    let text = read("docker/breakwater.toml");
    for line in [
        "listen = [\"0.0.0.0:2525\"]",
        "listen = \"0.0.0.0:9925\"",
        "address = \"backend:25\"",
        "path = \"/var/lib/breakwater\"",
        "interval = \"10s\"",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "docker/breakwater.toml has no line {line:?}"
        );
    }
    let compose = read("docker/compose.yaml");
    assert!(
        compose.contains("\"25:2525\""),
        "compose.yaml must map 25 to 2525"
    );
    assert!(
        compose.contains("\"127.0.0.1:9925:9925\""),
        "compose.yaml: admin on loopback"
    );
}

/// The runtime stage of docker/Dockerfile and docker/Dockerfile.runtime agree on
/// everything but where the binary and the config come from.
#[test]
fn runtime_stages_are_in_step() {
    let instructions = |text: &str| -> Vec<String> {
        // Joined continuation lines of the last stage, without comments and COPY.
        let last_stage = &text[text.rfind("\nFROM ").expect("a FROM line")..];
        let mut out = Vec::new();
        let mut cur = String::new();
        for line in last_stage.lines() {
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') {
                continue;
            }
            cur.push_str(t.trim_end_matches('\\').trim_end());
            cur.push(' ');
            if !t.ends_with('\\') {
                let done = cur.trim().to_owned();
                cur.clear();
                if !done.starts_with("COPY ") && !done.starts_with("RUN /usr/local/bin/breakwater")
                {
                    out.push(done);
                }
            }
        }
        out
    };
    let full = instructions(&read("docker/Dockerfile"));
    let runtime = instructions(&read("docker/Dockerfile.runtime"));
    assert_eq!(full, runtime, "runtime stages differ");
    for needed in [
        "FROM debian:bookworm-slim",
        "VOLUME /var/lib/breakwater",
        "USER breakwater:breakwater",
        "ENTRYPOINT [\"breakwater\"]",
        "CMD [\"run\", \"--config\", \"/etc/breakwater/breakwater.toml\"]",
    ] {
        assert!(
            full.iter().any(|i| i == needed),
            "runtime stage lacks {needed:?}: {full:#?}"
        );
    }
    assert!(
        full.iter()
            .any(|i| i.starts_with("HEALTHCHECK ") && i.contains("http://127.0.0.1:9925/healthz")),
        "no HEALTHCHECK on /healthz: {full:#?}"
    );
}

#[test]
fn docker_smoke() {
    if std::env::var("BREAKWATER_DOCKER_SMOKE").as_deref() != Ok("1") {
        println!(
            "skipped: set BREAKWATER_DOCKER_SMOKE=1 (as root, on Debian) to build the image and \
             run docker/smoke.sh (installs docker.io and debootstrap, may start dockerd)"
        );
        return;
    }
    let script = repo().join("docker/smoke.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script).current_dir(repo());
    // The binary under test, unless the caller chose one.
    if std::env::var_os("BREAKWATER_BIN").is_none() {
        cmd.env("BREAKWATER_BIN", env!("CARGO_BIN_EXE_breakwater"));
    }
    // Cold (debootstrap, image import) takes a few minutes; warm well under one.
    let out = run_bounded(cmd, Duration::from_secs(20 * 60));
    println!("{}", out.stdout);
    eprintln!("{}", out.stderr);
    assert_eq!(
        out.code,
        Some(0),
        "docker/smoke.sh failed:\n{}\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout.contains("smoke: PASSED") || out.stdout.contains("smoke: SKIPPED"),
        "docker/smoke.sh printed neither PASSED nor SKIPPED"
    );
}
