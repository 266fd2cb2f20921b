//! The issuer's Prometheus metrics (see `trias_runtime::metrics`): tokens issued by grant,
//! token requests refused by OAuth error, requests refused by a rate limit, and its audit
//! outbox.

use trias_runtime::metrics::{Counter, Family, OutboxGauges, Registry};

/// The issuer's metrics; cheap to clone, one instance per issuer.
#[derive(Debug, Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// By `grant_type` (the policy's closed set of grant names).
    pub tokens_issued: Family<Counter>,
    /// By `error` (the OAuth error code).
    pub token_requests_refused: Family<Counter>,
    /// By `limit` (the `[limits]` key that refused: token, login and revocation requests).
    pub rate_limited: Family<Counter>,
    pub outbox: OutboxGauges,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        registry.build_info("issuer");
        Metrics {
            tokens_issued: registry.counter_family(
                "trias_tokens_issued_total",
                "Access tokens issued, by grant type.",
                &["grant_type"],
            ),
            token_requests_refused: registry.counter_family(
                "trias_token_requests_refused_total",
                "Token requests refused, by OAuth error code.",
                &["error"],
            ),
            rate_limited: registry.counter_family(
                "trias_rate_limited_total",
                "Requests refused by a rate limit, by limit.",
                &["limit"],
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
