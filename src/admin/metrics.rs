//! The Prometheus metrics of DESIGN.md's contract. Names are a contract: extend,
//! never rename.

use crate::delivery::stats::Snapshot;
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// `Content-Type` of `/metrics` (the text exposition format, version 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// `breakwater_delivery_duration_seconds` buckets: 1 s to 5 days.
const DURATION_BUCKETS: [f64; 16] = [
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0,
    86400.0, 172800.0, 432000.0,
];

/// Canary latency buckets: 50 ms to 1 h.
const CANARY_BUCKETS: [f64; 15] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Every metric the relay exports, registered in its own registry (so two relays
/// can run in one test process).
pub struct Metrics {
    registry: Registry,
    /// `breakwater_queue_depth`
    pub queue_depth: IntGauge,
    /// `breakwater_queue_oldest_age_seconds`
    pub queue_oldest_age_seconds: IntGauge,
    /// `breakwater_messages_received_total`
    pub messages_received: IntCounter,
    /// `breakwater_messages_delivered_total`
    pub messages_delivered: IntCounter,
    /// `breakwater_messages_bounced_total`
    pub messages_bounced: IntCounter,
    /// `breakwater_delivery_attempts_total{backend,result}`
    pub delivery_attempts: IntCounterVec,
    /// `breakwater_backend_up{backend}`
    pub backend_up: IntGaugeVec,
    /// `breakwater_quiet_time_active`
    pub quiet_time_active: IntGauge,
    /// `breakwater_journal_bytes`
    pub journal_bytes: IntGauge,
    /// `breakwater_smtp_sessions_active`
    pub smtp_sessions_active: IntGauge,
    /// `breakwater_smtp_rejections_total{reason}`
    pub smtp_rejections: IntCounterVec,
    /// `breakwater_tls_sessions_total{version}`
    pub tls_sessions: IntCounterVec,
    /// `breakwater_queue_messages{state}`: due, deferred, held, in_flight
    pub queue_messages: IntGaugeVec,
    /// `breakwater_delivery_duration_seconds`: arrival to final delivery
    pub delivery_duration: Histogram,
    /// `breakwater_messages_deleted_total`
    pub messages_deleted: IntCounter,
    /// `breakwater_config_reload_failures_total`
    pub config_reload_failures: IntCounter,
    /// `breakwater_config_last_reload_success_timestamp_seconds`
    pub config_last_reload_success: IntGauge,
    /// `breakwater_mirror_up{mirror}`
    pub mirror_up: IntGaugeVec,
    /// `breakwater_mirror_queue_depth{mirror}`
    pub mirror_queue_depth: IntGaugeVec,
    /// `breakwater_mirror_deliveries_total{mirror,result}`
    pub mirror_deliveries: IntCounterVec,
    /// `breakwater_retained_messages`
    pub retained_messages: IntGauge,
    /// `breakwater_retained_bytes`
    pub retained_bytes: IntGauge,
    /// `breakwater_auth_memory_bytes`
    pub auth_memory_bytes: IntGauge,
    /// `breakwater_replayed_messages_total`
    pub replayed: IntCounter,
    /// `breakwater_canary_last_success_timestamp_seconds{backend}`
    pub canary_last_success: GaugeVec,
    /// `breakwater_canary_duration_seconds{backend}`: created to accepted
    pub canary_duration: HistogramVec,
    /// `breakwater_canary_e2e_seconds{backend}`: created to found over IMAP
    pub canary_e2e: HistogramVec,
    /// `breakwater_auth_results_total{method,result}`: method = spf (MAIL
    /// FROM), spf_helo, dkim (per signature), dmarc
    pub auth_results: IntCounterVec,
}

/// Why the SMTP edge refused something (`breakwater_smtp_rejections_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// Recipient outside `relay.domains`, or a routing trick.
    RelayDenied,
    /// Recipient unknown (static list or backend verification).
    UnknownUser,
    /// Message or BDAT chunk over `smtp.max_message_size`.
    Size,
    /// Connection limits: `smtp.max_connections`, `smtp.max_connections_per_ip`.
    Rate,
    /// `smtp.max_errors` reached: the session was closed.
    Errors,
    /// STARTTLS could not start or its handshake failed.
    Tls,
    /// More than `smtp.max_received_headers` `Received:` headers.
    Loop,
    /// The journal could not take the message (full, low on disk, storage error).
    Storage,
    /// Bare CR, bare LF or NUL in a message (SMTP smuggling defence).
    Smuggling,
    /// The client talked before the greeting.
    Pregreet,
    /// A line or the whole message took too long, or the client stopped reading.
    Timeout,
    /// DMARC fail under `p=reject` with `auth.dmarc_reject`.
    Dmarc,
    /// Listed by a `[[dnsbl]]` zone with `action = "reject"`.
    Dnsbl,
    /// `auth.max_memory` reached: too many messages held whole at once.
    Memory,
}

impl Rejection {
    /// The `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Rejection::RelayDenied => "relay_denied",
            Rejection::UnknownUser => "unknown_user",
            Rejection::Size => "size",
            Rejection::Rate => "rate",
            Rejection::Errors => "errors",
            Rejection::Tls => "tls",
            Rejection::Loop => "loop",
            Rejection::Storage => "storage",
            Rejection::Smuggling => "smuggling",
            Rejection::Pregreet => "pregreet",
            Rejection::Timeout => "timeout",
            Rejection::Dmarc => "dmarc",
            Rejection::Dnsbl => "dnsbl",
            Rejection::Memory => "memory",
        }
    }
}

/// Registers `m` in `registry` and returns it.
fn register<M: prometheus::core::Collector + Clone + 'static>(registry: &Registry, m: M) -> M {
    registry
        .register(Box::new(m.clone()))
        .expect("unique metric");
    m
}

/// A labelled gauge family.
fn gauge_vec(registry: &Registry, name: &str, help: &str, label: &str) -> IntGaugeVec {
    register(
        registry,
        IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric"),
    )
}

impl Metrics {
    /// The registry, for parts that register metrics of their own (flows).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let delivery_attempts = IntCounterVec::new(
            Opts::new(
                "breakwater_delivery_attempts_total",
                "Delivery attempts per backend; result = delivered, deferred, failed",
            ),
            &["backend", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(delivery_attempts.clone()))
            .expect("unique metric");
        let backend_up = gauge_vec(
            &registry,
            "breakwater_backend_up",
            "1 if the last health probe succeeded",
            "backend",
        );
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let smtp_rejections = counter_vec(
            "breakwater_smtp_rejections_total",
            "Refusals at the SMTP edge; reason = relay_denied, unknown_user, size, rate, errors, tls, loop, storage, smuggling, pregreet, timeout, dmarc, dnsbl, memory",
            "reason",
        );
        let tls_sessions = counter_vec(
            "breakwater_tls_sessions_total",
            "Inbound sessions that completed STARTTLS, by TLS version",
            "version",
        );
        let queue_messages = gauge_vec(
            &registry,
            "breakwater_queue_messages",
            "Messages in the queue by state: due, deferred, held, in_flight",
            "state",
        );
        let delivery_duration = register(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "breakwater_delivery_duration_seconds",
                    "Time from arrival to final delivery, per message",
                )
                .buckets(DURATION_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let build_info = gauge_vec(
            &registry,
            "breakwater_build_info",
            "1, labelled with the version running",
            "version",
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        let mirror_up = gauge_vec(
            &registry,
            "breakwater_mirror_up",
            "1 if the last health probe of the standby succeeded",
            "mirror",
        );
        let mirror_queue_depth = gauge_vec(
            &registry,
            "breakwater_mirror_queue_depth",
            "Copies not yet at the standby",
            "mirror",
        );
        let mirror_deliveries = IntCounterVec::new(
            Opts::new(
                "breakwater_mirror_deliveries_total",
                "Copies to a standby, by result = delivered, deferred, failed (per recipient)",
            ),
            &["mirror", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(mirror_deliveries.clone()))
            .expect("unique metric");
        let auth_results = IntCounterVec::new(
            Opts::new(
                "breakwater_auth_results_total",
                "Edge authentication results ([auth]); method = spf, spf_helo, dkim, dmarc; result = pass, fail, softfail, neutral, none, temperror, permerror",
            ),
            &["method", "result"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(auth_results.clone()))
            .expect("unique metric");
        for state in ["due", "deferred", "held", "in_flight"] {
            queue_messages.with_label_values(&[state]).set(0);
        }
        let canary_histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(CANARY_BUCKETS.to_vec());
            register(
                &registry,
                HistogramVec::new(opts, &["backend"]).expect("valid metric"),
            )
        };
        Metrics {
            canary_last_success: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "breakwater_canary_last_success_timestamp_seconds",
                        "When the backend last accepted a canary, Unix seconds",
                    ),
                    &["backend"],
                )
                .expect("valid metric"),
            ),
            canary_duration: canary_histogram(
                "breakwater_canary_duration_seconds",
                "Canary created to accepted by the backend",
            ),
            canary_e2e: canary_histogram(
                "breakwater_canary_e2e_seconds",
                "Canary created to found in the mailbox over IMAP",
            ),
            auth_results,
            mirror_up,
            mirror_queue_depth,
            mirror_deliveries,
            retained_messages: gauge(
                "breakwater_retained_messages",
                "Delivered messages kept for journal.retain_delivered",
            ),
            retained_bytes: gauge(
                "breakwater_retained_bytes",
                "Bytes of the delivered messages kept for journal.retain_delivered",
            ),
            auth_memory_bytes: gauge(
                "breakwater_auth_memory_bytes",
                "Bytes of auth.max_memory held now by messages kept whole for their check",
            ),
            replayed: counter(
                "breakwater_replayed_messages_total",
                "Messages queued again by breakwater replay",
            ),
            smtp_rejections,
            tls_sessions,
            queue_messages,
            delivery_duration,
            messages_deleted: counter(
                "breakwater_messages_deleted_total",
                "Messages removed by an admin (breakwater queue delete)",
            ),
            config_reload_failures: counter(
                "breakwater_config_reload_failures_total",
                "Config reloads refused (SIGHUP or POST /api/reload); the running config stays",
            ),
            config_last_reload_success: gauge(
                "breakwater_config_last_reload_success_timestamp_seconds",
                "When the config was last loaded successfully (start or reload), Unix seconds",
            ),
            queue_depth: gauge(
                "breakwater_queue_depth",
                "Messages in the journal not yet fully delivered",
            ),
            queue_oldest_age_seconds: gauge(
                "breakwater_queue_oldest_age_seconds",
                "Age of the oldest undelivered message (0 if none)",
            ),
            messages_received: counter(
                "breakwater_messages_received_total",
                "Messages accepted with 250",
            ),
            messages_delivered: counter(
                "breakwater_messages_delivered_total",
                "Messages fully delivered to a backend",
            ),
            messages_bounced: counter(
                "breakwater_messages_bounced_total",
                "Messages given up on, DSN sent",
            ),
            delivery_attempts,
            backend_up,
            quiet_time_active: gauge(
                "breakwater_quiet_time_active",
                "1 while any quiet-time window or admin hold is active",
            ),
            journal_bytes: gauge(
                "breakwater_journal_bytes",
                "Bytes used by the journal on disk",
            ),
            smtp_sessions_active: gauge(
                "breakwater_smtp_sessions_active",
                "Open inbound SMTP sessions",
            ),
            registry,
        }
    }

    /// Counts one delivery attempt result (`delivered`, `deferred`, `failed`).
    pub fn attempt(&self, backend: &str, result: &str) {
        self.delivery_attempts
            .with_label_values(&[backend, result])
            .inc();
    }

    /// Sets the queue gauges from the dispatcher's counts, the age as of `now_ms`.
    pub fn refresh_queue(&self, s: &Snapshot, now_ms: u64) {
        self.queue_depth.set(s.depth as i64);
        self.queue_oldest_age_seconds
            .set(s.oldest_age_seconds(now_ms) as i64);
        for (state, n) in [
            ("due", s.due),
            ("deferred", s.deferred),
            ("held", s.held),
            ("in_flight", s.in_flight),
        ] {
            self.queue_messages
                .with_label_values(&[state])
                .set(n as i64);
        }
    }

    /// Counts one refusal at the SMTP edge.
    pub fn reject(&self, why: Rejection) {
        self.smtp_rejections.with_label_values(&[why.label()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
