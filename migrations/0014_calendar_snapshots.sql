-- Snapshots of property calendars: a cache of a prefix of the log, so the
-- first command on a property with a long history after a restart reads one
-- row and the events after it instead of the whole history (P3,
-- docs/benchmarks.md). Never the truth: a snapshot of another version, or
-- one that does not decode, is ignored and the history is read instead, and
-- the table may be emptied at any time (docs/event-store.md, "Snapshots").
CREATE TABLE calendar_snapshots (
    property_id uuid        PRIMARY KEY,
    -- infra::event_store::SNAPSHOT_VERSION when written.
    version     integer     NOT NULL,
    -- The last event folded in.
    sequence    bigint      NOT NULL CHECK (sequence > 0),
    position    bigint      NOT NULL,
    state       jsonb       NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now()
);
GRANT SELECT, INSERT, UPDATE, DELETE ON calendar_snapshots TO ledger_app;
