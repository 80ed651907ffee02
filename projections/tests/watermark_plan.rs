//! Reading the watermark and asking "is anything waiting past the cursor"
//! cost the lag, not the log: both walk `events_txid_position` from the
//! cursor. Before migration 0012 the planner took a third of the log to lie
//! past any cursor and scanned the log from its start, on every read that
//! reports its position (44 ms at 50,000 events, docs/benchmarks.md).

use crate::common;

use common::*;

/// The plan of `sql` as text (EXPLAIN, no execution).
async fn plan(pool: &sqlx::PgPool, sql: &str) -> String {
    let lines: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {sql}"))
        .fetch_all(pool)
        .await
        .expect("explain");
    lines.join("\n")
}

#[tokio::test]
async fn watermark_and_waiting_walk_the_index_from_the_cursor() {
    let db = TestDb::new().await;
    // 10,000 events in 10,000 transactions, as commands write them (each
    // command its own txid), then statistics as autovacuum would leave them.
    // (One statement per call: COMMIT in a DO block needs to be outside any
    // transaction block, which a multi-statement query would open.)
    let mut conn = db.pool.acquire().await.expect("a connection");
    for sql in [
        // Durability does not matter here, and 10,000 flushes would be slow.
        "SET synchronous_commit = off",
        "DO $$ BEGIN FOR i IN 1..10000 LOOP
            INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                event_version, payload, metadata, event_id)
            VALUES ('property', (i % 100)::text, i / 100 + 1, 'property.updated', '1',
                    '{}', '{}', gen_random_uuid());
            COMMIT;
         END LOOP; END $$",
        "ANALYZE events",
        "UPDATE projection_checkpoints
            SET txid = (SELECT txid::text::bigint FROM events WHERE position = 9990),
                position = 9990",
    ] {
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .expect("write the log");
    }

    // The function's body as migrated, on this cursor (EXPLAIN does not
    // show the plan inside a function call).
    let body: String =
        sqlx::query_scalar("SELECT prosrc FROM pg_proc WHERE proname = 'ledger_watermark'")
            .fetch_one(&db.pool)
            .await
            .expect("the function");
    let cursor: i64 =
        sqlx::query_scalar("SELECT txid::text::bigint FROM events WHERE position = 9990")
            .fetch_one(&db.pool)
            .await
            .expect("the cursor's txid");
    let watermark = plan(
        &db.pool,
        &body
            .replace("cp_txid", &cursor.to_string())
            .replace("cp_position", "9990"),
    )
    .await;
    assert!(
        watermark.contains("events_txid_position") && !watermark.contains("Seq Scan on events"),
        "the watermark walks the (txid, position) index:\n{watermark}"
    );
    let reached: i64 = sqlx::query_scalar(
        "SELECT coalesce(min(ledger_watermark(txid, position)), 0)
           FROM projection_checkpoints WHERE name = ANY(ARRAY['inventory', 'views', 'audit'])",
    )
    .fetch_one(&db.pool)
    .await
    .expect("watermark");
    assert_eq!(
        reached, 9990,
        "every event at or below the cursor is applied"
    );

    let explained = plan(
        &db.pool,
        &ledger_infra::tail::WAITING.replace("$1", "'inventory'"),
    )
    .await;
    assert!(
        explained.contains("events_txid_position") && !explained.contains("Seq Scan on events"),
        "the waiting check walks the (txid, position) index:\n{explained}"
    );
    assert!(
        ledger_infra::tail::waiting(&db.pool, "inventory")
            .await
            .expect("waiting"),
        "ten events lie past the cursor"
    );
}
