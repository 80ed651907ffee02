-- The iCal channel (docs/ical.md).
--
-- Export: what the `ical-export` adapter learnt from the NATS stream. Like a
-- read model it is derived from the log alone (the adapter resynchronises a
-- property from the log when the stream skipped something), but it is the
-- adapter's own state, fed by the channel kit, not by the projection runner.

-- One row per booking or block that holds nights, as of the property's
-- `sequence` in ical_export_cursors.
CREATE TABLE ical_export_ranges (
    ref_id      uuid        PRIMARY KEY,
    agency_id   uuid        NOT NULL,
    property_id uuid        NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('booking', 'block')),
    start_night date        NOT NULL,
    end_night   date        NOT NULL CHECK (end_night > start_night),
    -- When the range last changed (the event's recorded time): DTSTAMP.
    changed_at  timestamptz NOT NULL
);
CREATE INDEX ON ical_export_ranges (property_id, start_night);

-- The last `ledgersequence` applied per property: an event at or below it is
-- a duplicate; one above it + 1 means the stream skipped something.
CREATE TABLE ical_export_cursors (
    property_id uuid        PRIMARY KEY,
    agency_id   uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The per-property secret of the export URL. Only its SHA-256 is kept; a new
-- token replaces the old one (rotation).
CREATE TABLE ical_tokens (
    property_id uuid        PRIMARY KEY,
    agency_id   uuid        NOT NULL,
    token_hash  text        NOT NULL,
    created_by  text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Import: the channel feeds `ledger serve` pulls into a property's blocks.
CREATE TABLE ical_feeds (
    feed_id          uuid        PRIMARY KEY,
    agency_id        uuid        NOT NULL,
    property_id      uuid        NOT NULL,
    url              text        NOT NULL,
    interval_minutes integer     NOT NULL CHECK (interval_minutes BETWEEN 5 AND 10080),
    created_at       timestamptz NOT NULL DEFAULT now(),
    next_run_at      timestamptz NOT NULL DEFAULT now(),
    last_run_at      timestamptz,
    last_error       text,
    last_result      jsonb,
    UNIQUE (property_id, url)
);
CREATE INDEX ON ical_feeds (next_run_at);
CREATE INDEX ON ical_feeds (agency_id, property_id);
