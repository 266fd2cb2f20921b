//! End-to-end tests: one binary, so the workspace is linked once for all of them.

/// Runs `async fn $name(backend: Backend)` as two tests, `$name::sqlite` and
/// `$name::postgres`; the PostgreSQL one skips (with a message) unless
/// `TRIAS_TEST_POSTGRES_URL` is set.
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(trias_tests::Backend::Sqlite).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(trias_tests::Backend::Postgres).await;
            }
        }
    )+};
}

mod audit_crash;
mod audit_pipeline;
mod audit_verify;
mod auditor;
mod cli;
mod corpus;
mod custody;
mod deploy;
mod faults;
mod graceful;
mod issuer;
mod issuer_admin;
mod issuer_audit;
mod issuer_duties;
mod issuer_http;
mod issuer_keys;
mod issuer_login;
mod issuer_refresh;
mod issuer_revocation;
mod jwt;
mod limits;
mod login_page;
mod metrics;
mod scale_out;
mod standard_services;
mod tracing;
mod validator;
