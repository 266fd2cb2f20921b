//! The issuer's storage: one contract over SQLite (default) and PostgreSQL, through sqlx's
//! runtime-checked queries on the `Any` driver. Storage errors become domain errors here.
//!
//! Every statement is written once, with `$n` placeholders, which both backends accept.
//! Every write transaction starts with a write, so that on SQLite it takes the write lock
//! (and waits for it) up front instead of failing on a read-to-write upgrade.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use trias_policy::{GrantType, Policy, RoleError};

/// A storage failure, already sorted into what the domain cares about.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    AlreadyExists(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("corrupt row: {0}")]
    Corrupt(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::Database(db) if db.is_unique_violation() => {
                StoreError::AlreadyExists(db.message().to_owned())
            }
            _ => StoreError::Database(error),
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database engine a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A registered OAuth client.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    pub client_id: String,
    pub name: String,
    /// SHA-256 of the secret; `None` for public clients.
    pub secret_hash: Option<Vec<u8>>,
    pub redirect_uris: Vec<String>,
    pub grant_types: BTreeSet<GrantType>,
    pub scopes: BTreeSet<String>,
    pub public: bool,
    pub created_at: i64,
}

/// A user who logs in through a frontend.
#[derive(Clone)]
pub struct UserRecord {
    pub user_id: String,
    pub username: String,
    pub password_hash: String,
    pub totp_secret: Option<Vec<u8>>,
    pub created_at: i64,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("user_id", &self.user_id)
            .field("username", &self.username)
            .field("totp", &self.totp_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// A signing key as stored; the private part is PKCS#8.
#[derive(Clone)]
pub struct KeyRecord {
    pub kid: String,
    pub algorithm: String,
    pub private_pkcs8: Vec<u8>,
    pub public_key: Vec<u8>,
    pub published_at: i64,
    pub activates_at: i64,
    pub retires_at: Option<i64>,
    pub unpublished_at: Option<i64>,
}

impl std::fmt::Debug for KeyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRecord")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}

/// What an authorization code stands for.
#[derive(Debug, Clone)]
pub struct CodeRecord {
    pub client_id: String,
    pub user_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub audience: String,
    pub acr: String,
    pub auth_time: i64,
    pub expires_at: i64,
}

/// A refresh-token family: every token rotated from one authorization.
#[derive(Debug, Clone)]
pub struct FamilyRecord {
    pub family_id: String,
    pub client_id: String,
    pub subject: String,
    pub scope: String,
    pub audience: String,
    pub acr: String,
    pub auth_time: i64,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
}

/// A pending or decided request to grant a role.
#[derive(Debug, Clone)]
pub struct RoleGrantRecord {
    pub id: String,
    pub subject: String,
    pub role: String,
    pub justification: String,
    pub requested_by: String,
    pub approved_by: Option<String>,
    pub state: String,
    pub requested_at: i64,
    pub expires_at: i64,
}

/// A revocation as the feed publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevocationRecord {
    pub seq: i64,
    pub token_id: Option<String>,
    pub family_id: Option<String>,
    pub revoked_at: i64,
    pub expires_at: i64,
    pub reason: String,
}

/// What spending a refresh token found.
#[derive(Debug)]
pub enum Spend {
    /// The token was live and is now spent; a child was stored with the new hash.
    Rotated(FamilyRecord),
    /// The token had been spent before: the family is now revoked (revocation `seq`).
    Reused {
        family_id: String,
        revocation: Option<RevocationRecord>,
    },
    /// No such token.
    Unknown,
    /// The token is live but may not be rotated (wrong client, revoked or expired family):
    /// nothing was changed.
    Refused(String),
}

/// What approving a role grant did.
#[derive(Debug)]
pub enum Approval {
    Approved,
    /// Not pending, expired, or requested by (or for) the approver: nothing changed.
    NotApprovable,
    /// The duty policy forbids the subject this role; the grant is now refused.
    Conflict(RoleError),
}

/// What redeeming an authorization code found.
#[derive(Debug)]
pub enum Redeem {
    /// First use: the code is now spent.
    Fresh(CodeRecord),
    /// The code had been redeemed before; what it was exchanged for is revoked.
    Replayed {
        revocations: Vec<RevocationRecord>,
    },
    Unknown,
}

/// The issuer's database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
}

fn join(items: impl IntoIterator<Item = impl AsRef<str>>) -> String {
    items
        .into_iter()
        .map(|s| s.as_ref().to_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

fn split(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split_ascii_whitespace().map(str::to_owned)
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
            return Err(StoreError::Corrupt(
                "database url must start with sqlite: or postgres://".into(),
            ));
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
                    sqlx::query("PRAGMA foreign_keys = ON")
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

    // ----- clients -----

    pub async fn insert_client(&self, client: &ClientRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO clients (client_id, name, secret_hash, redirect_uris, grant_types, scopes, public, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&client.client_id)
        .bind(&client.name)
        .bind(client.secret_hash.clone())
        .bind(join(&client.redirect_uris))
        .bind(join(client.grant_types.iter().map(|g| g.as_str())))
        .bind(join(&client.scopes))
        .bind(i64::from(client.public))
        .bind(client.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists(format!("client {}", client.client_id))
            }
            other => other,
        })?;
        Ok(())
    }

    pub async fn client(&self, client_id: &str) -> Result<Option<ClientRecord>> {
        let row = sqlx::query(
            "SELECT client_id, name, secret_hash, redirect_uris, grant_types, scopes, public, created_at
             FROM clients WHERE client_id = $1",
        )
        .bind(client_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| client_from_row(&r)).transpose()
    }

    pub async fn clients(&self) -> Result<Vec<ClientRecord>> {
        let rows = sqlx::query(
            "SELECT client_id, name, secret_hash, redirect_uris, grant_types, scopes, public, created_at
             FROM clients ORDER BY client_id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(client_from_row).collect()
    }

    // ----- users -----

    pub async fn insert_user(&self, user: &UserRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO users (user_id, username, password_hash, totp_secret, created_at)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&user.user_id)
        .bind(&user.username)
        .bind(&user.password_hash)
        .bind(user.totp_secret.clone())
        .bind(user.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::AlreadyExists(_) => {
                StoreError::AlreadyExists(format!("user {}", user.username))
            }
            other => other,
        })?;
        Ok(())
    }

    pub async fn user_by_name(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT user_id, username, password_hash, totp_secret, created_at FROM users WHERE username = $1",
        )
        .bind(username)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    pub async fn user(&self, user_id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query(
            "SELECT user_id, username, password_hash, totp_secret, created_at FROM users WHERE user_id = $1",
        )
        .bind(user_id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| user_from_row(&r)).transpose()
    }

    pub async fn users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query(
            "SELECT user_id, username, password_hash, totp_secret, created_at FROM users ORDER BY username",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// Whether a subject (user id or client id) exists.
    pub async fn subject_exists(&self, subject: &str) -> Result<bool> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM users WHERE user_id = $1) + (SELECT COUNT(*) FROM clients WHERE client_id = $1)",
        )
        .bind(subject)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }

    // ----- roles -----

    /// Whether any subject holds `role`.
    pub async fn role_is_held(&self, role: &str) -> Result<bool> {
        let row = sqlx::query("SELECT subject FROM role_assignments WHERE role = $1 LIMIT 1")
            .bind(role)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.is_some())
    }

    pub async fn roles_of(&self, subject: &str) -> Result<BTreeSet<String>> {
        let rows = sqlx::query("SELECT role FROM role_assignments WHERE subject = $1")
            .bind(subject)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Assigns a role directly (local bootstrap and tests; the admin API goes through
    /// [`Store::approve_grant`]), refusing it if the duty policy forbids it.
    pub async fn assign_role(
        &self,
        subject: &str,
        role: &str,
        grant_id: &str,
        policy: &Policy,
        now: i64,
    ) -> Result<Result<(), RoleError>> {
        let mut tx = self.pool.begin().await?;
        let outcome = assign_in(&mut tx, subject, role, grant_id, policy, now).await?;
        if outcome.is_ok() {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(outcome)
    }

    /// Approves a pending, unexpired grant requested by someone other than `approver` (and
    /// not for the approver), and assigns the role, in one transaction. Of two concurrent
    /// approvals exactly one passes the conditional update. A grant the duty policy forbids is
    /// marked refused and nothing is assigned.
    pub async fn approve_grant(
        &self,
        id: &str,
        approver: &str,
        policy: &Policy,
        now: i64,
    ) -> Result<Approval> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE role_grants SET state = 'approved', approved_by = $2
             WHERE id = $1 AND state = 'pending' AND expires_at > $3 AND requested_by <> $2 AND subject <> $2
             RETURNING subject, role",
        )
        .bind(id)
        .bind(approver)
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            tx.rollback().await?;
            return Ok(Approval::NotApprovable);
        };
        let subject: String = row.try_get(0)?;
        let role: String = row.try_get(1)?;
        match assign_in(&mut tx, &subject, &role, id, policy, now).await? {
            Ok(()) => {
                tx.commit().await?;
                Ok(Approval::Approved)
            }
            Err(refusal) => {
                tx.rollback().await?;
                self.mark_grant_state(id, "pending", "refused").await?;
                Ok(Approval::Conflict(refusal))
            }
        }
    }

    pub async fn remove_role(&self, subject: &str, role: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM role_assignments WHERE subject = $1 AND role = $2")
            .bind(subject)
            .bind(role)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn insert_role_grant(&self, grant: &RoleGrantRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO role_grants (id, subject, role, justification, requested_by, approved_by, state, requested_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(&grant.id)
        .bind(&grant.subject)
        .bind(&grant.role)
        .bind(&grant.justification)
        .bind(&grant.requested_by)
        .bind(grant.approved_by.clone())
        .bind(&grant.state)
        .bind(grant.requested_at)
        .bind(grant.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn role_grant(&self, id: &str) -> Result<Option<RoleGrantRecord>> {
        let row = sqlx::query(
            "SELECT id, subject, role, justification, requested_by, approved_by, state, requested_at, expires_at
             FROM role_grants WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| grant_from_row(&r)).transpose()
    }

    pub async fn role_grants(&self, state: Option<&str>) -> Result<Vec<RoleGrantRecord>> {
        let rows = sqlx::query(
            "SELECT id, subject, role, justification, requested_by, approved_by, state, requested_at, expires_at
             FROM role_grants WHERE $1 = '' OR state = $1 ORDER BY requested_at, id",
        )
        .bind(state.unwrap_or(""))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(grant_from_row).collect()
    }

    pub async fn mark_grant_state(&self, id: &str, from: &str, to: &str) -> Result<bool> {
        let done = sqlx::query("UPDATE role_grants SET state = $3 WHERE id = $1 AND state = $2")
            .bind(id)
            .bind(from)
            .bind(to)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    // ----- signing keys -----

    pub async fn keys(&self) -> Result<Vec<KeyRecord>> {
        let rows = sqlx::query(
            "SELECT kid, algorithm, private_pkcs8, public_key, published_at, activates_at, retires_at, unpublished_at
             FROM signing_keys ORDER BY activates_at, kid",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(KeyRecord {
                    kid: r.try_get(0)?,
                    algorithm: r.try_get(1)?,
                    private_pkcs8: r.try_get(2)?,
                    public_key: r.try_get(3)?,
                    published_at: r.try_get(4)?,
                    activates_at: r.try_get(5)?,
                    retires_at: r.try_get(6)?,
                    unpublished_at: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// Adds `key` and retires every key still current at its activation: they stop signing
    /// when it activates and leave the JWKS `linger` seconds later.
    pub async fn add_key(&self, key: &KeyRecord, linger: i64) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE signing_keys SET retires_at = $1, unpublished_at = $2
             WHERE retires_at IS NULL AND activates_at <= $1",
        )
        .bind(key.activates_at)
        .bind(key.activates_at + linger)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO signing_keys (kid, algorithm, private_pkcs8, public_key, published_at, activates_at, retires_at, unpublished_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, NULL)",
        )
        .bind(&key.kid)
        .bind(&key.algorithm)
        .bind(key.private_pkcs8.clone())
        .bind(key.public_key.clone())
        .bind(key.published_at)
        .bind(key.activates_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    // ----- authorization codes -----

    pub async fn insert_code(&self, code_hash: &[u8], code: &CodeRecord) -> Result<()> {
        sqlx::query(
            "INSERT INTO auth_codes (code_hash, client_id, user_id, redirect_uri, code_challenge, scope, audience, acr, auth_time, expires_at, used)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0)",
        )
        .bind(code_hash.to_vec())
        .bind(&code.client_id)
        .bind(&code.user_id)
        .bind(&code.redirect_uri)
        .bind(&code.code_challenge)
        .bind(&code.scope)
        .bind(&code.audience)
        .bind(&code.acr)
        .bind(code.auth_time)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Spends an authorization code: one conditional update, so a code is redeemed at most
    /// once however many requests race. A replay revokes what the first use produced.
    pub async fn redeem_code(&self, code_hash: &[u8], now: i64) -> Result<Redeem> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(
            "UPDATE auth_codes SET used = 1 WHERE code_hash = $1 AND used = 0
             RETURNING client_id, user_id, redirect_uri, code_challenge, scope, audience, acr, auth_time, expires_at",
        )
        .bind(code_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(r) = row {
            let code = CodeRecord {
                client_id: r.try_get(0)?,
                user_id: r.try_get(1)?,
                redirect_uri: r.try_get(2)?,
                code_challenge: r.try_get(3)?,
                scope: r.try_get(4)?,
                audience: r.try_get(5)?,
                acr: r.try_get(6)?,
                auth_time: r.try_get(7)?,
                expires_at: r.try_get(8)?,
            };
            tx.commit().await?;
            return Ok(Redeem::Fresh(code));
        }
        let replay = sqlx::query(
            "SELECT token_id, family_id, expires_at FROM auth_codes WHERE code_hash = $1",
        )
        .bind(code_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(r) = replay else {
            tx.rollback().await?;
            return Ok(Redeem::Unknown);
        };
        let token_id: Option<String> = r.try_get(0)?;
        let family_id: Option<String> = r.try_get(1)?;
        let mut revocations = Vec::new();
        if let Some(family_id) = &family_id
            && let Some(rev) = self
                .revoke_family_in(&mut tx, family_id, "authorization_code_replay", now)
                .await?
        {
            revocations.push(rev);
        }
        if let Some(token_id) = &token_id {
            // The access token lives at most its lifetime past the code's use; an hour covers
            // any configured lifetime.
            let rev = self
                .insert_revocation(
                    &mut tx,
                    Some(token_id),
                    None,
                    now,
                    now + 3600,
                    "authorization_code_replay",
                )
                .await?;
            revocations.push(rev);
        }
        tx.commit().await?;
        Ok(Redeem::Replayed { revocations })
    }

    /// Records what a code was exchanged for, so a replay can revoke it.
    pub async fn note_code_exchange(
        &self,
        code_hash: &[u8],
        token_id: &str,
        family_id: Option<&str>,
    ) -> Result<()> {
        sqlx::query("UPDATE auth_codes SET token_id = $2, family_id = $3 WHERE code_hash = $1")
            .bind(code_hash.to_vec())
            .bind(token_id)
            .bind(family_id.map(str::to_owned))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes codes that expired before `now` (they can no longer be redeemed or replayed usefully).
    pub async fn purge_codes(&self, now: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM auth_codes WHERE expires_at < $1")
            .bind(now - 3600)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // ----- refresh families -----

    /// Creates a family and its first refresh token in one transaction.
    pub async fn create_family(&self, family: &FamilyRecord, token_hash: &[u8]) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO refresh_families (family_id, client_id, subject, scope, audience, acr, auth_time, created_at, expires_at, revoked_at, revoked_reason)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL)",
        )
        .bind(&family.family_id)
        .bind(&family.client_id)
        .bind(&family.subject)
        .bind(&family.scope)
        .bind(&family.audience)
        .bind(&family.acr)
        .bind(family.auth_time)
        .bind(family.created_at)
        .bind(family.expires_at)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, generation, spent, created_at) VALUES ($1, $2, 0, 0, $3)",
        )
        .bind(token_hash.to_vec())
        .bind(&family.family_id)
        .bind(family.created_at)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Spends a refresh token and stores its successor, in one transaction whose first
    /// statement is the conditional update `… WHERE spent = 0`: of two concurrent uses exactly
    /// one rotates; the other sees a spent token, which is reuse and revokes the family.
    pub async fn rotate_refresh(
        &self,
        token_hash: &[u8],
        client_id: &str,
        new_hash: &[u8],
        now: i64,
    ) -> Result<Spend> {
        let mut tx = self.pool.begin().await?;
        let spent = sqlx::query(
            "UPDATE refresh_tokens SET spent = 1 WHERE token_hash = $1 AND spent = 0 RETURNING family_id, generation",
        )
        .bind(token_hash.to_vec())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(spent) = spent else {
            let known = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
                .bind(token_hash.to_vec())
                .fetch_optional(&mut *tx)
                .await?;
            let Some(known) = known else {
                tx.rollback().await?;
                return Ok(Spend::Unknown);
            };
            let family_id: String = known.try_get(0)?;
            let revocation = self
                .revoke_family_in(&mut tx, &family_id, "refresh_reuse", now)
                .await?;
            tx.commit().await?;
            return Ok(Spend::Reused {
                family_id,
                revocation,
            });
        };
        let family_id: String = spent.try_get(0)?;
        let generation: i64 = spent.try_get(1)?;
        let family = self.family_in(&mut tx, &family_id).await?.ok_or_else(|| {
            StoreError::Corrupt(format!("refresh token without family {family_id}"))
        })?;
        let refusal = if family.client_id != client_id {
            Some("refresh token was issued to another client")
        } else if family.revoked_at.is_some() {
            Some("refresh token family is revoked")
        } else if family.expires_at <= now {
            Some("refresh token has expired")
        } else {
            None
        };
        if let Some(reason) = refusal {
            tx.rollback().await?;
            return Ok(Spend::Refused(reason.to_owned()));
        }
        sqlx::query(
            "INSERT INTO refresh_tokens (token_hash, family_id, generation, spent, created_at) VALUES ($1, $2, $3, 0, $4)",
        )
        .bind(new_hash.to_vec())
        .bind(&family_id)
        .bind(generation + 1)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Spend::Rotated(family))
    }

    /// The family a refresh token belongs to, whether or not it is spent.
    pub async fn family_of_token(&self, token_hash: &[u8]) -> Result<Option<FamilyRecord>> {
        let mut conn = self.pool.acquire().await?;
        let row = sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash.to_vec())
            .fetch_optional(&mut *conn)
            .await?;
        match row {
            Some(r) => {
                let family_id: String = r.try_get(0)?;
                self.family_in(&mut conn, &family_id).await
            }
            None => Ok(None),
        }
    }

    /// The family of a refresh token that is not yet spent.
    pub async fn family_of_live_token(&self, token_hash: &[u8]) -> Result<Option<FamilyRecord>> {
        let mut conn = self.pool.acquire().await?;
        let row =
            sqlx::query("SELECT family_id FROM refresh_tokens WHERE token_hash = $1 AND spent = 0")
                .bind(token_hash.to_vec())
                .fetch_optional(&mut *conn)
                .await?;
        match row {
            Some(r) => {
                let family_id: String = r.try_get(0)?;
                self.family_in(&mut conn, &family_id).await
            }
            None => Ok(None),
        }
    }

    async fn family_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        family_id: &str,
    ) -> Result<Option<FamilyRecord>> {
        let row = sqlx::query(
            "SELECT family_id, client_id, subject, scope, audience, acr, auth_time, created_at, expires_at, revoked_at
             FROM refresh_families WHERE family_id = $1",
        )
        .bind(family_id)
        .fetch_optional(&mut *conn)
        .await?;
        row.map(|r| {
            Ok(FamilyRecord {
                family_id: r.try_get(0)?,
                client_id: r.try_get(1)?,
                subject: r.try_get(2)?,
                scope: r.try_get(3)?,
                audience: r.try_get(4)?,
                acr: r.try_get(5)?,
                auth_time: r.try_get(6)?,
                created_at: r.try_get(7)?,
                expires_at: r.try_get(8)?,
                revoked_at: r.try_get(9)?,
            })
        })
        .transpose()
    }

    /// Revokes a family (if not already revoked) and publishes the revocation.
    pub async fn revoke_family(
        &self,
        family_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<RevocationRecord>> {
        let mut tx = self.pool.begin().await?;
        let rev = self
            .revoke_family_in(&mut tx, family_id, reason, now)
            .await?;
        tx.commit().await?;
        Ok(rev)
    }

    async fn revoke_family_in(
        &self,
        conn: &mut sqlx::AnyConnection,
        family_id: &str,
        reason: &str,
        now: i64,
    ) -> Result<Option<RevocationRecord>> {
        let row = sqlx::query(
            "UPDATE refresh_families SET revoked_at = $2, revoked_reason = $3
             WHERE family_id = $1 AND revoked_at IS NULL RETURNING expires_at",
        )
        .bind(family_id)
        .bind(now)
        .bind(reason)
        .fetch_optional(&mut *conn)
        .await?;
        match row {
            // Access tokens of the family outlive the family by at most their lifetime; an
            // hour past the family's own expiry covers any configured lifetime.
            Some(r) => {
                let expires_at: i64 = r.try_get(0)?;
                let rev = self
                    .insert_revocation(
                        conn,
                        None,
                        Some(family_id),
                        now,
                        expires_at.max(now) + 3600,
                        reason,
                    )
                    .await?;
                Ok(Some(rev))
            }
            None => Ok(None),
        }
    }

    // ----- revocations -----

    /// Revokes one access token by jti until `expires_at` (its `exp`).
    pub async fn revoke_token(
        &self,
        token_id: &str,
        expires_at: i64,
        reason: &str,
        now: i64,
    ) -> Result<RevocationRecord> {
        let mut tx = self.pool.begin().await?;
        let rev = self
            .insert_revocation(&mut tx, Some(token_id), None, now, expires_at, reason)
            .await?;
        tx.commit().await?;
        Ok(rev)
    }

    async fn insert_revocation(
        &self,
        conn: &mut sqlx::AnyConnection,
        token_id: Option<&str>,
        family_id: Option<&str>,
        now: i64,
        expires_at: i64,
        reason: &str,
    ) -> Result<RevocationRecord> {
        if self.backend == Backend::Postgres {
            // A sequence hands out numbers in call order but transactions commit in any order;
            // a feed reader could then pass a number whose row commits later. Serialising the
            // (rare) revocations makes numbers commit in order, also across several issuers.
            sqlx::query("LOCK TABLE revocations IN EXCLUSIVE MODE")
                .execute(&mut *conn)
                .await?;
        }
        let row = sqlx::query(
            "INSERT INTO revocations (token_id, family_id, revoked_at, expires_at, reason) VALUES ($1, $2, $3, $4, $5) RETURNING seq",
        )
        .bind(token_id.map(str::to_owned))
        .bind(family_id.map(str::to_owned))
        .bind(now)
        .bind(expires_at)
        .bind(reason)
        .fetch_one(&mut *conn)
        .await?;
        Ok(RevocationRecord {
            seq: row.try_get(0)?,
            token_id: token_id.map(str::to_owned),
            family_id: family_id.map(str::to_owned),
            revoked_at: now,
            expires_at,
            reason: reason.to_owned(),
        })
    }

    /// Revocations after `after_seq` that still matter at `now`, oldest first.
    pub async fn revocations_after(
        &self,
        after_seq: i64,
        now: i64,
        limit: i64,
    ) -> Result<Vec<RevocationRecord>> {
        let rows = sqlx::query(
            "SELECT seq, token_id, family_id, revoked_at, expires_at, reason FROM revocations
             WHERE seq > $1 AND expires_at > $2 ORDER BY seq LIMIT $3",
        )
        .bind(after_seq)
        .bind(now)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RevocationRecord {
                    seq: r.try_get(0)?,
                    token_id: r.try_get(1)?,
                    family_id: r.try_get(2)?,
                    revoked_at: r.try_get(3)?,
                    expires_at: r.try_get(4)?,
                    reason: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Whether a token id or family id is revoked (for the issuer's own admin-token checks).
    pub async fn is_revoked(&self, token_id: &str, family_id: Option<&str>) -> Result<bool> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM revocations WHERE token_id = $1 OR (family_id IS NOT NULL AND family_id = $2)",
        )
        .bind(token_id)
        .bind(family_id.unwrap_or(""))
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<i64, _>(0)? > 0)
    }
}

/// Takes the subject's role lock, then assigns the role if the policy allows it beside the
/// roles the subject holds. The lock row serialises role changes per subject on both backends.
async fn assign_in(
    conn: &mut sqlx::AnyConnection,
    subject: &str,
    role: &str,
    grant_id: &str,
    policy: &Policy,
    now: i64,
) -> Result<Result<(), RoleError>> {
    sqlx::query(
        "INSERT INTO role_locks (subject) VALUES ($1) ON CONFLICT (subject) DO UPDATE SET subject = excluded.subject",
    )
    .bind(subject)
    .execute(&mut *conn)
    .await?;
    let rows = sqlx::query("SELECT role FROM role_assignments WHERE subject = $1")
        .bind(subject)
        .fetch_all(&mut *conn)
        .await?;
    let held = rows
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if let Err(refusal) = policy.may_hold_role(&held, role) {
        return Ok(Err(refusal));
    }
    sqlx::query(
        "INSERT INTO role_assignments (subject, role, grant_id, granted_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (subject, role) DO NOTHING",
    )
    .bind(subject)
    .bind(role)
    .bind(grant_id)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(()))
}

fn client_from_row(r: &AnyRow) -> Result<ClientRecord> {
    let grant_types: String = r.try_get(4)?;
    let grant_types = split(&grant_types)
        .map(|g| {
            GrantType::from_str(&g).map_err(|_| StoreError::Corrupt(format!("grant type {g}")))
        })
        .collect::<Result<_>>()?;
    let redirect_uris: String = r.try_get(3)?;
    let scopes: String = r.try_get(5)?;
    Ok(ClientRecord {
        client_id: r.try_get(0)?,
        name: r.try_get(1)?,
        secret_hash: r.try_get(2)?,
        redirect_uris: split(&redirect_uris).collect(),
        grant_types,
        scopes: split(&scopes).collect(),
        public: r.try_get::<i64, _>(6)? != 0,
        created_at: r.try_get(7)?,
    })
}

fn user_from_row(r: &AnyRow) -> Result<UserRecord> {
    Ok(UserRecord {
        user_id: r.try_get(0)?,
        username: r.try_get(1)?,
        password_hash: r.try_get(2)?,
        totp_secret: r.try_get(3)?,
        created_at: r.try_get(4)?,
    })
}

fn grant_from_row(r: &AnyRow) -> Result<RoleGrantRecord> {
    Ok(RoleGrantRecord {
        id: r.try_get(0)?,
        subject: r.try_get(1)?,
        role: r.try_get(2)?,
        justification: r.try_get(3)?,
        requested_by: r.try_get(4)?,
        approved_by: r.try_get(5)?,
        state: r.try_get(6)?,
        requested_at: r.try_get(7)?,
        expires_at: r.try_get(8)?,
    })
}
