//! End-to-end tests: one binary, so the workspace is linked once for all of them.

mod issuer;
