//! The Trias duty policy.
