-- The detectors: whether a token id was ever issued is looked up by (token_id, kind), and
-- the little state the detectors cannot re-derive from the log is kept by name.

CREATE INDEX entries_token_kind ON entries (token_id, kind);

-- `never_issued_from`: every passed check below this index has been decided.
CREATE TABLE detector_state (
    name  TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
