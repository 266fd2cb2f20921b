-- The issuer's state (booleans are BIGINT 0/1 so both backends decode them alike): clients, users, roles, signing keys, refresh families, codes, revocations.
-- Times are unix seconds; secrets are stored only as hashes (client secrets, refresh tokens,
-- authorization codes: SHA-256 of 256-bit random values; passwords: argon2id).

CREATE TABLE clients (
    client_id     TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    secret_hash   BLOB,
    redirect_uris TEXT NOT NULL,
    grant_types   TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    public        BIGINT NOT NULL,
    created_at    BIGINT NOT NULL
);

CREATE TABLE users (
    user_id       TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_secret   BLOB,
    created_at    BIGINT NOT NULL
);

-- One row per subject whose roles are being changed; taking it serialises role changes per subject.
CREATE TABLE role_locks (
    subject TEXT PRIMARY KEY
);

CREATE TABLE role_assignments (
    subject    TEXT NOT NULL,
    role       TEXT NOT NULL,
    grant_id   TEXT NOT NULL,
    granted_at BIGINT NOT NULL,
    PRIMARY KEY (subject, role)
);

CREATE TABLE role_grants (
    id            TEXT PRIMARY KEY,
    subject       TEXT NOT NULL,
    role          TEXT NOT NULL,
    justification TEXT NOT NULL,
    requested_by  TEXT NOT NULL,
    approved_by   TEXT,
    state         TEXT NOT NULL,
    requested_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL
);

CREATE TABLE signing_keys (
    kid            TEXT PRIMARY KEY,
    algorithm      TEXT NOT NULL,
    private_pkcs8  BLOB NOT NULL,
    public_key     BLOB NOT NULL,
    published_at   BIGINT NOT NULL,
    activates_at   BIGINT NOT NULL,
    retires_at     BIGINT,
    unpublished_at BIGINT
);

CREATE TABLE refresh_families (
    family_id      TEXT PRIMARY KEY,
    client_id      TEXT NOT NULL,
    subject        TEXT NOT NULL,
    scope          TEXT NOT NULL,
    audience       TEXT NOT NULL,
    acr            TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    revoked_at     BIGINT,
    revoked_reason TEXT
);

CREATE TABLE refresh_tokens (
    token_hash BLOB PRIMARY KEY,
    family_id  TEXT NOT NULL REFERENCES refresh_families (family_id),
    generation BIGINT NOT NULL,
    spent      BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    UNIQUE (family_id, generation)
);

CREATE TABLE auth_codes (
    code_hash      BLOB PRIMARY KEY,
    client_id      TEXT NOT NULL,
    user_id        TEXT NOT NULL,
    redirect_uri   TEXT NOT NULL,
    code_challenge TEXT NOT NULL,
    scope          TEXT NOT NULL,
    audience       TEXT NOT NULL,
    acr            TEXT NOT NULL,
    auth_time      BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    used           BIGINT NOT NULL,
    -- What the code was exchanged for, so a replayed code can revoke it (RFC 6749 §4.1.2).
    token_id       TEXT,
    family_id      TEXT
);

CREATE TABLE revocations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    token_id   TEXT,
    family_id  TEXT,
    revoked_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    reason     TEXT NOT NULL,
    CHECK ((token_id IS NULL) <> (family_id IS NULL))
);
CREATE INDEX revocations_expires ON revocations (expires_at);
