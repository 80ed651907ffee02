//! The log keeps postgres-es's table layout so that cqrs-es tools can read
//! it: postgres-es's own `PostgresEventRepository`, with the one upcaster we
//! publish (`TagPayload`), loads every property exactly as our event store
//! does. postgres-es is a dev-dependency only; this test is why it is kept.

use crate::common;

use common::*;
use cqrs_es::persist::{EventStoreAggregateContext, PersistedEventRepository, PersistedEventStore};
use cqrs_es::EventStore as _;
use ledger_domain::PropertyCalendar;
use ledger_infra::event_store::{EventStore, TagPayload};
use ledger_infra::CommandBus;
use postgres_es::PostgresEventRepository;
use uuid::Uuid;

#[tokio::test]
async fn postgres_es_reads_our_log_as_we_do() {
    let db = TestDb::new().await;
    let store = EventStore::new(db.pool.clone());
    let bus = CommandBus::new(store.clone());
    let agency = Uuid::new_v4();
    let property = Uuid::new_v4();
    register(&bus, agency, property).await;
    let kept = Uuid::new_v4();
    reserve(&bus, agency, property, kept, 0, 3).await;
    let cancelled = Uuid::new_v4();
    reserve(&bus, agency, property, cancelled, 5, 7).await;
    cancel(&bus, agency, property, cancelled, at(2)).await;

    let ours = store.load(property).await.expect("our load");
    let repo = PostgresEventRepository::new(db.pool.clone());
    let raw = repo
        .get_events::<PropertyCalendar>(&property.to_string())
        .await
        .expect("postgres-es reads the rows");
    assert_eq!(raw.len() as i64, ours.sequence, "one row per event");
    assert_eq!(raw[0].event_type, "property.registered");

    let theirs: EventStoreAggregateContext<PropertyCalendar> =
        PersistedEventStore::new_event_store(repo)
            .with_upcasters(vec![Box::new(TagPayload)])
            .load_aggregate(&property.to_string())
            .await
            .expect("cqrs-es loads the aggregate");
    assert_eq!(theirs.current_sequence as i64, ours.sequence);
    assert_eq!(theirs.aggregate, ours.calendar);
}
