//! The verbs that talk to a running relay over its admin API (DESIGN.md, "CLI
//! contract"): tables for people, one JSON document with `--json`. Exit codes:
//! 0 ok; 1 usage, not found, refused; 2 daemon unreachable.

use breakwater::admin::api::{MessageView, Page, StatusView, WindowView};
use breakwater::config::Config;
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How to reach the daemon.
#[derive(Args, Debug, Clone)]
pub struct Daemon {
    /// Admin API base URL (default: admin.listen of --config, else http://127.0.0.1:9925).
    #[arg(long, global = true)]
    admin: Option<String>,
    /// Read admin.listen and admin.token_file from this config file.
    #[arg(long, short, global = true)]
    config: Option<PathBuf>,
    /// Print one JSON document instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand, Debug)]
pub enum QueueVerb {
    /// List queued messages, oldest first (like postqueue -p).
    List {
        /// pending, deferred, delivered, failed (any recipient in it) or held.
        #[arg(long)]
        state: Option<String>,
        /// Only messages with a recipient in this domain.
        #[arg(long)]
        domain: Option<String>,
        /// Only messages older than this (30m, 2h, 1d).
        #[arg(long)]
        older_than: Option<String>,
        /// At most this many (default 100; 0 = all).
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// Include canaries (`[canary]`), left out by default.
        #[arg(long)]
        canaries: bool,
    },
    /// One message: envelope, each recipient's state and last reply, attempts.
    Show { id: String },
    /// Make deferred mail due now: one message, or all (like postqueue -f / -i).
    Flush { id: Option<String> },
    /// Hold one message, or the whole queue (persisted; like postsuper -h).
    Hold { id: Option<String> },
    /// Release one message, or the whole queue (like postsuper -H).
    Release { id: Option<String> },
    /// Remove a message for good (like postsuper -d); logged with the reason.
    Delete {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum QuietVerb {
    /// Declare a maintenance window now: delivery is held until it ends.
    Start {
        name: String,
        /// How long (2h, 30m).
        #[arg(
            long = "for",
            conflicts_with = "until",
            required_unless_present = "until"
        )]
        for_: Option<String>,
        /// Until when (RFC 3339, e.g. 2026-12-05T06:00:00+01:00).
        #[arg(long)]
        until: Option<String>,
        /// Only these backends (repeatable; default all).
        #[arg(long = "backend")]
        backends: Vec<String>,
    },
    /// End an ad-hoc window early; the backlog goes now.
    Stop { name: String },
    /// Configured and ad-hoc windows, and which are active.
    List,
}

/// A failed call: what to print and the exit code.
struct Failure {
    code: u8,
    message: String,
}

type Outcome<T> = Result<T, Failure>;

fn usage(message: String) -> Failure {
    Failure { code: 1, message }
}

struct Client {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl Client {
    fn new(d: &Daemon) -> Outcome<Client> {
        let mut base = None;
        let mut token = std::env::var("BREAKWATER_ADMIN_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
            .map(|t| t.trim().to_owned());
        if let Some(path) = &d.config {
            let config =
                Config::load(path).map_err(|e| usage(format!("{}: {e}", path.display())))?;
            base = Some(format!("http://{}", config.admin.listen));
            if token.is_none() {
                token = config
                    .admin
                    .token()
                    .map_err(|e| usage(format!("admin.token_file: {e}")))?;
            }
        }
        if let Some(a) = &d.admin {
            base = Some(a.clone());
        }
        let base = base.unwrap_or_else(|| "http://127.0.0.1:9925".into());
        if !base.starts_with("http://") {
            return Err(usage(format!("--admin {base:?}: must be an http:// URL")));
        }
        let agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            token,
            agent,
        })
    }

    /// Sends a request; returns the JSON body of a 2xx answer.
    fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Outcome<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let result = match (method, body) {
            ("GET", _) => with_auth(self.agent.get(&url), auth.as_deref()).call(),
            ("DELETE", _) => with_auth(self.agent.delete(&url), auth.as_deref()).call(),
            (_, Some(b)) => with_auth(self.agent.post(&url), auth.as_deref())
                .header("content-type", "application/json")
                .send(b.to_string()),
            (_, None) => with_auth(self.agent.post(&url), auth.as_deref()).send_empty(),
        };
        let mut resp = result.map_err(|e| Failure {
            code: 2,
            message: format!(
                "cannot reach the daemon at {}: {e} (is `breakwater run` up? check --admin or admin.listen in --config)",
                self.base
            ),
        })?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(64 << 20)
            .read_to_string()
            .unwrap_or_default();
        let value: serde_json::Value =
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        if (200..300).contains(&status) {
            return Ok(value);
        }
        let why = value
            .get("error")
            .and_then(|e| e.as_str())
            .map(str::to_owned)
            .unwrap_or_else(|| value.to_string());
        let hint = match status {
            401 if self.token.is_none() => {
                " (set BREAKWATER_ADMIN_TOKEN, or pass --config with admin.token_file)"
            }
            401 => {
                " (the token given was not accepted: check BREAKWATER_ADMIN_TOKEN or admin.token_file)"
            }
            _ => "",
        };
        Err(Failure {
            code: 1,
            message: format!("{status}: {why}{hint}"),
        })
    }
}

fn with_auth<B>(r: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => r.header("authorization", a),
        None => r,
    }
}

fn finish(result: Outcome<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("breakwater: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn decode<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Outcome<T> {
    serde_json::from_value(v).map_err(|e| usage(format!("unexpected answer from the daemon: {e}")))
}

/// Query-string escaping (RFC 3986 unreserved characters kept).
fn escape(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `breakwater status`.
pub fn status(d: &Daemon) -> ExitCode {
    finish((|| {
        let c = Client::new(d)?;
        let v = c.call("GET", "/api/status", None)?;
        if d.json {
            print_json(&v);
            return Ok(());
        }
        let s: StatusView = decode(v)?;
        println!("breakwater {}", s.version);
        let gate = if s.held {
            "HELD (breakwater queue release to resume)"
        } else if s.delivering {
            "open: delivering"
        } else {
            "shut: no backend may take mail now"
        };
        println!("delivery: {gate}");
        println!(
            "queue: {} message(s), oldest {}; due {}, deferred {}, held {}, in flight {}",
            s.depth,
            age(s.oldest_age_seconds),
            s.due,
            s.deferred,
            s.held_messages,
            s.in_flight
        );
        println!("journal: {} bytes on disk", s.journal_bytes);
        if let Some(why) = &s.not_ready {
            println!("NOT READY: {why}");
        }
        println!(
            "{:<16} {:<24} {:<5} {:<6} WINDOWS",
            "BACKEND", "ADDRESS", "UP", "OPEN"
        );
        for b in &s.backends {
            println!(
                "{:<16} {:<24} {:<5} {:<6} {}",
                b.name,
                b.address,
                if b.up { "up" } else { "DOWN" },
                if b.open { "yes" } else { "no" },
                if b.windows.is_empty() {
                    "-".into()
                } else {
                    b.windows.join(",")
                }
            );
        }
        if !s.flows.is_empty() {
            println!(
                "{:<20} {:<8} {:<10} {:<12} MESSAGES",
                "FLOW", "STATE", "LAST SEEN", "MAX SILENCE"
            );
        }
        for f in &s.flows {
            let state = match (f.silent, f.active) {
                (true, _) => "SILENT",
                (false, true) => "ok",
                (false, false) => "inactive",
            };
            let seen = f
                .last_seen_age_seconds
                .map_or("never".to_string(), |a| format!("{} ago", age(a.max(1))));
            println!(
                "{:<20} {:<8} {:<10} {:<12} {}",
                f.name,
                state,
                seen,
                age(f.max_silence_seconds),
                f.messages
            );
        }
        Ok(())
    })())
}

fn age(secs: u64) -> String {
    match secs {
        0 => "-".into(),
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// `breakwater queue ...`.
pub fn queue(verb: QueueVerb, d: &Daemon) -> ExitCode {
    finish((|| {
        let c = Client::new(d)?;
        let id_path = |id: &str| escape(id);
        let v = match verb {
            QueueVerb::List {
                state,
                domain,
                older_than,
                limit,
                canaries,
            } => return list(&c, d.json, state, domain, older_than, limit, canaries),
            QueueVerb::Show { id } => {
                let v = c.call("GET", &format!("/api/queue/{}", id_path(&id)), None)?;
                if d.json {
                    print_json(&v);
                } else {
                    show(&decode(v)?);
                }
                return Ok(());
            }
            QueueVerb::Flush { id: None } => c.call("POST", "/api/queue/flush", None)?,
            QueueVerb::Flush { id: Some(id) } => {
                c.call("POST", &format!("/api/queue/flush/{}", id_path(&id)), None)?
            }
            QueueVerb::Hold { id: None } => c.call("POST", "/api/queue/hold", None)?,
            QueueVerb::Hold { id: Some(id) } => {
                c.call("POST", &format!("/api/queue/hold/{}", id_path(&id)), None)?
            }
            QueueVerb::Release { id: None } => c.call("POST", "/api/queue/release", None)?,
            QueueVerb::Release { id: Some(id) } => c.call(
                "POST",
                &format!("/api/queue/release/{}", id_path(&id)),
                None,
            )?,
            QueueVerb::Delete { id, reason } => {
                let q = reason
                    .map(|r| format!("?reason={}", escape(&r)))
                    .unwrap_or_default();
                c.call("DELETE", &format!("/api/queue/{}{q}", id_path(&id)), None)?
            }
        };
        if d.json {
            print_json(&v);
        } else {
            println!("{}", summary(&v));
        }
        Ok(())
    })())
}

/// One line for people from an action's JSON answer.
fn summary(v: &serde_json::Value) -> String {
    let Some(o) = v.as_object() else {
        return v.to_string();
    };
    o.iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}: {s}"),
            other => format!("{k}: {other}"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn list(
    c: &Client,
    json: bool,
    state: Option<String>,
    domain: Option<String>,
    older_than: Option<String>,
    limit: usize,
    canaries: bool,
) -> Outcome<()> {
    let mut messages: Vec<MessageView> = Vec::new();
    let mut cursor: Option<String> = None;
    let want = if limit == 0 { usize::MAX } else { limit };
    // Bounded: each page moves the cursor forward, and the queue is finite.
    for _ in 0..1_000_000 {
        let mut q = vec![format!("limit={}", (want - messages.len()).min(1000))];
        if let Some(s) = &state {
            q.push(format!("state={}", escape(s)));
        }
        if let Some(dm) = &domain {
            q.push(format!("domain={}", escape(dm)));
        }
        if let Some(o) = &older_than {
            q.push(format!("older_than={}", escape(o)));
        }
        if let Some(cur) = &cursor {
            q.push(format!("cursor={}", escape(cur)));
        }
        if canaries {
            q.push("canaries=true".into());
        }
        let page: Page = decode(c.call("GET", &format!("/api/queue?{}", q.join("&")), None)?)?;
        messages.extend(page.messages);
        cursor = page.next;
        if cursor.is_none() || messages.len() >= want {
            break;
        }
    }
    let next = if messages.len() >= want { cursor } else { None };
    if json {
        print_json(&Page { messages, next });
        return Ok(());
    }
    if messages.is_empty() {
        println!(
            "queue is empty{}",
            if state.is_some() || domain.is_some() || older_than.is_some() {
                " (for this filter)"
            } else {
                ""
            }
        );
        return Ok(());
    }
    println!(
        "{:<16} {:<25} {:>9} {:<4} {:<30} RECIPIENTS",
        "ID", "ARRIVED", "SIZE", "HELD", "FROM"
    );
    for m in &messages {
        let rcpts: Vec<String> = m
            .recipients
            .iter()
            .map(|r| format!("{} ({})", r.address, r.state))
            .collect();
        println!(
            "{:<16} {:<25} {:>9} {:<4} {:<30} {}",
            m.id,
            m.arrived.as_deref().unwrap_or("-"),
            m.size,
            if m.held { "yes" } else { "" },
            format!("<{}>", m.from),
            rcpts.join(", ")
        );
    }
    println!(
        "-- {} message(s){}",
        messages.len(),
        if next.is_some() {
            "; more: raise --limit (0 = all)"
        } else {
            ""
        }
    );
    Ok(())
}

fn show(m: &MessageView) {
    println!("id:       {}", m.id);
    println!("kind:     {}", m.kind);
    println!("from:     <{}>", m.from);
    println!("arrived:  {}", m.arrived.as_deref().unwrap_or("-"));
    println!("size:     {} bytes", m.size);
    println!("held:     {}", if m.held { "yes" } else { "no" });
    println!(
        "client:   {} (HELO {}){}",
        m.client_ip,
        m.helo,
        m.tls.as_ref().map(|t| format!(", {t}")).unwrap_or_default()
    );
    println!("recipients:");
    for r in &m.recipients {
        let reply = r
            .last_reply
            .as_ref()
            .map(|x| x.to_string())
            .unwrap_or_else(|| "-".into());
        println!(
            "  <{}> {} attempts={} last_reply=\"{reply}\"",
            r.address, r.state, r.attempts
        );
        if let Some(n) = &r.next_attempt {
            println!("      next attempt {n}");
        }
        if let Some(b) = &r.backend {
            println!("      delivered to {b}");
        }
    }
    if let Some(until) = &m.retained_until {
        println!("retained: until {until} (journal.retain_delivered)");
    }
    for j in &m.jobs {
        let states: Vec<String> = j
            .recipients
            .iter()
            .map(|r| format!("<{}> {}", r.address, r.state))
            .collect();
        println!("job:      {} {} {}", j.id, j.purpose, states.join(", "));
    }
    if let Some(attempts) = &m.attempts {
        println!("attempts:");
        if attempts.is_empty() {
            println!("  none yet");
        }
        for a in attempts {
            println!(
                "  {} backend={} delivered={} deferred={} failed={} reply=\"{}\"",
                a.at.as_deref().unwrap_or("-"),
                a.backend.as_deref().unwrap_or("none"),
                a.delivered,
                a.deferred,
                a.failed,
                a.reply.as_ref().map(|x| x.to_string()).unwrap_or_default()
            );
        }
    }
}

/// `breakwater quiet ...`.
pub fn quiet(verb: QuietVerb, d: &Daemon) -> ExitCode {
    finish((|| {
        let c = Client::new(d)?;
        match verb {
            QuietVerb::Start {
                name,
                for_,
                until,
                backends,
            } => {
                let mut body = serde_json::json!({"name": name, "backends": backends});
                if let Some(f) = for_ {
                    body["for"] = f.into();
                }
                if let Some(u) = until {
                    body["until"] = u.into();
                }
                let v = c.call("POST", "/api/quiet", Some(body))?;
                if d.json {
                    print_json(&v);
                } else {
                    println!(
                        "quiet window {name:?} active until {}",
                        v["until"].as_str().unwrap_or("?")
                    );
                }
            }
            QuietVerb::Stop { name } => {
                let v = c.call("DELETE", &format!("/api/quiet/{}", escape(&name)), None)?;
                if d.json {
                    print_json(&v);
                } else {
                    println!("quiet window {name:?} stopped");
                }
            }
            QuietVerb::List => {
                let v = c.call("GET", "/api/quiet", None)?;
                if d.json {
                    print_json(&v);
                    return Ok(());
                }
                let windows: Vec<WindowView> = decode(v["windows"].clone())?;
                if windows.is_empty() {
                    println!("no quiet-time windows");
                }
                println!(
                    "{:<20} {:<7} {:<7} {:<16} {:<28} SPAN",
                    "NAME", "SOURCE", "ACTIVE", "BACKENDS", "NEXT CHANGE"
                );
                for w in windows {
                    println!(
                        "{:<20} {:<7} {:<7} {:<16} {:<28} {}",
                        w.name,
                        w.source,
                        if w.active { "YES" } else { "no" },
                        if w.backends.is_empty() {
                            "all".into()
                        } else {
                            w.backends.join(",")
                        },
                        w.next_change.as_deref().unwrap_or("-"),
                        w.span
                    );
                }
            }
        }
        Ok(())
    })())
}

/// Which stored messages `replay` and `export` take.
#[derive(Args, Debug)]
pub struct Selection {
    /// Messages that arrived at or after this (RFC 3339, or YYYY-MM-DD in UTC).
    #[arg(long)]
    since: String,
    /// ... and before this.
    #[arg(long)]
    until: Option<String>,
    /// Only messages (and, for replay, recipients) matching this
    /// (user@example.com or *@example.com).
    #[arg(long)]
    recipient: Option<String>,
}

/// `breakwater replay` options.
#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    select: Selection,
    /// Only to this backend.
    #[arg(long)]
    to: Option<String>,
    /// List what would go; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// Queue the replay and return; do not wait for its deliveries.
    #[arg(long)]
    no_wait: bool,
}

/// `breakwater replay`: re-deliver retained mail after a backend restore.
pub fn replay(a: ReplayArgs, d: &Daemon) -> ExitCode {
    use breakwater::admin::history::{ReplayAnswer, ReplayStatus};
    finish((|| {
        let c = Client::new(d)?;
        let body = serde_json::json!({
            "since": a.select.since, "until": a.select.until, "recipient": a.select.recipient,
            "to": a.to, "dry_run": a.dry_run,
        });
        let answer: ReplayAnswer = decode(c.call("POST", "/api/replay", Some(body))?)?;
        if a.dry_run {
            if d.json {
                print_json(&answer);
                return Ok(());
            }
            for m in &answer.messages {
                println!(
                    "{} {:<30} <{}> -> {}",
                    m.id,
                    m.arrived.as_deref().unwrap_or("-"),
                    m.from,
                    m.recipients.join(", ")
                );
            }
            println!(
                "dry run: replay {} would send {} message(s); nothing was sent",
                answer.id, answer.matched
            );
            return Ok(());
        }
        if !d.json {
            println!(
                "replay {}: matched {}, queued {}, skipped {} (replayed before)",
                answer.id, answer.matched, answer.queued, answer.skipped
            );
        }
        if a.no_wait {
            if d.json {
                print_json(&answer);
            }
            return Ok(());
        }
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let path = format!("/api/replay/{}", answer.id);
        let status = loop {
            let s: ReplayStatus = decode(c.call("GET", &path, None)?)?;
            let done = s.delivered + s.failed;
            if tty {
                eprint!("\r{}", progress_bar(done, s.queued));
            }
            if done >= s.queued {
                break s;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        if tty {
            eprintln!();
        }
        if d.json {
            print_json(&serde_json::json!({
                "id": answer.id, "matched": answer.matched, "queued": answer.queued,
                "skipped": answer.skipped, "delivered": status.delivered, "failed": status.failed,
            }));
        } else {
            println!(
                "replay {}: matched {}, delivered {}, failed {}, skipped {}",
                answer.id, answer.matched, status.delivered, status.failed, answer.skipped
            );
        }
        Ok(())
    })())
}

/// `[#####.....] 50/100` for a terminal.
fn progress_bar(done: u64, total: u64) -> String {
    const WIDTH: u64 = 40;
    let filled = (done.min(total) * WIDTH)
        .checked_div(total)
        .unwrap_or(WIDTH);
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled as usize),
        ".".repeat((WIDTH - filled) as usize)
    )
}

/// `breakwater export` options.
#[derive(Args, Debug)]
pub struct ExportArgs {
    #[command(flatten)]
    select: Selection,
    /// mbox (one file, DIR/breakwater.mbox, mboxrd, LF line ends) or maildir
    /// (DIR/new, one file per message, bytes exactly as stored).
    #[arg(long, value_parser = ["mbox", "maildir"])]
    format: String,
    /// Where to write (created if missing).
    dir: PathBuf,
}

/// `breakwater export`: retained and queued mail, for an offline restore.
/// Streams each message from the daemon to its file: constant memory.
pub fn export(a: ExportArgs, d: &Daemon) -> ExitCode {
    use breakwater::admin::history::StoredPage;
    use std::io::Write;
    finish((|| {
        let c = Client::new(d)?;
        let fail = |what: String| Failure {
            code: 1,
            message: what,
        };
        std::fs::create_dir_all(&a.dir)
            .map_err(|e| fail(format!("cannot create {}: {e}", a.dir.display())))?;
        let mut mbox = None;
        if a.format == "mbox" {
            let path = a.dir.join("breakwater.mbox");
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| fail(format!("cannot open {}: {e}", path.display())))?;
            mbox = Some((path, std::io::BufWriter::new(f)));
        } else {
            for sub in ["tmp", "new", "cur"] {
                std::fs::create_dir_all(a.dir.join(sub))
                    .map_err(|e| fail(format!("cannot create {}/{sub}: {e}", a.dir.display())))?;
            }
        }
        let host = hostname();
        let sel = &a.select;
        let mut query = format!("/api/messages?limit=1000&since={}", escape(&sel.since));
        if let Some(u) = &sel.until {
            query.push_str(&format!("&until={}", escape(u)));
        }
        if let Some(r) = &sel.recipient {
            query.push_str(&format!("&recipient={}", escape(r)));
        }
        let (mut count, mut bytes) = (0u64, 0u64);
        let mut cursor: Option<String> = None;
        for _ in 0..1_000_000 {
            let path = match &cursor {
                Some(c) => format!("{query}&cursor={c}"),
                None => query.clone(),
            };
            let page: StoredPage = decode(c.call("GET", &path, None)?)?;
            for m in &page.messages {
                let raw = format!("/api/queue/{}/raw", m.id);
                let wrote = match &mut mbox {
                    Some((path, out)) => {
                        let from = if m.from.is_empty() {
                            "MAILER-DAEMON"
                        } else {
                            &m.from
                        };
                        let date = chrono::DateTime::from_timestamp_millis(m.arrived_ms as i64)
                            .unwrap_or_default()
                            .format("%a %b %e %H:%M:%S %Y");
                        let io =
                            |e: std::io::Error| fail(format!("writing {}: {e}", path.display()));
                        writeln!(out, "From {from} {date}").map_err(io)?;
                        let n = c.stream(&raw, &mut |r| mboxrd(r, out))?;
                        writeln!(out).map_err(io)?;
                        n
                    }
                    None => {
                        let name = format!("{}.{}.{host}", m.arrived_ms / 1000, m.id);
                        let tmp = a.dir.join("tmp").join(&name);
                        let dest = a.dir.join("new").join(&name);
                        let mut f = std::fs::File::create(&tmp)
                            .map_err(|e| fail(format!("cannot create {}: {e}", tmp.display())))?;
                        let n = c.stream(&raw, &mut |r| std::io::copy(r, &mut f))?;
                        f.sync_all()
                            .and_then(|()| std::fs::rename(&tmp, &dest))
                            .map_err(|e| fail(format!("writing {}: {e}", dest.display())))?;
                        n
                    }
                };
                count += 1;
                bytes += wrote;
                if !d.json {
                    println!(
                        "{} {} bytes <{}> -> {}",
                        m.id,
                        m.size,
                        m.from,
                        m.recipients.join(", ")
                    );
                }
            }
            cursor = page.next;
            if cursor.is_none() {
                break;
            }
        }
        if let Some((path, out)) = &mut mbox {
            out.flush()
                .map_err(|e| fail(format!("writing {}: {e}", path.display())))?;
        }
        let place = match &mbox {
            Some((p, _)) => p.display().to_string(),
            None => format!("{} (maildir)", a.dir.display()),
        };
        if d.json {
            print_json(&serde_json::json!({"messages": count, "bytes": bytes, "to": place}));
        } else {
            println!("exported {count} message(s), {bytes} bytes, to {place}");
        }
        Ok(())
    })())
}

/// Copies a message into an mbox (mboxrd, as Postfix's local(8) and mutt read
/// it): CRLF line ends become LF, and a line that starts with `From ` after any
/// number of `>` gets one more `>`. Returns the bytes read.
fn mboxrd(r: &mut dyn std::io::Read, out: &mut dyn std::io::Write) -> std::io::Result<u64> {
    use std::io::BufRead;
    let mut reader = std::io::BufReader::with_capacity(64 * 1024, r);
    let mut line = Vec::with_capacity(1024);
    let mut total = 0u64;
    let mut at_start = true;
    loop {
        line.clear();
        // Bounded: a line longer than 1 MiB is written in pieces.
        let n = std::io::Read::take(&mut reader, 1 << 20).read_until(b'\n', &mut line)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
        let body = line.strip_suffix(b"\n").unwrap_or(&line);
        let ended = body.len() < line.len();
        let body = if ended {
            body.strip_suffix(b"\r").unwrap_or(body)
        } else {
            body
        };
        let quoted = at_start
            && body
                .iter()
                .position(|&b| b != b'>')
                .is_some_and(|k| body[k..].starts_with(b"From "));
        at_start = ended;
        if quoted {
            out.write_all(b">")?;
        }
        out.write_all(body)?;
        if ended {
            out.write_all(b"\n")?;
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().replace(['/', ':'], "_"))
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

impl Client {
    /// GETs `path` and hands the body to `sink` as a reader (nothing is held
    /// whole in memory); returns what `sink` says it copied.
    fn stream(
        &self,
        path: &str,
        sink: &mut dyn FnMut(&mut dyn std::io::Read) -> std::io::Result<u64>,
    ) -> Outcome<u64> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let mut resp = with_auth(self.agent.get(&url), auth.as_deref())
            .call()
            .map_err(|e| Failure {
                code: 2,
                message: format!("cannot reach the daemon at {}: {e}", self.base),
            })?;
        let status = resp.status().as_u16();
        if status != 200 {
            let text = resp.body_mut().read_to_string().unwrap_or_default();
            return Err(Failure {
                code: 1,
                message: format!("{path}: {status}: {text}"),
            });
        }
        let mut reader = resp.body_mut().as_reader();
        sink(&mut reader).map_err(|e| Failure {
            code: 1,
            message: format!("{path}: {e}"),
        })
    }
}
