-- The audit log: entries (the leaves), the Merkle tree's stored nodes, the signed
-- checkpoints, and each producer's last sequence number. Times are unix nanoseconds.
--
-- entries, nodes and checkpoints are append-only: the triggers below make the database
-- itself refuse UPDATE, DELETE and TRUNCATE. In production the service role additionally
-- has only SELECT and INSERT on them (REVOKE UPDATE, DELETE, TRUNCATE ON entries, nodes,
-- checkpoints FROM trias_auditor), and the triggers are owned by another role, so the
-- auditor's own credentials can neither edit the record nor drop the guard.

CREATE TABLE entries (
    idx          BIGINT PRIMARY KEY,
    event_id     TEXT NOT NULL UNIQUE,
    producer     TEXT NOT NULL,
    producer_seq BIGINT NOT NULL,
    time         BIGINT NOT NULL,
    kind         BIGINT NOT NULL,
    subject      TEXT NOT NULL,
    client_id    TEXT NOT NULL,
    token_id     TEXT NOT NULL,
    family_id    TEXT NOT NULL,
    audience     TEXT NOT NULL,
    action       TEXT NOT NULL,
    resource     TEXT NOT NULL,
    decision     BIGINT NOT NULL,
    reason       TEXT NOT NULL,
    -- The exact bytes whose leaf hash is in the tree: the event's protobuf encoding.
    leaf         BYTEA NOT NULL
);

-- One index per query filter, each ending in idx so a page is a range scan in log order.
CREATE INDEX entries_subject   ON entries (subject, idx);
CREATE INDEX entries_client_id ON entries (client_id, idx);
CREATE INDEX entries_token_id  ON entries (token_id, idx);
CREATE INDEX entries_family_id ON entries (family_id, idx);
CREATE INDEX entries_audience  ON entries (audience, action, idx);
CREATE INDEX entries_resource  ON entries (resource, idx);
CREATE INDEX entries_kind      ON entries (kind, idx);
CREATE INDEX entries_time      ON entries (time, idx);

-- The root of the perfect subtree over leaves [idx * 2^level, (idx + 1) * 2^level).
CREATE TABLE nodes (
    level BIGINT NOT NULL,
    idx   BIGINT NOT NULL,
    hash  BYTEA NOT NULL,
    PRIMARY KEY (level, idx)
);

CREATE TABLE checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root      BYTEA NOT NULL,
    note      TEXT NOT NULL,
    time      BIGINT NOT NULL
);

-- The highest sequence number logged per producer (gap detection reads it).
CREATE TABLE producers (
    name     TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE FUNCTION trias_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the audit log is append-only: % on % refused', TG_OP, TG_TABLE_NAME;
END;
$$;

CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON entries
    FOR EACH ROW EXECUTE FUNCTION trias_audit_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON entries
    FOR EACH STATEMENT EXECUTE FUNCTION trias_audit_append_only();
CREATE TRIGGER nodes_append_only BEFORE UPDATE OR DELETE ON nodes
    FOR EACH ROW EXECUTE FUNCTION trias_audit_append_only();
CREATE TRIGGER nodes_no_truncate BEFORE TRUNCATE ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION trias_audit_append_only();
CREATE TRIGGER checkpoints_append_only BEFORE UPDATE OR DELETE ON checkpoints
    FOR EACH ROW EXECUTE FUNCTION trias_audit_append_only();
CREATE TRIGGER checkpoints_no_truncate BEFORE TRUNCATE ON checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION trias_audit_append_only();
