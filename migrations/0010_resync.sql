-- Channel resync and drift checks (docs/channels.md).
--
-- A resync or checksum request is a row here; the active NATS publisher
-- (infra/src/publisher.rs) works through them between batches of events, so
-- a snapshot or checksum goes out in log order with the property's events:
-- it is taken as of the last sequence of the property already published.
-- `min_sequence`: the property's last sequence when the request was made;
-- the publisher waits until it has published that far, so the snapshot
-- holds at least what the requester saw.
CREATE TABLE resync_requests (
    id           bigserial   PRIMARY KEY,
    property_id  uuid        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('snapshot', 'checksum')),
    min_sequence bigint      NOT NULL DEFAULT 0,
    job_id       uuid,
    requested_at timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz
);
CREATE INDEX resync_requests_pending ON resync_requests (id) WHERE done_at IS NULL;
CREATE INDEX ON resync_requests (job_id) WHERE job_id IS NOT NULL;

-- A resync of one property, one agency or every property (POST /ops/resync,
-- `ledger resync`); its progress is counted from its requests.
CREATE TABLE resync_jobs (
    job_id      uuid        PRIMARY KEY,
    agency_id   uuid,
    property_id uuid,
    total       bigint      NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);

-- The periodic drift checksums: one row, so that however many processes
-- run, one of them (under the row's lock) queues each round once per
-- LEDGER_CHECKSUM_INTERVAL.
CREATE TABLE checksum_rounds (
    name        text        PRIMARY KEY,
    last_run_at timestamptz
);
INSERT INTO checksum_rounds (name) VALUES ('availability');

-- The iCal export keeps each range's status, so that its state has the same
-- drift checksum as the ledger's. Rows from before have none: their
-- checksum differs, and the first checksum message resynchronises them.
ALTER TABLE ical_export_ranges ADD COLUMN status text NOT NULL DEFAULT '';

GRANT SELECT, INSERT, UPDATE, DELETE ON resync_requests, resync_jobs, checksum_rounds TO ledger_app;
GRANT USAGE, SELECT ON SEQUENCE resync_requests_id_seq TO ledger_app;
