-- Appends no longer NOTIFY inside their own transactions: PostgreSQL
-- serialises the commits of notifying transactions on one cluster-wide lock,
-- which halves what the log can take and defeats group commit. The writer
-- wakes its own process's tailers directly and sends one NOTIFY
-- ledger_events per burst of appends on a statement of its own
-- (infra/src/tail.rs, LogWaker). Tailers also poll, so a wake-up that is
-- lost only delays them.
DROP TRIGGER IF EXISTS events_notify ON events;
DROP FUNCTION IF EXISTS events_notify();
