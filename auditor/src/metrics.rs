//! The auditor's Prometheus metrics (see `trias_runtime::metrics`): append latency, entries
//! appended by producer, alerts by kind, the log's size and refusals left unlogged.

use trias_runtime::metrics::{Counter, Gauge, Histogram, LATENCY_BUCKETS, Registry};

use crate::sequencer::Counts;

/// The auditor's metrics; cheap to clone, one instance per auditor.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The time an `Append` takes, validation to acknowledgement (after commit).
    pub append_seconds: Histogram,
    /// Entries in the log; set before each scrape from the latest checkpoint.
    pub log_size: Gauge,
    /// Refused calls not logged as `access_refused` alerts: their caller had had its
    /// quota (`limits.refusal_alerts_per_caller`).
    pub refusals_unlogged: Counter,
}

impl Metrics {
    /// The auditor's metrics, with the sequencer's counts.
    pub fn new(counts: &Counts) -> Self {
        let registry = Registry::new();
        registry.build_info("auditor");
        let append_seconds = registry.histogram(
            "trias_audit_append_seconds",
            "Latency of audit appends, from request to acknowledgement after commit.",
            LATENCY_BUCKETS,
        );
        registry.add_counter_family(
            "trias_audit_events_appended_total",
            "Audit events newly logged, by producer.",
            &counts.appended,
        );
        registry.add_counter_family(
            "trias_alerts_total",
            "Alerts logged, by kind (detector).",
            &counts.alerts,
        );
        let log_size = registry.gauge("trias_log_size", "Entries in the audit log.");
        let refusals_unlogged = registry.counter(
            "trias_refusals_unlogged_total",
            "Refused calls not logged as access_refused alerts, their caller being over its quota.",
        );
        Metrics {
            registry,
            append_seconds,
            log_size,
            refusals_unlogged,
        }
    }
}
