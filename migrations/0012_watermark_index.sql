-- ledger_watermark() and the tailers' "is anything waiting" check looked for
-- events past a (txid, position) cursor with a row comparison that the
-- planner estimates at a third of the log. For min(position) it then
-- walked the position index from the start of the log, filtering out every
-- event already applied: 44 ms at 50,000 events, growing with the log, on
-- every read that reports its position (docs/benchmarks.md, "What the profile
-- shows"). Ordering the rows past the cursor by (txid, position) makes the
-- planner use events_txid_position from the cursor on, so the cost is the
-- lag (a few rows), not the log (0.07 ms at 50,000 events).
CREATE OR REPLACE FUNCTION ledger_watermark(cp_txid bigint, cp_position bigint) RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(
        (SELECT min(position) - 1
           FROM (SELECT position FROM events
                  WHERE (txid, position) > (cp_txid::text::xid8, cp_position)
                  ORDER BY txid, position) AS past_cursor),
        (SELECT coalesce(max(position), 0) FROM events))
$$;
