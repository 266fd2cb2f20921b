//! What every Trias service needs to run.
