//! The Trias auditor: the append-only, tamper-evident record (not yet built; see issue 4).
