-- The audit log: entries (the leaves), the Merkle tree's stored nodes, the signed
-- checkpoints, and each producer's last sequence number. Times are unix nanoseconds.
--
-- entries, nodes and checkpoints are append-only: the triggers below make the database
-- itself refuse UPDATE and DELETE, so no code path (and no stray SQL) edits the record.

-- `idx` is the leaf index; INTEGER PRIMARY KEY makes it SQLite's rowid.
CREATE TABLE entries (
    idx          INTEGER PRIMARY KEY,
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
    leaf         BLOB NOT NULL
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
    hash  BLOB NOT NULL,
    PRIMARY KEY (level, idx)
) WITHOUT ROWID;

CREATE TABLE checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root      BLOB NOT NULL,
    note      TEXT NOT NULL,
    time      BIGINT NOT NULL
);

-- The highest sequence number logged per producer (gap detection reads it).
CREATE TABLE producers (
    name     TEXT PRIMARY KEY,
    last_seq BIGINT NOT NULL
);

CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be updated'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: entries cannot be deleted'); END;
CREATE TRIGGER nodes_no_update BEFORE UPDATE ON nodes
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: nodes cannot be updated'); END;
CREATE TRIGGER nodes_no_delete BEFORE DELETE ON nodes
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: nodes cannot be deleted'); END;
CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: checkpoints cannot be updated'); END;
CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only: checkpoints cannot be deleted'); END;
