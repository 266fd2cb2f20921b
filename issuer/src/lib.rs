//! The Trias issuer.
