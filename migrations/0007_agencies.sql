-- Agencies as records an operator manages: name, status (active or
-- suspended), feature flags. `agencies` is the current state, read by every
-- process's agency cache; `agency_history` is the record of every life-cycle
-- change (created, suspended, reinstated, features changed), written in the
-- same transaction as the change, and append-only like the event log. It is
-- kept out of `events` so that no tailer of the booking log (projections,
-- publisher, gap-free reader) ever meets a non-property event; see
-- docs/architecture.md.
CREATE TABLE agencies (
    id          uuid PRIMARY KEY,
    name        text,
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    reason      text,
    ical_export boolean NOT NULL DEFAULT true,
    ical_import boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
-- The agency cache reads only the agencies that differ from the defaults.
CREATE INDEX agencies_restricted ON agencies (id)
    WHERE status <> 'active' OR NOT ical_export OR NOT ical_import;

CREATE TABLE agency_history (
    position    bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id          uuid        NOT NULL UNIQUE,
    agency_id   uuid        NOT NULL REFERENCES agencies (id),
    user_id     text        NOT NULL,
    action      text        NOT NULL,
    details     jsonb       NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX agency_history_agency ON agency_history (agency_id, position);

CREATE FUNCTION agency_history_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the agency history is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER agency_history_append_only BEFORE UPDATE OR DELETE ON agency_history
    FOR EACH ROW EXECUTE FUNCTION agency_history_refuse_change();
CREATE TRIGGER agency_history_no_truncate BEFORE TRUNCATE ON agency_history
    FOR EACH STATEMENT EXECUTE FUNCTION agency_history_refuse_change();

-- Suspensions made before agencies had records become records, with their
-- suspension in the history. `agency_suspensions` is no longer read or
-- written; it stays (empty of meaning) so that nothing granted on it breaks.
INSERT INTO agencies (id, status, reason, created_at, updated_at)
SELECT agency_id, 'suspended', reason, suspended_at, suspended_at FROM agency_suspensions;
INSERT INTO agency_history (id, agency_id, user_id, action, details, created_at)
SELECT gen_random_uuid(), agency_id, 'migration', 'agency.suspend',
       jsonb_build_object('reason', reason), suspended_at
  FROM agency_suspensions;
