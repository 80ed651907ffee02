-- postgres-es's `snapshots` table was created (0001) only to keep its layout
-- whole. Nothing ever wrote it: its snapshot modes apply events twice
-- (docs/event-store.md), and postgres-es itself is no longer in the service's
-- build (a dev-dependency proves its repository still reads `events`).
DROP TABLE IF EXISTS snapshots;
