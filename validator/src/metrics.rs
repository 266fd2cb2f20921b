//! The validator's Prometheus metrics (see `trias_runtime::metrics`): checks by decision and
//! reason, and its audit outbox.

use trias_runtime::metrics::{Counter, Family, OutboxGauges, Registry};

/// The validator's metrics; cheap to clone, one instance per validator.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// By `decision` (`allow`, `deny`) and `reason` (the closed set of reason codes).
    pub checks: Family<Counter>,
    pub outbox: OutboxGauges,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        registry.build_info("validator");
        Metrics {
            checks: registry.counter_family(
                "trias_checks_total",
                "Checks and introspections answered, by decision and reason.",
                &["decision", "reason"],
            ),
            outbox: OutboxGauges::register(&registry),
            registry,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
