-- The event log: the only truth. The first seven columns are postgres-es's
-- layout (and its primary key, which is our optimistic lock); the rest have
-- defaults, so postgres-es's explicit-column SQL still works on this table.
CREATE TABLE events (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint NOT NULL CHECK (sequence > 0),
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    -- Global order of the log. Identity values are taken at insert time, so a
    -- transaction can commit after a later position is already visible; readers
    -- bound what they read with txid (see projections/).
    position       bigint GENERATED ALWAYS AS IDENTITY,
    txid           xid8   NOT NULL DEFAULT pg_current_xact_id(),
    recorded_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Stable id of the event: the CloudEvents id and the Nats-Msg-Id.
    event_id       uuid   NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (aggregate_type, aggregate_id, sequence),
    CONSTRAINT events_position_key UNIQUE (position),
    CONSTRAINT events_event_id_key UNIQUE (event_id)
);

-- Invariant 4: an event, once appended, is never changed or removed.
CREATE FUNCTION events_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the event log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION events_refuse_change();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_refuse_change();

-- Wake tailers (projections, publisher) without hard polling. One
-- notification per statement; identical payloads collapse per transaction.
CREATE FUNCTION events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('ledger_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_notify();

-- postgres-es's snapshot table, kept for layout compatibility. Not used: its
-- snapshot modes apply events twice (see docs/architecture.md).
CREATE TABLE snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint NOT NULL CHECK (last_sequence >= 0),
    current_snapshot bigint NOT NULL CHECK (current_snapshot >= 0),
    payload          json   NOT NULL,
    timestamp        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate_type, aggregate_id)
);

-- Which property a booking or block belongs to. Written in the same
-- transaction as the event that creates the booking or block, so it is never
-- behind the log (read models may be).
CREATE TABLE resource_refs (
    ref_id      uuid PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('booking', 'block')),
    agency_id   uuid NOT NULL,
    property_id uuid NOT NULL
);

-- Idempotency-Key replies, written in the same transaction as the events
-- they answer for, so a retry after a lost reply or a crash finds them.
CREATE TABLE idempotency_keys (
    agency_id    uuid        NOT NULL,
    key          text        NOT NULL,
    request_hash text        NOT NULL,
    status_code  smallint    NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT idempotency_keys_pkey PRIMARY KEY (agency_id, key)
);
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
