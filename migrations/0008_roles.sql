-- Least privilege: `ledger serve` works through `ledger_app`, a role that
-- may append to the log and read it, and never change or remove an event.
-- The migrations keep running as the owner of `events` (whoever runs
-- `ledger migrate`, DATABASE_MIGRATE_URL); see docs/security-nats.md.
--
-- Roles:
-- - ledger_app (LOGIN, no password here): what DATABASE_URL names. With
--   `trust` or peer authentication it logs in as it is; elsewhere the
--   operator sets its password once (ALTER ROLE ledger_app PASSWORD ...), or
--   grants ledger_app to a login role of their own, which then has exactly
--   the same rights.
-- - ledger_projector (NOLOGIN): owns the read-model tables. A replay drops
--   them and moves rebuilt copies in, which only an owner may do, so
--   ledger_app is a member of it; `events` is not among its tables.
-- - ledger_reader (0003): what reads switch to under row-level security.
--
-- Roles are shared by every database of the cluster, so databases migrated
-- at the same moment race on them: a loser retries and finds them there.
DO $$
BEGIN
    FOR attempt IN 1..20 LOOP
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_projector') THEN
                CREATE ROLE ledger_projector NOLOGIN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'ledger_app') THEN
                CREATE ROLE ledger_app LOGIN;
            END IF;
            IF NOT pg_has_role('ledger_app', 'ledger_projector', 'MEMBER') THEN
                GRANT ledger_projector TO ledger_app;
            END IF;
            IF NOT pg_has_role('ledger_app', 'ledger_reader', 'MEMBER') THEN
                GRANT ledger_reader TO ledger_app;
            END IF;
            -- The owner hands the read models to ledger_projector below and
            -- alters them in later migrations.
            IF NOT pg_has_role(current_user, 'ledger_projector', 'MEMBER') THEN
                EXECUTE format('GRANT ledger_projector TO %I', current_user);
            END IF;
            RETURN;
        EXCEPTION WHEN OTHERS THEN
            IF attempt = 20 THEN
                RAISE;
            END IF;
            PERFORM pg_sleep(0.05 * attempt);
        END;
    END LOOP;
END $$;

-- The log: append and read, nothing else. No UPDATE, DELETE or TRUNCATE is
-- granted, so the append-only triggers of 0001 are the second wall, not
-- the only one. `position` is an identity column: INSERT needs no right on
-- its sequence.
GRANT SELECT, INSERT ON events TO ledger_app;
-- Written with the event that creates a booking or block, never changed.
GRANT SELECT, INSERT ON resource_refs TO ledger_app;
-- Replies to retries: purged after their TTL, and an expired key is taken
-- over with INSERT ... ON CONFLICT DO UPDATE.
GRANT SELECT, INSERT, UPDATE, DELETE ON idempotency_keys TO ledger_app;
-- `snapshots` (postgres-es's layout, unused) gets nothing.
-- Reading which migrations are applied lets the tools that migrate first
-- (`ledger replay`, `ledger ical import`) run as ledger_app once the owner
-- has migrated; applying one still needs the owner.
GRANT SELECT ON _sqlx_migrations TO ledger_app;

-- The service's own state beside the log: checkpoints of projections and of
-- the publisher, replay progress, parked properties, suspensions, the iCal
-- channel's tables.
GRANT SELECT, INSERT, UPDATE, DELETE ON projection_checkpoints TO ledger_app;
GRANT SELECT, INSERT, UPDATE ON projection_replays TO ledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON projection_parked TO ledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON agency_suspensions TO ledger_app;
GRANT SELECT, INSERT, UPDATE, DELETE
    ON ical_export_ranges, ical_export_cursors, ical_tokens, ical_feeds TO ledger_app;

-- Tables of migrations between 0006 and this one are service state as well
-- (they were written before this role existed): the same rights. A table
-- added after this migration grants ledger_app what it needs itself.
DO $$
DECLARE
    tbl regclass;
BEGIN
    FOR tbl IN
        SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')
           AND c.relname NOT IN ('events', 'resource_refs', 'idempotency_keys', 'snapshots',
                                 '_sqlx_migrations', 'projection_checkpoints',
                                 'projection_replays', 'projection_parked',
                                 'agency_suspensions', 'ical_export_ranges',
                                 'ical_export_cursors', 'ical_tokens', 'ical_feeds',
                                 'inventory_ranges', 'properties_view', 'bookings_view',
                                 'audit_log')
    LOOP
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %s TO ledger_app', tbl);
    END LOOP;
END $$;

-- Read models. A replay (projections/src/replay.rs) creates copies in
-- ledger_replay (CREATE TABLE ... LIKE, DROP INDEX, CREATE INDEX), then in
-- one transaction takes ACCESS EXCLUSIVE locks on the live tables, drops
-- them and moves the copies into public (ALTER TABLE ... SET SCHEMA), after
-- ledger_secure_read_model has enabled RLS and granted ledger_reader on
-- them. Dropping, moving and securing a table are an owner's rights, and
-- moving a table into a schema needs CREATE on it: hence CREATE on both
-- schemas for ledger_projector, and the live tables owned by it.
GRANT USAGE, CREATE ON SCHEMA ledger_replay TO ledger_projector;
GRANT USAGE, CREATE ON SCHEMA public TO ledger_projector;
ALTER TABLE inventory_ranges OWNER TO ledger_projector;
ALTER TABLE properties_view OWNER TO ledger_projector;
ALTER TABLE bookings_view OWNER TO ledger_projector;
ALTER TABLE audit_log OWNER TO ledger_projector;

-- As in 0003, plus: the copy is handed to ledger_projector before it goes
-- live, so the live tables stay owned by it whichever login role ran the
-- replay (the creator of a table owns it).
CREATE OR REPLACE FUNCTION ledger_secure_read_model(tbl regclass) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('ALTER TABLE %s OWNER TO ledger_projector', tbl);
    EXECUTE format('ALTER TABLE %s ENABLE ROW LEVEL SECURITY', tbl);
    IF NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = tbl AND polname = 'agency_isolation') THEN
        EXECUTE format(
            'CREATE POLICY agency_isolation ON %s FOR SELECT TO ledger_reader
               USING (agency_id = nullif(current_setting(''ledger.agency_id'', true), '''')::uuid)',
            tbl);
    END IF;
    EXECUTE format('GRANT SELECT ON %s TO ledger_reader', tbl);
END $$;
