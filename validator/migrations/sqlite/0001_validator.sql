-- The dual-control ledger: which subject performed which listed action on each object, per
-- dual-control rule (named by its audience). The primary key lets a subject hold at most one
-- listed action per object, so the database decides races between concurrent attempts.
-- Times are unix seconds.

CREATE TABLE dual_control_ledger (
    rule_audience TEXT NOT NULL,
    object        TEXT NOT NULL,
    subject       TEXT NOT NULL,
    action        TEXT NOT NULL,
    token_id      TEXT NOT NULL,
    recorded_at   BIGINT NOT NULL,
    PRIMARY KEY (rule_audience, object, subject)
);
