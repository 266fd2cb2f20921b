//! Key custody: token-signing keys live only in the issuer's database, so a validator or an
//! auditor whose configuration names that database (as its own database, a TLS file, its
//! policy or its outbox) refuses to start instead of running next to the keys it must never
//! hold.

use std::io::Read as _;
use std::path::{Path, PathBuf};

/// The first bytes of every SQLite database file.
const SQLITE_HEADER: &[u8] = b"SQLite format 3\0";
/// The table the issuer keeps its private signing keys in.
const SIGNING_KEYS_TABLE: &[u8] = b"CREATE TABLE signing_keys";
/// How much of a database file is read: the schema starts on its first page.
const SCHEMA_BYTES: u64 = 256 * 1024;
/// How much of its write-ahead log is read: a new database's schema pages come first.
const WAL_BYTES: u64 = 4 * 1024 * 1024;

/// The file a `sqlite://` URL names, if it is one.
pub fn sqlite_path(url: &str) -> Option<PathBuf> {
    let rest = url.strip_prefix("sqlite://")?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:").then(|| PathBuf::from(path))
}

/// Whether the file at `path` is the issuer's key store. A file that does not exist (yet)
/// or cannot be read is not. The schema may still sit in the write-ahead log (the issuer
/// runs SQLite in WAL mode), so that is read too.
pub fn holds_signing_keys(path: &Path) -> bool {
    let Some(head) = read_head(path, SCHEMA_BYTES) else {
        return false;
    };
    if !head.starts_with(SQLITE_HEADER) {
        return false;
    }
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    let wal = read_head(Path::new(&wal), WAL_BYTES).unwrap_or_default();
    [head, wal].iter().any(|bytes| {
        bytes
            .windows(SIGNING_KEYS_TABLE.len())
            .any(|window| window == SIGNING_KEYS_TABLE)
    })
}

/// The first `limit` bytes of a file, if it can be read.
fn read_head(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let file = std::fs::File::open(path).ok()?;
    let mut head = Vec::new();
    file.take(limit).read_to_end(&mut head).ok()?;
    Some(head)
}

/// Refuses the first of `files` (each with the configuration key that names it) that holds
/// token-signing keys, naming the key.
pub fn refuse_signing_keys<'a>(
    files: impl IntoIterator<Item = (&'a str, PathBuf)>,
) -> Result<(), String> {
    for (key, path) in files {
        if holds_signing_keys(&path) {
            return Err(format!(
                "{key}: {} is the issuer's signing-key database; this service must never \
                 hold token-signing keys",
                path.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, reason = "tests fail loudly")]

    use super::*;
    use sqlx::ConnectOptions as _;

    /// A database in WAL mode holding `table`; while the connection lives, the schema may
    /// be only in the write-ahead log.
    async fn database(path: &Path, table: &str) -> sqlx::SqliteConnection {
        let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .connect()
            .await
            .unwrap();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE {table} (kid TEXT PRIMARY KEY, private_key BLOB)"
        )))
        .execute(&mut conn)
        .await
        .unwrap();
        conn
    }

    #[tokio::test]
    async fn the_issuers_key_store_is_recognised_and_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (keys, ledger) = (dir.path().join("issuer.db"), dir.path().join("ledger.db"));
        let _keys = database(&keys, "signing_keys").await;
        let _ledger = database(&ledger, "ledger").await;
        assert!(holds_signing_keys(&keys));
        assert!(!holds_signing_keys(&ledger));
        assert!(!holds_signing_keys(&dir.path().join("missing.db")));

        let url = format!("sqlite://{}?mode=rwc", keys.display());
        assert_eq!(sqlite_path(&url), Some(keys.clone()));
        let error = refuse_signing_keys([
            ("tls.key", ledger.clone()),
            ("database_url", sqlite_path(&url).unwrap()),
        ])
        .unwrap_err();
        assert!(error.starts_with("database_url: "), "{error}");
        assert!(refuse_signing_keys([("database_url", ledger)]).is_ok());
    }
}
