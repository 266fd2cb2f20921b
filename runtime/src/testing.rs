//! Helpers for the test suites of every service: a fresh PostgreSQL database per test.
//! Not used by the services themselves.

/// The environment variable naming a PostgreSQL server for the PostgreSQL suites, e.g.
/// `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_ENV: &str = "TRIAS_TEST_POSTGRES_URL";

/// Says once per test process, on the real stderr (not the test harness's captured output),
/// that the PostgreSQL runs are skipped, so a skipped suite is visible in every test run.
fn announce_skip() {
    use std::io::Write as _;
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = writeln!(
            std::io::stderr(),
            "note: skipping the PostgreSQL runs: {POSTGRES_ENV} is not set (see README.md)"
        );
    });
}

/// A database created on the PostgreSQL test server for one test.
#[derive(Debug, Clone)]
pub struct PostgresDb {
    /// The database's URL.
    pub url: String,
    admin_url: String,
    name: String,
}

/// Creates a fresh, uniquely named database on the server `TRIAS_TEST_POSTGRES_URL` names;
/// `None`, with a message, when the variable is not set (or empty). Panics if the variable is
/// set but the server cannot be used: a configured suite must not pass by skipping.
#[allow(clippy::expect_used, reason = "test setup fails loudly")]
pub async fn fresh_postgres() -> Option<PostgresDb> {
    let Some(admin_url) = std::env::var(POSTGRES_ENV)
        .ok()
        .filter(|url| !url.is_empty())
    else {
        announce_skip();
        return None;
    };
    sqlx::any::install_default_drivers();
    let mut bytes = [0u8; 8];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("system random number generator");
    let name = format!("trias_test_{}", data_encoding::HEXLOWER.encode(&bytes));
    let pool = sqlx::AnyPool::connect(&admin_url)
        .await
        .expect("connect to the PostgreSQL server named by TRIAS_TEST_POSTGRES_URL");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&pool)
        .await
        .expect("create a test database");
    pool.close().await;
    let base = admin_url
        .rsplit_once('/')
        .map_or(admin_url.as_str(), |(base, _)| base);
    Some(PostgresDb {
        url: format!("{base}/{name}"),
        admin_url,
        name,
    })
}

impl PostgresDb {
    /// Drops the database (closing any connection still open to it).
    #[allow(clippy::expect_used, reason = "test teardown fails loudly")]
    pub async fn drop_database(&self) {
        let pool = sqlx::AnyPool::connect(&self.admin_url)
            .await
            .expect("connect to the PostgreSQL test server");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&pool)
        .await
        .expect("drop a test database");
        pool.close().await;
    }
}
