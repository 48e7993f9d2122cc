//! Reload without a restart: SIGHUP and `POST /api/reload` read the config
//! file again (DESIGN.md, "SIGHUP"). The new file is checked whole first
//! (every key, the TLS pair, the recipient list); if anything is wrong it is
//! refused, each problem logged with its key path, the failure counted in
//! `breakwater_config_reload_failures_total`, and the running config stays.
//! Otherwise it takes effect without dropping anything in flight: sessions
//! already open finish on the config they started with (like Postfix's smtpd
//! processes after `postfix reload`), deliveries in flight finish on their
//! connections, and backends are matched by `name` (mail is not tied to a
//! backend, so a renamed address or a removed backend loses nothing: the
//! queue goes to the backends of the new file). What cannot change in a
//! running process (listen addresses, the journal, the connection limit, TLS
//! on or off) keeps its running value and the log says "restart needed".

use crate::config::{self, Config};
use crate::health::{self, Health};
use crate::smtp;
use std::sync::{Arc, Mutex, RwLock};
use tokio_util::sync::CancellationToken;

/// What a reload touches.
pub(crate) struct Reloader {
    pub ctx: Arc<smtp::Context>,
    pub health: Arc<Health>,
    /// Cancels the running health monitor (a child of the shutdown token).
    pub monitor: Mutex<CancellationToken>,
    /// The admin API's token and backend list.
    pub token: Arc<RwLock<Option<String>>>,
    pub backends: Arc<RwLock<Vec<(String, String)>>>,
    /// `/mail`'s users (`[[mailbox_access]]`), live like the token.
    pub mailbox_access: Arc<RwLock<Vec<config::MailboxAccess>>>,
}

impl Reloader {
    /// Starts the health monitor for `config` (again).
    pub fn start_monitor(&self, config: &Config) {
        let token = self.ctx.shutdown.child_token();
        let old = std::mem::replace(
            &mut *self.monitor.lock().expect("monitor lock"),
            token.clone(),
        );
        old.cancel();
        let mirrors = self.ctx.queue.gate().mirrors().clone();
        health::spawn_monitors(self.health.clone(), mirrors, config, token);
    }

    /// Reloads; a summary of what changed, or why nothing did.
    pub fn reload(&self) -> Result<String, String> {
        let result = self.try_reload();
        match &result {
            Ok(summary) => {
                tracing::info!("config reloaded: {summary}");
                self.ctx
                    .metrics
                    .config_last_reload_success
                    .set(chrono::Utc::now().timestamp());
            }
            Err(why) => {
                tracing::error!("config reload refused, the running config stays: {why}");
                self.ctx.metrics.config_reload_failures.inc();
            }
        }
        result
    }

    fn try_reload(&self) -> Result<String, String> {
        let old = self.ctx.config();
        let Some(path) = old.source.clone() else {
            // A config that came from no file (tests): certificate and list only.
            return self
                .reload_files(&old)
                .map(|()| "certificate and recipient list re-read".into());
        };
        let mut new = match Config::load(&path) {
            Ok(c) => c,
            Err(config::Error::Invalid(problems)) => {
                for p in &problems {
                    tracing::error!("config reload: {}: {p}", path.display());
                }
                return Err(problems
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join("; "));
            }
            Err(e) => return Err(e.to_string()),
        };
        let restart = self.keep_running_values(&old, &mut new);
        // Everything that can fail is tried before anything changes.
        if let (Some(_), Some(t)) = (&self.ctx.tls, &new.smtp.tls) {
            smtp::tls::Tls::check(t).map_err(|e| format!("smtp.tls: {e}"))?;
        }
        let token = new
            .admin
            .token()
            .map_err(|e| format!("admin.token_file: {e}"))?;
        let recipients = smtp::recipients::Recipients::new(&new, self.ctx.queue.gate().clone())
            .map_err(|e| format!("relay.recipients: {e}"))?;
        let changes = describe(&old, &new);

        if let (Some(tls), Some(t)) = (&self.ctx.tls, &new.smtp.tls) {
            tls.reload_from(t).map_err(|e| format!("smtp.tls: {e}"))?;
        }
        let key = |c: &Config| {
            c.backend
                .iter()
                .map(|b| (b.name.clone(), b.address.clone(), b.priority))
                .collect::<Vec<_>>()
        };
        self.ctx.queue.reconfigure(&new, key(&old) != key(&new))?;
        self.health.reconfigure(&new.backend, &new.health);
        let standbys: Vec<config::Backend> =
            new.mirror.iter().map(config::Mirror::as_backend).collect();
        self.ctx
            .queue
            .gate()
            .mirrors()
            .reconfigure(&standbys, &new.health);
        let new = Arc::new(new);
        *self.ctx.recipients.write().expect("recipients lock") = Arc::new(recipients);
        *self.ctx.config.write().expect("config lock") = new.clone();
        self.ctx.auth.memory.set_limit(new.auth.max_memory);
        *self.token.write().expect("token lock") = token;
        *self.mailbox_access.write().expect("access lock") = new.mailbox_access.clone();
        *self.backends.write().expect("backends lock") = new
            .backend
            .iter()
            .map(|b| (b.name.clone(), b.address.clone()))
            .collect();
        self.start_monitor(&new);
        for r in &restart {
            tracing::warn!("config reload: {r}: restart needed; the running value stays");
        }
        let mut summary = if changes.is_empty() {
            "no change".to_owned()
        } else {
            changes.join("; ")
        };
        if !restart.is_empty() {
            summary.push_str(&format!("; restart needed for {}", restart.join(", ")));
        }
        Ok(summary)
    }

    /// Without a file: re-reads the certificate and the recipient list.
    fn reload_files(&self, config: &Config) -> Result<(), String> {
        let mut failures = Vec::new();
        if let Some(tls) = &self.ctx.tls
            && let Err(e) = tls.reload()
        {
            failures.push(format!("smtp.tls: {e}"));
        }
        if config.relay.recipients.is_some()
            && let Err(e) = self.ctx.recipients().reload()
        {
            failures.push(format!("relay.recipients: {e}"));
        }
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("; "))
        }
    }

    /// Puts back the values a running process cannot change; returns their keys.
    fn keep_running_values(&self, old: &Config, new: &mut Config) -> Vec<&'static str> {
        let mut keys = Vec::new();
        if new.smtp.listen != old.smtp.listen {
            new.smtp.listen = old.smtp.listen.clone();
            keys.push("smtp.listen");
        }
        if new.smtp.max_connections != old.smtp.max_connections {
            new.smtp.max_connections = old.smtp.max_connections;
            keys.push("smtp.max_connections");
        }
        if new.admin.listen != old.admin.listen {
            new.admin.listen = old.admin.listen.clone();
            keys.push("admin.listen");
        }
        if new.journal.path != old.journal.path
            || new.journal.max_bytes != old.journal.max_bytes
            || new.journal.min_free_bytes != old.journal.min_free_bytes
        {
            // journal.retain_delivered is live (it applies to jobs ending from now on).
            let retain = new.journal.retain_delivered;
            new.journal = old.journal.clone();
            new.journal.retain_delivered = retain;
            keys.push("journal");
        }
        if new.smtp.tls.is_some() != self.ctx.tls.is_some() {
            new.smtp.tls = old.smtp.tls.clone();
            keys.push("smtp.tls (on or off)");
        }
        if new.log.format != old.log.format {
            keys.push("log.format");
        }
        keys
    }
}

/// What a reload changes, for the log and the API's answer.
fn describe(old: &Config, new: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for b in &new.backend {
        match old.backend.iter().find(|o| o.name == b.name) {
            None => out.push(format!("backend {} added ({})", b.name, b.address)),
            Some(o) if o.address != b.address => out.push(format!(
                "backend {} moved {} -> {}",
                b.name, o.address, b.address
            )),
            Some(o) if o.priority != b.priority => out.push(format!(
                "backend {} priority {} -> {}",
                b.name, o.priority, b.priority
            )),
            Some(_) => {}
        }
    }
    for o in &old.backend {
        if !new.backend.iter().any(|b| b.name == o.name) {
            out.push(format!(
                "backend {} removed (its mail goes to the others)",
                o.name
            ));
        }
    }
    let names = |c: &Config| {
        c.quiet_time
            .iter()
            .map(|q| q.name.clone())
            .collect::<Vec<_>>()
    };
    if old.auth.max_memory != new.auth.max_memory {
        out.push(format!(
            "auth.max_memory {} -> {}",
            old.auth.max_memory, new.auth.max_memory
        ));
    }
    if old.canary != new.canary {
        out.push(match &new.canary {
            Some(c) => format!("canary every {}", c.interval),
            None => "canaries off".into(),
        });
    }
    if names(old) != names(new) {
        out.push(format!(
            "quiet windows: [{}] -> [{}]",
            names(old).join(", "),
            names(new).join(", ")
        ));
    }
    let mirrors = |c: &Config| {
        c.mirror
            .iter()
            .map(|m| format!("{} ({})", m.name, m.address))
            .collect::<Vec<_>>()
    };
    if mirrors(old) != mirrors(new) {
        out.push(format!(
            "mirrors: [{}] -> [{}]",
            mirrors(old).join(", "),
            mirrors(new).join(", ")
        ));
    }
    if old.journal.retain_delivered.0 != new.journal.retain_delivered.0 {
        out.push(format!(
            "journal.retain_delivered: {:?} -> {:?}",
            old.journal.retain_delivered.0, new.journal.retain_delivered.0
        ));
    }
    if old.relay.domains != new.relay.domains {
        out.push(format!("relay.domains: {}", new.relay.domains.join(", ")));
    }
    let users = |c: &Config| {
        c.mailbox_access
            .iter()
            .map(|m| (m.user.clone(), m.password_hash.clone(), m.addresses.clone()))
            .collect::<Vec<_>>()
    };
    if users(old) != users(new) {
        let names: Vec<&str> = new.mailbox_access.iter().map(|m| m.user.as_str()).collect();
        out.push(format!("mailbox_access: [{}]", names.join(", ")));
    }
    out
}
