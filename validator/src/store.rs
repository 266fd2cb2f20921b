//! The dual-control ledger: one contract over SQLite (default) and PostgreSQL, through sqlx's
//! runtime-checked queries on the `Any` driver, with one set of `$n` statements for both.
//!
//! A row says a subject performed a listed action on an object under a rule. The table's key
//! is (rule, object, subject), so a subject holds at most one listed action per object; a
//! second, different action is a duty conflict. Recording is one `INSERT … ON CONFLICT DO
//! NOTHING` followed, if it inserted nothing, by a read of the row that won: concurrent
//! attempts — in one process or in several validators on one PostgreSQL — are decided by the
//! database, never by a lock in memory.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database url must start with sqlite: or postgres://")]
    BadUrl,
    #[error("the ledger row for the object vanished while it was being read")]
    Vanished,
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// What recording an action found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// The subject had no listed action on the object; this one is now recorded.
    First,
    /// The subject had already performed this very action on the object (idempotent).
    Again,
    /// The subject already performed another listed action on the object.
    Conflict { earlier_action: String },
}

/// The validator's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

impl Store {
    /// Opens (creating if needed) the database at `url` — `sqlite://path` or
    /// `postgres://…` — and runs its migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::BadUrl);
        };
        let options = AnyPoolOptions::new()
            .max_connections(if backend == Backend::Sqlite { 8 } else { 16 })
            .acquire_timeout(Duration::from_secs(10));
        let options = if backend == Backend::Sqlite {
            options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; FULL makes each commit durable;
                    // the busy timeout makes writers queue instead of failing.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous = FULL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 10000")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        } else {
            options
        };
        let pool = options.connect(url).await?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        migrator
            .run(&pool)
            .await
            .map_err(|e| StoreError::Database(e.into()))?;
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// Records that `subject` performs `action` on `object` under the rule of `rule_audience`,
    /// unless the subject already performed a different listed action there.
    pub async fn record(
        &self,
        rule_audience: &str,
        object: &str,
        subject: &str,
        action: &str,
        token_id: &str,
        now: i64,
    ) -> Result<Recorded> {
        let inserted = sqlx::query(
            "INSERT INTO dual_control_ledger (rule_audience, object, subject, action, token_id, recorded_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (rule_audience, object, subject) DO NOTHING",
        )
        .bind(rule_audience)
        .bind(object)
        .bind(subject)
        .bind(action)
        .bind(token_id)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Recorded::First);
        }
        // Someone — maybe a concurrent request — holds the row: it decides.
        let earlier = self
            .action_of(rule_audience, object, subject)
            .await?
            .ok_or(StoreError::Vanished)?;
        if earlier == action {
            Ok(Recorded::Again)
        } else {
            Ok(Recorded::Conflict {
                earlier_action: earlier,
            })
        }
    }

    /// The listed action `subject` performed on `object` under the rule, if any.
    pub async fn action_of(
        &self,
        rule_audience: &str,
        object: &str,
        subject: &str,
    ) -> Result<Option<String>> {
        let action: Option<String> = sqlx::query_scalar(
            "SELECT action FROM dual_control_ledger
             WHERE rule_audience = $1 AND object = $2 AND subject = $3",
        )
        .bind(rule_audience)
        .bind(object)
        .bind(subject)
        .fetch_optional(&self.pool)
        .await?;
        Ok(action)
    }

    /// Every (subject, action) recorded on an object under a rule, by subject.
    pub async fn object_history(
        &self,
        rule_audience: &str,
        object: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT subject, action FROM dual_control_ledger
             WHERE rule_audience = $1 AND object = $2 ORDER BY subject",
        )
        .bind(rule_audience)
        .bind(object)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }
}
