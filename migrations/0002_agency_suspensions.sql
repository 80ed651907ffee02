-- Suspended agencies: every request with a token of one gets 403
-- AGENCY_SUSPENDED. Tenant administration, not booking history, so a plain
-- table (managed with `ledger agency suspend|reinstate`), not events.
CREATE TABLE agency_suspensions (
    agency_id    uuid PRIMARY KEY,
    reason       text,
    suspended_at timestamptz NOT NULL DEFAULT now()
);
