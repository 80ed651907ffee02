//! A complete channel adapter on the kit (docs/channels.md): it mirrors the
//! availability of every property it can see into one JSON file,
//! `{"<property_id>": [{kind, id, start, end, status}, ...]}`, rewritten
//! after each change. Snapshots, checksums, gaps and resync requests are
//! handled by the kit through the `AdapterState` below.
//!
//!   cargo run -p ledger-infra --example json_mirror -- nats://127.0.0.1:4222 mirror.json [AGENCY_ID]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::NaiveDate;
use ledger_domain::checksum::{self, ChannelRange};
use ledger_domain::claims;
use ledger_infra::channel::{
    AdapterState, Binding, ChannelConsumer, ChannelError, LedgerEvent, Snapshot, StateError,
};
use uuid::Uuid;

type Held = BTreeMap<Uuid, BTreeMap<Uuid, ChannelRange>>;

/// The adapter's whole state, and the file it keeps it in.
pub struct Mirror {
    path: PathBuf,
    held: Mutex<Held>,
}

impl Mirror {
    pub fn new(path: impl Into<PathBuf>) -> Mirror {
        Mirror {
            path: path.into(),
            held: Mutex::default(),
        }
    }

    fn change(
        &self, property: Uuid, edit: impl FnOnce(&mut BTreeMap<Uuid, ChannelRange>),
    ) -> std::io::Result<()> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        edit(held.entry(property).or_default());
        let file: BTreeMap<Uuid, Vec<ChannelRange>> = held
            .iter()
            .map(|(p, r)| {
                (
                    *p,
                    checksum::in_canonical_order(r.values().cloned().collect()),
                )
            })
            .collect();
        std::fs::write(&self.path, serde_json::to_vec_pretty(&file)?)
    }

    /// One event, folded with the domain's rule of held nights.
    pub fn apply(&self, event: &LedgerEvent) -> std::io::Result<()> {
        self.change(event.property_id, |held| {
            claims::fold_ranges(held, &event.event)
        })
    }
}

#[async_trait::async_trait]
impl AdapterState for Mirror {
    async fn replace(&self, snapshot: &Snapshot) -> Result<(), StateError> {
        let ranges = snapshot
            .data
            .ranges
            .iter()
            .map(|r| (r.id, r.clone()))
            .collect();
        Ok(self.change(snapshot.data.property_id, |held| *held = ranges)?)
    }

    async fn ranges(
        &self, property: Uuid, _: NaiveDate, _: NaiveDate,
    ) -> Result<Vec<ChannelRange>, StateError> {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        Ok(held
            .get(&property)
            .map(|r| r.values().cloned().collect())
            .unwrap_or_default())
    }
}

/// Follows the stream into `mirror` under the durable `name` until the
/// subscription ends.
pub async fn run(
    nats_url: &str, name: &str, agency: Option<Uuid>, mirror: Arc<Mirror>,
) -> Result<(), ChannelError> {
    let client = ledger_infra::nats::connect_now(nats_url, name).await?;
    let binding = match agency {
        Some(agency) => Binding::for_agency(agency, name),
        None => Binding::new(name),
    };
    let mut events = ChannelConsumer::bind(&client, binding)
        .await?
        .with_state(mirror.clone());
    while let Some(delivery) = events.next().await {
        let delivery = match delivery {
            Ok(delivery) => delivery,
            Err(error @ ChannelError::Nats(_)) => {
                eprintln!("json_mirror: {error}");
                continue;
            }
            Err(error) => return Err(error),
        };
        // A gap was already reported to the ledger by the kit (a snapshot
        // follows); the event itself is applied as usual.
        match mirror.apply(&delivery.event) {
            Ok(()) => delivery.ack().await?,
            Err(_) => delivery.nak(Some(Duration::from_secs(1))).await?,
        }
    }
    Ok(())
}

#[allow(dead_code)] // The tests include this file for `run` and `Mirror`.
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let path = args.next().unwrap_or_else(|| "mirror.json".into());
    let agency = args.next().map(|a| a.parse()).transpose()?;
    run(&url, "json-mirror", agency, Arc::new(Mirror::new(path))).await?;
    Ok(())
}
