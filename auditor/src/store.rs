//! The log's storage: one contract over SQLite (default) and PostgreSQL through sqlx's `Any`
//! driver, with one set of `$n` statements for both and migrations for each.
//!
//! Only the sequencer writes, and only through [`Store::append`]: the entries of a batch, the
//! tree nodes they complete and the checkpoint that covers them go in one transaction, so
//! a checkpoint is never stored without everything it signs, nor entries without a
//! checkpoint. The database refuses UPDATE and DELETE on entries, nodes and checkpoints
//! (triggers, see the migrations); nothing here edits or deletes.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, AssertSqlSafe};
use trias_proto::v1::{AuditEvent, EventKind};

use crate::detect::{Detector, TokenFacts};
use crate::merkle::{Hash, NodeId};

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database url must start with sqlite: or postgres://")]
    BadUrl,
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// One log entry as stored: the leaf and the event fields the queries filter on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub index: u64,
    pub event_id: String,
    pub producer: String,
    pub producer_seq: u64,
    /// Unix nanoseconds.
    pub time: i64,
    pub kind: i32,
    pub subject: String,
    pub client_id: String,
    pub token_id: String,
    pub family_id: String,
    pub audience: String,
    pub action: String,
    pub resource: String,
    pub decision: i32,
    pub reason: String,
    /// The event's protobuf encoding, whose leaf hash is in the tree.
    pub leaf: Vec<u8>,
}

impl Entry {
    /// The entry for `event` at `index`, with `leaf` its encoding.
    pub fn new(index: u64, event: &AuditEvent, leaf: Vec<u8>) -> Entry {
        Entry {
            index,
            event_id: event.id.clone(),
            producer: event.producer.clone(),
            producer_seq: event.producer_seq,
            time: event.time.map_or(0, |t| unix_nanos(&t)),
            kind: event.kind,
            subject: event.subject.clone(),
            client_id: event.client_id.clone(),
            token_id: event.token_id.clone(),
            family_id: event.family_id.clone(),
            audience: event.audience.clone(),
            action: event.action.clone(),
            resource: event.resource.clone(),
            decision: event.decision,
            reason: event.reason.clone(),
            leaf,
        }
    }
}

/// A protobuf time in unix nanoseconds, saturating (i64 nanoseconds reach the year 2262).
pub fn unix_nanos(t: &prost_types::Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(t.nanos))
}

/// A protobuf time from unix nanoseconds.
pub fn timestamp_of(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        // Below 10^9, so it fits.
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// A signed checkpoint as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    pub tree_size: u64,
    pub root: Hash,
    /// The signed note.
    pub note: String,
    /// Unix nanoseconds.
    pub time: i64,
}

/// Everything one sequencer commit writes.
#[derive(Debug, Clone)]
pub struct Batch {
    pub entries: Vec<Entry>,
    pub nodes: Vec<(NodeId, Hash)>,
    pub checkpoint: StoredCheckpoint,
    /// Each producer's highest sequence number in the batch.
    pub producers: Vec<(String, u64)>,
    /// Detector state saved with the batch, by name (see `detect`).
    pub state: Vec<(String, i64)>,
}

/// What a query selects; `None` and empty fields match anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub subject: Option<String>,
    pub client_id: Option<String>,
    pub token_id: Option<String>,
    pub family_id: Option<String>,
    pub audience: Option<String>,
    pub action: Option<String>,
    pub resource: Option<String>,
    pub decision: Option<i32>,
    pub reason: Option<String>,
    pub kinds: Vec<i32>,
    /// Unix nanoseconds, inclusive.
    pub time_from: Option<i64>,
    /// Unix nanoseconds, exclusive.
    pub time_to: Option<i64>,
}

/// The `AND …` terms of `filter`, bound into `sql`.
fn conditions(sql: &mut Sql, filter: &Filter) {
    let texts = [
        ("subject", &filter.subject),
        ("client_id", &filter.client_id),
        ("token_id", &filter.token_id),
        ("family_id", &filter.family_id),
        ("audience", &filter.audience),
        ("action", &filter.action),
        ("resource", &filter.resource),
        ("reason", &filter.reason),
    ];
    for (column, value) in texts {
        if let Some(value) = value {
            sql.push(&format!(" AND {column} = "))
                .bind(Value::Text(value.clone()));
        }
    }
    if let Some(decision) = filter.decision {
        sql.push(" AND decision = ")
            .bind(Value::Int(i64::from(decision)));
    }
    if !filter.kinds.is_empty() {
        sql.push(" AND kind IN (");
        for (i, kind) in filter.kinds.iter().enumerate() {
            if i > 0 {
                sql.push(", ");
            }
            sql.bind(Value::Int(i64::from(*kind)));
        }
        sql.push(")");
    }
    if let Some(from) = filter.time_from {
        sql.push(" AND time >= ").bind(Value::Int(from));
    }
    if let Some(to) = filter.time_to {
        sql.push(" AND time < ").bind(Value::Int(to));
    }
}

impl Filter {
    /// A time range with no finer indexed filter (kinds and decision may narrow it): such a
    /// query pages in event-time order, see [`Store::query_by_time`].
    pub fn by_time(&self) -> bool {
        (self.time_from.is_some() || self.time_to.is_some())
            && [
                &self.subject,
                &self.client_id,
                &self.token_id,
                &self.family_id,
                &self.audience,
                &self.action,
                &self.resource,
                &self.reason,
            ]
            .iter()
            .all(|value| value.is_none())
    }
}

/// Which way a query walks the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

/// Sequence numbers, indexes and sizes stay far below 2^63.
pub fn to_sql(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn from_sql(n: i64) -> Result<u64> {
    u64::try_from(n).map_err(|_| StoreError::Corrupt(format!("negative number {n}")))
}

fn hash_of(bytes: Vec<u8>) -> Result<Hash> {
    bytes
        .try_into()
        .map_err(|_| StoreError::Corrupt("a stored hash is not 32 bytes".into()))
}

/// A bind value of a statement built at run time.
#[derive(Debug, Clone)]
enum Value {
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
}

impl Backend {
    /// Entries per multi-row INSERT (16 values each). SQLite binds a statement's values on
    /// the writer's own thread, and 64 rows (1,024 parameters) measured fastest there; a
    /// PostgreSQL statement is a round trip to the server, so there it is as many rows as a
    /// statement may carry (65,535 parameters) with room to spare: 2,048 rows, 32,768
    /// parameters — a group of a few thousand events in two statements instead of forty.
    fn rows_per_insert(self) -> usize {
        match self {
            Backend::Sqlite => 64,
            Backend::Postgres => 2048,
        }
    }

    /// Ids per `IN (…)` lookup, for the same reason.
    fn ids_per_lookup(self) -> usize {
        match self {
            Backend::Sqlite => 128,
            Backend::Postgres => 2048,
        }
    }
}

/// A statement built at run time with `$1, $2, …` placeholders, which both backends accept
/// through the `Any` driver (its own query builder writes `?`, which PostgreSQL does not).
#[derive(Debug, Default)]
struct Sql {
    text: String,
    values: Vec<Value>,
}

impl Sql {
    fn new(text: &str) -> Sql {
        Sql {
            text: text.to_owned(),
            values: Vec::new(),
        }
    }

    fn push(&mut self, text: &str) -> &mut Sql {
        self.text.push_str(text);
        self
    }

    fn bind(&mut self, value: Value) -> &mut Sql {
        self.values.push(value);
        self.text.push_str(&format!("${}", self.values.len()));
        self
    }

    /// The query for `backend`. SQLite gets anonymous `?` placeholders, bound by position
    /// (each `$n` appears once, in order). Named ones — `$n`, and `?n` too — make the driver
    /// ask SQLite each parameter's name, which SQLite finds by a linear search of the
    /// statement's names: binding cost grew with the square of a statement's parameters, a
    /// fifth of an append's CPU at 1,024 parameters a statement.
    fn build(self, backend: Backend) -> Query<'static, Any, AnyArguments> {
        let text = match backend {
            // Only placeholders carry a `$`: the statements hold no string literals.
            Backend::Sqlite => anonymous_placeholders(&self.text),
            Backend::Postgres => self.text,
        };
        let mut query = sqlx::query(AssertSqlSafe(text));
        for value in self.values {
            query = match value {
                Value::Int(n) => query.bind(n),
                Value::Text(s) => query.bind(s),
                Value::Blob(b) => query.bind(b),
            };
        }
        query
    }
}

/// `text` with every `$n` placeholder written as `?`.
fn anonymous_placeholders(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' {
            out.push('?');
            while chars.next_if(char::is_ascii_digit).is_some() {}
        } else {
            out.push(c);
        }
    }
    out
}

/// How often the SQLite log's WAL is copied into the database file.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// Checkpoints a SQLite log's WAL every [`CHECKPOINT_EVERY`] until the pool closes.
/// PASSIVE: it neither waits for nor blocks the appending connection or readers.
async fn checkpoint(pool: AnyPool) {
    loop {
        tokio::time::sleep(CHECKPOINT_EVERY).await;
        if pool.is_closed() {
            return;
        }
        if let Err(error) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)")
            .execute(&pool)
            .await
            && !pool.is_closed()
        {
            tracing::warn!(%error, "log checkpoint failed");
        }
    }
}

/// The auditor's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

/// Whether every migration of `migrator` is applied, with the same checksum, according to
/// the database's own record; `false` when that record cannot be read.
async fn up_to_date(pool: &AnyPool, migrator: &sqlx::migrate::Migrator) -> bool {
    let applied: Vec<(i64, Vec<u8>)> =
        match sqlx::query_as("SELECT version, checksum FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(applied) => applied,
            Err(_) => return false,
        };
    migrator.iter().all(|migration| {
        applied.iter().any(|(version, checksum)| {
            *version == migration.version && checksum.as_slice() == &*migration.checksum
        })
    })
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
                    // No connection checkpoints after its own commit: the checkpoint task
                    // does, on another connection, so an append never waits for one.
                    sqlx::query("PRAGMA wal_autocheckpoint = 0")
                        .execute(&mut *conn)
                        .await?;
                    // Pages come from a memory map of the file (shared with the OS cache, no
                    // copy per read) and a larger page cache: at millions of entries an
                    // append's index updates otherwise read each page with a system call.
                    sqlx::query("PRAGMA mmap_size = 1073741824")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA cache_size = -16384")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        } else {
            options.after_connect(|conn, _meta| {
                Box::pin(async move {
                    // Plan every execution with its own values. sqlx prepares each statement
                    // once per connection, and after five runs PostgreSQL may keep a generic
                    // plan; one made while the log was nearly empty reads the whole entries
                    // table for each event-id lookup (`IN (…)` of a batch's ids) from then on
                    // — measured: appends fell from 23,000 to 2,000 events/s within seconds
                    // of a fresh start, until autovacuum's next ANALYZE.
                    sqlx::query("SET plan_cache_mode = force_custom_plan")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            })
        };
        let pool = options.connect(url).await?;
        let migrator = match backend {
            Backend::Sqlite => sqlx::migrate!("migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("migrations/postgres"),
        };
        // A PostgreSQL service role holding only the grants docs/configuration.md lists
        // cannot create sqlx's bookkeeping table, so a database its owner has already
        // migrated is used as it is.
        if !(backend == Backend::Postgres && up_to_date(&pool, &migrator).await) {
            migrator
                .run(&pool)
                .await
                .map_err(|e| StoreError::Database(e.into()))?;
        }
        if backend == Backend::Sqlite {
            tokio::spawn(checkpoint(pool.clone()));
        }
        Ok(Store { pool, backend })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The pool, for tests that go behind the store's back.
    #[cfg(test)]
    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        if self.backend == Backend::Sqlite {
            // A closed log leaves a short WAL behind.
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
        }
        self.pool.close().await;
    }

    /// Writes a batch — entries, nodes, checkpoint, producers' sequence numbers — in one
    /// transaction. A batch that repeats a stored event id, index or node fails whole.
    pub async fn append(&self, batch: &Batch) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        // The checkpoint first: every write transaction starts with a write, so SQLite
        // takes its write lock up front.
        sqlx::query(
            "INSERT INTO checkpoints (tree_size, root, note, time) VALUES ($1, $2, $3, $4)",
        )
        .bind(to_sql(batch.checkpoint.tree_size))
        .bind(batch.checkpoint.root.to_vec())
        .bind(batch.checkpoint.note.clone())
        .bind(batch.checkpoint.time)
        .execute(&mut *tx)
        .await?;
        // Multi-row statements: a round trip per row would cost more than the row itself.
        // (On SQLite they are built with anonymous `?` placeholders, see `Sql::build`: with
        // named ones, binding a 1,024-parameter statement walked the parameter list per value.)
        for chunk in batch.entries.chunks(self.backend.rows_per_insert()) {
            let mut sql = Sql::new(
                "INSERT INTO entries (idx, event_id, producer, producer_seq, time, kind, subject, \
                 client_id, token_id, family_id, audience, action, resource, decision, reason, leaf) VALUES ",
            );
            for (i, e) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                let values = [
                    Value::Int(to_sql(e.index)),
                    Value::Text(e.event_id.clone()),
                    Value::Text(e.producer.clone()),
                    Value::Int(to_sql(e.producer_seq)),
                    Value::Int(e.time),
                    Value::Int(i64::from(e.kind)),
                    Value::Text(e.subject.clone()),
                    Value::Text(e.client_id.clone()),
                    Value::Text(e.token_id.clone()),
                    Value::Text(e.family_id.clone()),
                    Value::Text(e.audience.clone()),
                    Value::Text(e.action.clone()),
                    Value::Text(e.resource.clone()),
                    Value::Int(i64::from(e.decision)),
                    Value::Text(e.reason.clone()),
                    Value::Blob(e.leaf.clone()),
                ];
                for (j, value) in values.into_iter().enumerate() {
                    if j > 0 {
                        sql.push(", ");
                    }
                    sql.bind(value);
                }
                sql.push(")");
            }
            sql.build(self.backend).execute(&mut *tx).await?;
        }
        for chunk in batch.nodes.chunks(4 * self.backend.rows_per_insert()) {
            let mut sql = Sql::new("INSERT INTO nodes (level, idx, hash) VALUES ");
            for (i, (id, hash)) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(" } else { ", (" });
                sql.bind(Value::Int(i64::from(id.level)))
                    .push(", ")
                    .bind(Value::Int(to_sql(id.index)))
                    .push(", ")
                    .bind(Value::Blob(hash.to_vec()))
                    .push(")");
            }
            sql.build(self.backend).execute(&mut *tx).await?;
        }
        for (name, seq) in &batch.producers {
            sqlx::query(
                "INSERT INTO producers (name, last_seq) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET last_seq =
                   CASE WHEN excluded.last_seq > producers.last_seq
                        THEN excluded.last_seq ELSE producers.last_seq END",
            )
            .bind(name.clone())
            .bind(to_sql(*seq))
            .execute(&mut *tx)
            .await?;
        }
        for (name, value) in &batch.state {
            sqlx::query(
                "INSERT INTO detector_state (name, value) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(name.clone())
            .bind(*value)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The checkpoint with the largest tree size, if any was ever signed.
    pub async fn last_checkpoint(&self) -> Result<Option<StoredCheckpoint>> {
        let row: Option<(i64, Vec<u8>, String, i64)> = sqlx::query_as(
            "SELECT tree_size, root, note, time FROM checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(size, root, note, time)| {
            Ok(StoredCheckpoint {
                tree_size: from_sql(size)?,
                root: hash_of(root)?,
                note,
                time,
            })
        })
        .transpose()
    }

    /// The number of entries: one past the largest index.
    pub async fn entry_count(&self) -> Result<u64> {
        let max: Option<i64> = sqlx::query_scalar("SELECT MAX(idx) FROM entries")
            .fetch_one(&self.pool)
            .await?;
        max.map_or(Ok(0), |m| Ok(from_sql(m)? + 1))
    }

    /// The stored hashes of `ids`; a missing node is simply absent from the map.
    pub async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>> {
        let mut found = HashMap::with_capacity(ids.len());
        for chunk in ids.chunks(self.backend.ids_per_lookup()) {
            let mut sql = Sql::new("SELECT level, idx, hash FROM nodes WHERE ");
            for (i, id) in chunk.iter().enumerate() {
                sql.push(if i == 0 { "(level = " } else { " OR (level = " })
                    .bind(Value::Int(i64::from(id.level)))
                    .push(" AND idx = ")
                    .bind(Value::Int(to_sql(id.index)))
                    .push(")");
            }
            let rows: Vec<(i64, i64, Vec<u8>)> = sql
                .build(self.backend)
                .try_map(|row: sqlx::any::AnyRow| {
                    use sqlx::Row as _;
                    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                })
                .fetch_all(&self.pool)
                .await?;
            for (level, index, hash) in rows {
                let level = u32::try_from(level)
                    .map_err(|_| StoreError::Corrupt(format!("node level {level}")))?;
                found.insert(NodeId::new(level, from_sql(index)?), hash_of(hash)?);
            }
        }
        Ok(found)
    }

    /// The index and leaf of each of `event_ids` already in the log.
    pub async fn logged(&self, event_ids: &[&str]) -> Result<HashMap<String, (u64, Vec<u8>)>> {
        let mut found = HashMap::new();
        for chunk in event_ids.chunks(self.backend.ids_per_lookup()) {
            let mut sql = Sql::new("SELECT event_id, idx, leaf FROM entries WHERE event_id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Value::Text((*id).to_owned()));
            }
            sql.push(")");
            let rows: Vec<(String, i64, Vec<u8>)> = sql
                .build(self.backend)
                .try_map(|row: sqlx::any::AnyRow| {
                    use sqlx::Row as _;
                    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                })
                .fetch_all(&self.pool)
                .await?;
            for (id, index, leaf) in rows {
                found.insert(id, (from_sql(index)?, leaf));
            }
        }
        Ok(found)
    }

    /// The entries with index in `[from, to)`, in order: (index, leaf).
    pub async fn range(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
            "SELECT idx, leaf FROM entries WHERE idx >= $1 AND idx < $2 ORDER BY idx",
        )
        .bind(to_sql(from))
        .bind(to_sql(to))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(i, leaf)| Ok((from_sql(i)?, leaf)))
            .collect()
    }

    /// Up to `limit` entries matching `filter`, in `order`, strictly after the cursor index
    /// (keyset pagination): (index, leaf).
    pub async fn query(
        &self,
        filter: &Filter,
        order: Order,
        after: Option<u64>,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let after = after.map(|index| vec![to_sql(index)]);
        let rows = self.page(filter, order, &["idx"], after, limit).await?;
        Ok(rows
            .into_iter()
            .map(|(index, leaf, _)| (index, leaf))
            .collect())
    }

    /// Up to `limit` entries matching `filter` in event-time order (ties by index), strictly
    /// after the cursor `(time, index)`: (index, leaf, time). The time index answers a page
    /// in O(page) however many entries the range holds; ordering such a range by index would
    /// read and sort all of them, since events do not arrive in time order (a producer ships
    /// its backlog late).
    pub async fn query_by_time(
        &self,
        filter: &Filter,
        order: Order,
        after: Option<(i64, u64)>,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>, i64)>> {
        let after = after.map(|(time, index)| vec![time, to_sql(index)]);
        self.page(filter, order, &["time", "idx"], after, limit)
            .await
    }

    /// One page ordered by `keys` (the last is `idx`), strictly after the cursor `after`
    /// (one value per key): (index, leaf, time). The page's indexes are chosen from the
    /// filter's index alone (every index ends in `idx`, so it covers the inner query), and
    /// only those rows are read: a range of many thousand entries then sorts integers, not
    /// whole rows.
    async fn page(
        &self,
        filter: &Filter,
        order: Order,
        keys: &[&str],
        after: Option<Vec<i64>>,
        limit: u32,
    ) -> Result<Vec<(u64, Vec<u8>, i64)>> {
        let (compare, direction) = match order {
            Order::NewestFirst => (" < ", " DESC"),
            Order::OldestFirst => (" > ", " ASC"),
        };
        let tuple = keys.join(", ");
        let order_by = keys
            .iter()
            .map(|key| format!("{key}{direction}"))
            .collect::<Vec<_>>()
            .join(", ");
        let mut sql = Sql::new(
            "SELECT idx, leaf, time FROM entries WHERE idx IN (SELECT idx FROM entries WHERE 1 = 1",
        );
        conditions(&mut sql, filter);
        if let Some(values) = after {
            sql.push(&format!(" AND ({tuple}){compare}("));
            for (i, value) in values.into_iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Value::Int(value));
            }
            sql.push(")");
        }
        sql.push(&format!(" ORDER BY {order_by} LIMIT "))
            .bind(Value::Int(i64::from(limit)));
        sql.push(&format!(") ORDER BY {order_by}"));
        let rows: Vec<(i64, Vec<u8>, i64)> = sql
            .build(self.backend)
            .try_map(|row: sqlx::any::AnyRow| {
                use sqlx::Row as _;
                Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
            })
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(i, leaf, time)| Ok((from_sql(i)?, leaf, time)))
            .collect()
    }

    /// The highest sequence number logged from `producer`.
    pub async fn producer_last_seq(&self, producer: &str) -> Result<Option<u64>> {
        let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM producers WHERE name = $1")
            .bind(producer)
            .fetch_optional(&self.pool)
            .await?;
        seq.map(from_sql).transpose()
    }

    /// Every producer's highest logged sequence number.
    pub async fn producers(&self) -> Result<HashMap<String, u64>> {
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT name, last_seq FROM producers")
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(name, seq)| Ok((name, from_sql(seq)?)))
            .collect()
    }

    /// A detector state value saved with an earlier batch.
    pub async fn detector_state(&self, name: &str) -> Result<Option<i64>> {
        Ok(
            sqlx::query_scalar("SELECT value FROM detector_state WHERE name = $1")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// What the log says about each of `token_ids`: issued (a `TOKEN_ISSUED` event names
    /// it) and already alerted `never_issued`. Ids the log does not name are absent.
    pub async fn token_facts(&self, token_ids: &[&str]) -> Result<HashMap<String, TokenFacts>> {
        let mut facts: HashMap<String, TokenFacts> = HashMap::new();
        for chunk in token_ids.chunks(self.backend.ids_per_lookup()) {
            let mut sql = Sql::new("SELECT token_id, kind, reason FROM entries WHERE kind IN (");
            sql.bind(Value::Int(i64::from(EventKind::TokenIssued as i32)))
                .push(", ")
                .bind(Value::Int(i64::from(EventKind::Alert as i32)))
                .push(") AND token_id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    sql.push(", ");
                }
                sql.bind(Value::Text((*id).to_owned()));
            }
            sql.push(")");
            let rows: Vec<(String, i64, String)> = sql
                .build(self.backend)
                .try_map(|row: sqlx::any::AnyRow| {
                    use sqlx::Row as _;
                    Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
                })
                .fetch_all(&self.pool)
                .await?;
            for (token_id, kind, reason) in rows {
                let fact = facts.entry(token_id).or_default();
                if kind == i64::from(EventKind::TokenIssued as i32) {
                    fact.issued = true;
                } else if reason == Detector::NeverIssued.name() {
                    fact.alerted = true;
                }
            }
        }
        Ok(facts)
    }
}

#[cfg(test)]
mod placeholder_tests {
    use super::anonymous_placeholders;

    #[test]
    fn numbered_placeholders_become_anonymous_in_order() {
        assert_eq!(
            anonymous_placeholders("INSERT INTO t (a, b) VALUES ($1, $2), ($3, $10) LIMIT $11"),
            "INSERT INTO t (a, b) VALUES (?, ?), (?, ?) LIMIT ?"
        );
        assert_eq!(anonymous_placeholders("SELECT 1"), "SELECT 1");
    }
}
