//! Long histories, written in SQL: a property given thousands of events in
//! seconds, for the load generator's P3 and the calendar snapshot test.

use sqlx::PgPool;
use uuid::Uuid;

/// Appends `count` valid `property.updated` events to a registered property
/// (each renames it "History <sequence>"), 20,000 to a statement.
pub async fn write_history(pool: &PgPool, property: Uuid, count: i64) -> Result<(), sqlx::Error> {
    let chunk = 20_000;
    let mut written = 0;
    while written < count {
        let rows = chunk.min(count - written);
        sqlx::query(
            "WITH head AS (
                 SELECT max(sequence) AS sequence, (array_agg(metadata::text))[1] AS metadata
                   FROM events WHERE aggregate_type = 'property' AND aggregate_id = $1)
             INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type,
                                 event_version, payload, metadata, event_id)
             SELECT 'property', $1, h.sequence + g, 'property.updated', '1',
                    json_build_object('property_id', $1, 'name', 'History ' || (h.sequence + g),
                        'timezone', 'Europe/Lisbon', 'owner_id', NULL, 'external_ref', NULL,
                        'changed', json_build_array('name'), 'at', now()),
                    h.metadata::json, gen_random_uuid()
               FROM head h, generate_series(1, $2) g
              ORDER BY g",
        )
        .bind(property.to_string())
        .bind(rows)
        .execute(pool)
        .await?;
        written += rows;
    }
    Ok(())
}
