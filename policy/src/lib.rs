//! The Trias duty policy: roles, conflicts, audiences, dual control and scope rules.
//!
//! One TOML file, read by the issuer (roles, conflicts, audiences, scope rules) and the validator
//! (audiences, dual control). [`Policy::from_toml`] validates the whole file up front and reports
//! the first problem with its file and line, so a service refuses to start on a policy it would
//! misread. Everything after parsing is pure lookups; docs/policy.md is the file's reference.

mod constraints;
mod error;
mod parse;
mod policy;

pub use constraints::{Acr, Constraints, GrantType, parse_duration};
pub use error::{
    ActionError, ConstraintViolation, PolicyError, RoleError, ScopeError, UnknownAcr,
    UnknownGrantType,
};
pub use policy::{Audience, Conflict, DualControl, Policy};

/// The sample policy: a payments service, its auditors and the issuer's administration.
pub const SAMPLE: &str = include_str!("../sample-policy.toml");
