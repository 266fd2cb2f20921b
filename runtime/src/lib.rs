//! What every Trias service needs to run: the clock, strict configuration, telemetry, rate
//! limits, secrets that never print, the audit event format and the durable outbox producers
//! write events to.
//!
//! The issuer and validator record every audit event in their [`outbox`] before they answer;
//! the [`shipper`] forwards what is there to the auditor.

pub mod access;
pub mod clock;
pub mod config;
pub mod custody;
pub mod event;
pub mod id;
pub mod limit;
pub mod metrics;
pub mod net;
pub mod outbox;
pub mod secret;
pub mod shipper;
pub mod telemetry;
pub mod testing;
pub mod tls;
pub mod trace;
