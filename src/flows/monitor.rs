//! The alert monitor: once a second (on the relay's clock) it evaluates the
//! flows, the backends' circuits (`alert.backend_down`) and the queue's oldest
//! message (`alert.queue_age`), raises and resolves alerts, journals the
//! flows' states when they changed, and posts due webhooks.

use super::alert::{self, Alert, Sent};
use super::{Change, Flows, Shortfall, State};
use crate::config::Config;
use crate::delivery::Clock;
use crate::smtp::Context;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Journal document holding every flow's [`State`] by name.
pub const STATES_KEY: &str = "flow/states";

/// How often the monitor looks.
const TICK: Duration = Duration::from_millis(500);

/// Reads the journaled flow states (empty if none or unreadable).
pub fn load_states(journal: &crate::journal::Journal) -> Vec<(String, State)> {
    match journal.document(STATES_KEY) {
        Ok(Some(doc)) => match serde_json::from_slice::<BTreeMap<String, State>>(&doc) {
            Ok(m) => m.into_iter().collect(),
            Err(e) => {
                tracing::warn!(
                    "journal document {STATES_KEY:?} unreadable ({e}); flows start afresh"
                );
                Vec::new()
            }
        },
        Ok(None) => Vec::new(),
        Err(e) => {
            tracing::warn!("cannot read the flows' states ({e}); flows start afresh");
            Vec::new()
        }
    }
}

/// An ongoing condition (a backend down, the queue too old): since when, and
/// whether its alert went out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Episode {
    since_ms: u64,
    alerted: bool,
}

/// What a condition needs now: nothing, its alert, or its resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Quiet,
    Fire { since_ms: u64 },
    Resolve { since_ms: u64 },
}

/// Advances the episode of a condition that holds (`on`) or not at `now`;
/// alerts once it has held `after_ms`.
fn step(ep: &mut Option<Episode>, on: bool, now: u64, after_ms: u64) -> Step {
    match (ep.as_mut(), on) {
        (None, true) => {
            *ep = Some(Episode {
                since_ms: now,
                alerted: false,
            });
            if after_ms == 0 {
                return step(ep, on, now, after_ms);
            }
            Step::Quiet
        }
        (Some(e), true) if !e.alerted && now.saturating_sub(e.since_ms) >= after_ms => {
            e.alerted = true;
            Step::Fire {
                since_ms: e.since_ms,
            }
        }
        (Some(e), false) => {
            let (since_ms, alerted) = (e.since_ms, e.alerted);
            *ep = None;
            if alerted {
                Step::Resolve { since_ms }
            } else {
                Step::Quiet
            }
        }
        _ => Step::Quiet,
    }
}

/// Starts the monitor; it stops with `token`.
pub fn spawn(
    ctx: Arc<Context>,
    flows: Arc<Flows>,
    clock: Clock,
    token: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut m = Monitor {
            config: ctx.config(),
            ctx,
            flows,
            clock,
            backends: HashMap::new(),
            queue: None,
            unsent: Vec::new(),
        };
        tokio::spawn(post_webhooks(m.ctx.clone(), clock, token.clone()));
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            m.turn().await;
        }
        // Last states before the journal closes.
        m.persist().await;
    })
}

/// Posts the journaled webhook calls, in the order they were raised, apart
/// from the monitor (a slow endpoint delays only the webhook).
async fn post_webhooks(ctx: Arc<Context>, clock: Clock, token: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = token.cancelled() => return,
            _ = tick.tick() => {}
        }
        let give_up = ctx.config().delivery.max_queue_lifetime.0.as_millis() as u64;
        tokio::select! {
            _ = token.cancelled() => return,
            _ = alert::post_due(&ctx.journal, clock, give_up) => {}
        }
    }
}

struct Monitor {
    ctx: Arc<Context>,
    config: Arc<Config>,
    flows: Arc<Flows>,
    clock: Clock,
    backends: HashMap<String, Option<Episode>>,
    queue: Option<Episode>,
    /// Alerts the journal refused; raised again next turn.
    unsent: Vec<Alert>,
}

impl Monitor {
    async fn turn(&mut self) {
        let now = self.clock.now_ms();
        let config = self.ctx.config();
        if !Arc::ptr_eq(&config, &self.config) {
            self.flows.reconfigure(&config, now);
            self.config = config.clone();
        }
        let mut alerts = std::mem::take(&mut self.unsent);
        for change in self.flows.evaluate(now) {
            alerts.push(self.flow_alert(&change, now));
        }
        self.watch_backends(now, &mut alerts);
        self.watch_queue(now, &mut alerts);
        // The alerts are journaled before the states that say they were
        // raised: a crash in between repeats an alert, never loses one.
        for mut a in alerts {
            let raised =
                alert::raise(&self.ctx.journal, &self.ctx.queue, &config, &mut a, now).await;
            if let Err(e) = raised {
                // Said once per alert, not every turn it is retried.
                if !a.sent.refused {
                    tracing::error!("alert not journaled ({e}); trying again: {}", a.summary);
                    a.sent.refused = true;
                }
                self.unsent.push(a);
            }
        }
        self.persist().await;
    }

    /// Journals the flows' states, unless an alert they record as raised is
    /// not journaled yet: a restart then raises it again instead of losing it.
    async fn persist(&self) {
        if !self.unsent.is_empty() {
            return;
        }
        let Some(states) = self.flows.take_dirty() else {
            return;
        };
        let map: BTreeMap<String, State> = states.into_iter().collect();
        let doc = serde_json::to_vec(&map).unwrap_or_default();
        if let Err(e) = self
            .ctx
            .journal
            .set_document(STATES_KEY.into(), Some(doc))
            .await
        {
            tracing::warn!("cannot journal the flows' states ({e}); trying again");
            self.flows.mark_dirty();
        }
    }

    fn flow_alert(&self, change: &Change, now: u64) -> Alert {
        let rule_text = |name: &str| {
            self.config
                .flow
                .iter()
                .find(|f| f.name.trim() == name)
                .map(describe_flow)
                .unwrap_or_default()
        };
        match change {
            Change::WentSilent { rule, why } => {
                let r = self.flows.rule(rule);
                let (since, summary, what) = match *why {
                    Shortfall::Silent {
                        since_ms,
                        ever_seen,
                    } => {
                        let since = rfc3339(since_ms);
                        let what = if ever_seen {
                            format!("No message of flow {rule:?} has arrived since {since}.")
                        } else {
                            format!(
                                "No message of flow {rule:?} has arrived since watching began at {since}."
                            )
                        };
                        (
                            since.clone(),
                            format!("flow {rule} silent since {since}"),
                            what,
                        )
                    }
                    Shortfall::TooFew { seen } => {
                        let (n, period) = r
                            .as_ref()
                            .map_or((0, 0), |r| (r.min_count, r.period_ms / 1000));
                        (
                            rfc3339(now),
                            format!(
                                "flow {rule}: {seen} message(s) in the last {period} s, expected at least {n}"
                            ),
                            format!(
                                "Flow {rule:?} brought {seen} message(s) in the last {period} seconds; at least {n} are expected."
                            ),
                        )
                    }
                };
                let allowed = r.map_or(String::new(), |r| {
                    format!(
                        "Allowed silence: {} s (counted only while the flow is active).",
                        r.max_silence_ms / 1000
                    )
                });
                Alert {
                    sent: Sent::default(),
                    kind: "flow_silent".into(),
                    name: rule.clone(),
                    firing: true,
                    since,
                    summary,
                    text: format!(
                        "{what}\n{allowed}\nThe flow matches: {}.\n\nWhat to check:\n- the sending system: is it running, is its own queue stuck, did its job schedule change?\n- its route to this MX: DNS (MX records), firewalls, the sender's logs for refusals;\n- this relay's log for refused mail from that sender (grep the sender's address, or `reject`);\n- `breakwater_flow_last_seen_timestamp_seconds{{flow=\"{rule}\"}}` on /metrics.\n\nA second mail follows when the flow resumes.",
                        rule_text(rule)
                    ),
                }
            }
            Change::Resumed {
                rule,
                since_alert_ms,
                last_seen_ms,
            } => Alert {
                sent: Sent::default(),
                kind: "flow_silent".into(),
                name: rule.clone(),
                firing: false,
                since: rfc3339(*since_alert_ms),
                summary: format!("flow {rule} resumed at {}", rfc3339(*last_seen_ms)),
                text: format!(
                    "Flow {rule:?} has mail again: the newest message arrived at {}.\nThe alert was raised at {}.",
                    rfc3339(*last_seen_ms),
                    rfc3339(*since_alert_ms)
                ),
            },
        }
    }

    fn watch_backends(&mut self, now: u64, alerts: &mut Vec<Alert>) {
        let Some(after) = self.config.alert.backend_down else {
            self.backends.clear();
            return;
        };
        let after = after.0.as_millis() as u64;
        let health = self.ctx.queue.gate().health().clone();
        self.backends
            .retain(|name, _| self.config.backend.iter().any(|b| &b.name == name));
        for b in &self.config.backend {
            let ep = self.backends.entry(b.name.clone()).or_default();
            match step(ep, !health.is_up(&b.name), now, after) {
                Step::Quiet => {}
                Step::Fire { since_ms } => alerts.push(Alert {
                    sent: Sent::default(),
                    kind: "backend_down".into(),
                    name: b.name.clone(),
                    firing: true,
                    since: rfc3339(since_ms),
                    summary: format!("backend {} ({}) down since {}", b.name, b.address, rfc3339(since_ms)),
                    text: format!(
                        "Backend {:?} at {} has failed its health probes since {}.\nMail for it is held in the journal and will be delivered when it is back; nothing is lost.\n\nWhat to check:\n- is the mail server at {} running and accepting connections (telnet {} / swaks)?\n- `breakwater status` and `breakwater queue list` for the backlog;\n- this relay's log for the probe errors.",
                        b.name, b.address, rfc3339(since_ms), b.address, b.address
                    ),
                }),
                Step::Resolve { since_ms } => alerts.push(Alert {
                    sent: Sent::default(),
                    kind: "backend_down".into(),
                    name: b.name.clone(),
                    firing: false,
                    since: rfc3339(since_ms),
                    summary: format!("backend {} is up again", b.name),
                    text: format!(
                        "Backend {:?} at {} answers its health probes again (down since {}).\nThe held mail drains at the configured rate.",
                        b.name, b.address, rfc3339(since_ms)
                    ),
                }),
            }
        }
    }

    fn watch_queue(&mut self, now: u64, alerts: &mut Vec<Alert>) {
        let Some(after) = self.config.alert.queue_age else {
            self.queue = None;
            return;
        };
        let after_s = after.0.as_secs();
        let stats = self.ctx.queue.stats();
        let age = stats.oldest_age_seconds(now);
        match step(&mut self.queue, age >= after_s, now, 0) {
            Step::Quiet => {}
            Step::Fire { since_ms } => alerts.push(Alert {
                sent: Sent::default(),
                kind: "queue_age".into(),
                name: "queue".into(),
                firing: true,
                since: rfc3339(since_ms),
                summary: format!("oldest queued message is {age} s old ({} queued)", stats.depth),
                text: format!(
                    "The oldest message in the queue arrived {age} seconds ago (alert.queue_age = {after_s} s); {} message(s) are queued.\n\nWhat to check:\n- `breakwater status`: are the backends down, or a quiet-time window or hold on?\n- `breakwater queue list --older-than {after_s}s` for the messages and their last replies.",
                    stats.depth
                ),
            }),
            Step::Resolve { since_ms } => alerts.push(Alert {
                sent: Sent::default(),
                kind: "queue_age".into(),
                name: "queue".into(),
                firing: false,
                since: rfc3339(since_ms),
                summary: "no queued message is older than alert.queue_age any more".into(),
                text: format!("The queue has no message older than {after_s} seconds any more."),
            }),
        }
    }
}

/// A flow's matchers, for people.
fn describe_flow(f: &crate::config::Flow) -> String {
    let mut parts = Vec::new();
    if !f.from.is_empty() {
        parts.push(format!("from {}", f.from.join(" or ")));
    }
    if !f.to.is_empty() {
        parts.push(format!("to {}", f.to.join(" or ")));
    }
    if let Some(h) = &f.header {
        parts.push(format!("header {} ~ /{}/", h.name, h.regex));
    }
    parts.join(", ")
}

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_alerts_once_after_its_threshold_and_resolves_once() {
        let mut ep = None;
        assert_eq!(step(&mut ep, true, 1000, 5000), Step::Quiet);
        assert_eq!(step(&mut ep, true, 5999, 5000), Step::Quiet);
        assert_eq!(
            step(&mut ep, true, 6000, 5000),
            Step::Fire { since_ms: 1000 }
        );
        assert_eq!(
            step(&mut ep, true, 9000, 5000),
            Step::Quiet,
            "once per episode"
        );
        assert_eq!(
            step(&mut ep, false, 9500, 5000),
            Step::Resolve { since_ms: 1000 }
        );
        assert_eq!(step(&mut ep, false, 9600, 5000), Step::Quiet);
    }

    #[test]
    fn a_short_blip_raises_nothing() {
        let mut ep = None;
        assert_eq!(step(&mut ep, true, 0, 5000), Step::Quiet);
        assert_eq!(step(&mut ep, false, 4000, 5000), Step::Quiet);
        assert_eq!(ep, None);
    }

    #[test]
    fn a_zero_threshold_fires_at_once() {
        let mut ep = None;
        assert_eq!(step(&mut ep, true, 7, 0), Step::Fire { since_ms: 7 });
    }
}
