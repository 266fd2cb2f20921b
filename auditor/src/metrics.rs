//! The auditor's Prometheus metrics (see `trias_runtime::metrics`): append latency, entries
//! appended by producer, alerts by kind and the log's size.

use trias_runtime::metrics::{Gauge, Histogram, LATENCY_BUCKETS, Registry};

use crate::sequencer::Counts;

/// The auditor's metrics; cheap to clone, one instance per auditor.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// The time an `Append` takes, validation to acknowledgement (after commit).
    pub append_seconds: Histogram,
    /// Entries in the log; set before each scrape from the latest checkpoint.
    pub log_size: Gauge,
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
        Metrics {
            registry,
            append_seconds,
            log_size,
        }
    }
}
