//! The iCal import: makes a property's imported blocks match a channel's
//! feed (docs/ical.md), by ordinary commands through the command bus, as the
//! system actor `system:ical-import` (role admin). `ledger ical import` runs
//! it once; `ledger serve` runs the registered feeds at their interval.
//!
//! Which blocks belong to a feed, and what changes, is the pure
//! `ledger_domain::ical::plan`. The plan is made from the aggregate's state
//! (not a view), and each command is decided again against the calendar as
//! it is then, so a feed event that overlaps a booking is refused on its
//! own, reported, and does not stop the rest.

use std::collections::HashMap;
use std::time::Duration;

use chrono::NaiveDate;
use ledger_domain::commands::BlockNights;
use ledger_domain::ical::feed::{self, FeedEvent, Unreadable};
use ledger_domain::ical::plan::{plan, source_note, Step};
use ledger_domain::values::BlockReason;
use ledger_domain::{Actor, CalendarCommand, CalendarError, Command, Conflict, Role};
use ledger_infra::ical::fetch::{self, AddressRules, FeedFetcher, FetchError};
use ledger_infra::ical::{self, FeedRow};
use ledger_infra::{Clock, CommandBus, ExecuteError, Execution};
use serde::Serialize;
use tokio::task::{self, JoinSet};
use uuid::Uuid;

use super::Jobs;

pub const SYSTEM_USER: &str = "system:ical-import";
/// How often `ledger serve` looks for a feed that is due.
const TICK: Duration = Duration::from_secs(2);
/// At most this many feeds run at once in one process...
const AT_ONCE: usize = 16;
/// ...and at most this many of one agency's, so that its slow feeds
/// (each may take up to 30 s) hold up only its own.
const PER_AGENCY: usize = 2;
/// How much of a run's problems `last_error` keeps.
const MAX_ERROR_CHARS: usize = 2000;

/// What one import did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ImportReport {
    pub property_id: Uuid,
    /// VEVENTs read from the feed (cancelled ones excluded).
    pub feed_events: usize,
    pub cancelled: usize,
    pub created: Vec<String>,
    pub moved: Vec<String>,
    pub released: Vec<String>,
    pub unchanged: usize,
    /// Feed events not imported, and why (a conflict, unreadable dates, ...).
    pub skipped: Vec<Skipped>,
    /// Position of the last event the import appended, if it appended any.
    pub position: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    pub uid: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub end: Option<NaiveDate>,
    pub reason: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conflicts: Vec<Conflict>,
}

impl ImportReport {
    /// Whether every feed event made it in.
    pub fn complete(&self) -> bool {
        self.skipped.is_empty()
    }

    /// The skipped events, as one line for `last_error`.
    pub fn problems(&self) -> Option<String> {
        if self.complete() {
            return None;
        }
        let items: Vec<String> = self
            .skipped
            .iter()
            .map(|s| format!("{}: {}", s.uid.as_deref().unwrap_or("(no UID)"), s.reason))
            .collect();
        let text = format!(
            "{} feed event(s) skipped: {}",
            items.len(),
            items.join("; ")
        );
        Some(text.chars().take(MAX_ERROR_CHARS).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error(transparent)]
    Fetch(#[from] FetchError),
    #[error(transparent)]
    Parse(#[from] feed::FeedError),
    #[error("the property does not exist")]
    PropertyNotFound,
    #[error("the property is archived")]
    PropertyArchived,
    #[error(transparent)]
    Execute(#[from] ExecuteError),
}

impl ImportError {
    /// What `last_error` says: our own words, never a server's reply, nor
    /// the internals of a failed write (those are logged).
    fn for_the_manager(&self) -> String {
        match self {
            ImportError::Execute(_) => {
                "the import could not be saved; it runs again at the next interval".into()
            }
            other => other.to_string(),
        }
    }
}

/// Reads a feed from an `http(s)://` URL (public addresses only: see
/// `ledger_infra::ical::fetch`), or, when `allow_files`, from a `file://`
/// URL or a path.
async fn read_source(source: &str, allow_files: bool) -> Result<String, ImportError> {
    let source = source.trim();
    let lower = source.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let fetcher = FeedFetcher::new(AddressRules::default())?;
        return Ok(fetcher.fetch(source).await?);
    }
    if !allow_files {
        return Err(FetchError::Scheme.into());
    }
    let path = source.strip_prefix("file://").unwrap_or(source);
    Ok(fetch::read_file(path).await?)
}

/// Reads `source` and imports it into the property (see the module docs):
/// the operator's `ledger ical import`.
pub async fn import(
    bus: &CommandBus, clock: &dyn Clock, property_id: Uuid, source: &str, allow_files: bool,
) -> Result<ImportReport, ImportError> {
    let text = read_source(source, allow_files).await?;
    import_text(bus, clock, property_id, source, &text).await
}

async fn import_text(
    bus: &CommandBus, clock: &dyn Clock, property_id: Uuid, source: &str, text: &str,
) -> Result<ImportReport, ImportError> {
    let feed = feed::parse(text)?;
    apply_feed(bus, clock, property_id, &feed, &source_note(source)).await
}

/// Makes the property's blocks of the feed marked `note` match `feed`.
pub async fn apply_feed(
    bus: &CommandBus, clock: &dyn Clock, property_id: Uuid, feed: &feed::Feed, note: &str,
) -> Result<ImportReport, ImportError> {
    let calendar = bus
        .read(property_id, |loaded| loaded.calendar.clone())
        .await?;
    let property = calendar
        .property
        .as_ref()
        .ok_or(ImportError::PropertyNotFound)?;
    if property.archived {
        return Err(ImportError::PropertyArchived);
    }
    let actor = Actor {
        agency_id: property.agency_id,
        user_id: SYSTEM_USER.to_owned(),
        role: Role::Admin,
    };
    let (steps, unchanged) = plan(&calendar, &feed.events, note, clock.now().date_naive());
    let mut report = ImportReport {
        property_id,
        feed_events: feed.events.len(),
        cancelled: feed.cancelled,
        unchanged,
        skipped: feed.unreadable.iter().map(Skipped::unreadable).collect(),
        ..ImportReport::default()
    };
    let run = ImportRun {
        bus,
        clock,
        property_id,
        actor,
        note,
        batch: Uuid::now_v7(),
    };
    for step in steps {
        match step {
            Step::Release { block_id, uid } => {
                if run.release(block_id, &mut report).await? {
                    report.released.push(uid);
                }
            }
            Step::Move { block_id, event } => {
                if run.release(block_id, &mut report).await?
                    && run.block(&event, &mut report).await?
                {
                    report.moved.push(event.uid);
                }
            }
            Step::Block { event } => {
                if run.block(&event, &mut report).await? {
                    report.created.push(event.uid);
                }
            }
        }
    }
    Ok(report)
}

struct ImportRun<'a> {
    bus: &'a CommandBus,
    clock: &'a dyn Clock,
    property_id: Uuid,
    actor: Actor,
    note: &'a str,
    /// Shared by the commands of one run in their `request_id`.
    batch: Uuid,
}

impl ImportRun<'_> {
    async fn execute(
        &self, action: CalendarCommand,
    ) -> Result<Result<i64, CalendarError>, ImportError> {
        let execution = Execution {
            property_id: self.property_id,
            command: Command {
                actor: self.actor.clone(),
                now: self.clock.now(),
                action,
                expected_version: None,
            },
            request_id: format!("ical-import-{}", self.batch),
            idempotency: None,
        };
        match self.bus.run_unkeyed(execution).await {
            Ok(decided) => Ok(Ok(decided.position)),
            Err(ExecuteError::Domain(refusal)) => Ok(Err(refusal)),
            Err(other) => Err(other.into()),
        }
    }

    async fn release(
        &self, block_id: Uuid, report: &mut ImportReport,
    ) -> Result<bool, ImportError> {
        match self
            .execute(CalendarCommand::ReleaseBlock { block_id })
            .await?
        {
            Ok(position) => {
                report.position = Some(position);
                Ok(true)
            }
            // Released meanwhile by someone else: what the import wanted.
            Err(CalendarError::BlockAlreadyReleased) => Ok(true),
            Err(refusal) => Err(ImportError::Execute(refusal.into())),
        }
    }

    async fn block(
        &self, event: &FeedEvent, report: &mut ImportReport,
    ) -> Result<bool, ImportError> {
        let command = CalendarCommand::BlockNights(BlockNights {
            block_id: Uuid::now_v7(),
            start: event.start,
            end: event.end,
            reason: BlockReason::Other,
            note: Some(self.note.to_owned()),
            external_ref: Some(event.uid.clone()),
            room_type_id: None,
            units: None,
        });
        match self.execute(command).await? {
            Ok(position) => {
                report.position = Some(position);
                Ok(true)
            }
            Err(refusal) => {
                let conflicts = match &refusal {
                    CalendarError::NightsTaken { conflicts } => conflicts.clone(),
                    _ => Vec::new(),
                };
                report.skipped.push(Skipped {
                    uid: Some(event.uid.clone()),
                    start: Some(event.start),
                    end: Some(event.end),
                    reason: refusal.to_string(),
                    conflicts,
                });
                Ok(false)
            }
        }
    }
}

impl Skipped {
    fn unreadable(unreadable: &Unreadable) -> Skipped {
        Skipped {
            uid: unreadable.uid.clone(),
            start: None,
            end: None,
            reason: unreadable.reason.clone(),
            conflicts: Vec::new(),
        }
    }
}

/// Runs the registered feeds when they are due, for as long as the process
/// runs. Processes share the work: each run claims its feed first. Within a
/// process, feeds run concurrently, at most [`AT_ONCE`] in all and
/// [`PER_AGENCY`] of one agency, so one agency's slow feeds delay only its
/// own.
pub async fn run(jobs: &Jobs) {
    let rules = AddressRules::new(&jobs.feed_allow_hosts);
    let fetcher = match FeedFetcher::new(rules) {
        Ok(fetcher) => fetcher,
        Err(error) => {
            tracing::error!(%error, "ical import: cannot build the feed client; feeds will not run");
            return;
        }
    };
    let mut running = Running::default();
    loop {
        while let Some(done) = running.tasks.try_join_next_with_id() {
            running.finished(done);
        }
        if running.tasks.len() >= AT_ONCE {
            running.wait(TICK).await;
            continue;
        }
        match ical::claim_due_feed(&jobs.pool, &running.busy_agencies(), jobs.clock.now()).await {
            // A suspended agency or one with imports off: this run is skipped.
            Ok(Some(feed)) if !(jobs.imports_allowed)(feed.agency_id) => {}
            Ok(Some(feed)) => running.start(jobs.clone(), fetcher.clone(), feed),
            Ok(None) => running.wait(TICK).await,
            Err(error) => {
                tracing::debug!(%error, "ical import: cannot read the feeds; retrying");
                running.wait(TICK).await;
            }
        }
    }
}

/// The imports this process is running, by agency.
#[derive(Default)]
struct Running {
    tasks: JoinSet<()>,
    agency_of: HashMap<task::Id, Uuid>,
    per_agency: HashMap<Uuid, usize>,
}

impl Running {
    fn start(&mut self, jobs: Jobs, fetcher: FeedFetcher, feed: FeedRow) {
        let agency_id = feed.agency_id;
        let task = self
            .tasks
            .spawn(async move { run_feed(&jobs, &fetcher, &feed).await });
        self.agency_of.insert(task.id(), agency_id);
        *self.per_agency.entry(agency_id).or_default() += 1;
    }

    fn finished(&mut self, done: Result<(task::Id, ()), task::JoinError>) {
        let id = match done {
            Ok((id, ())) => id,
            Err(error) => {
                tracing::warn!(%error, "ical import: a feed's run ended abnormally");
                error.id()
            }
        };
        let Some(agency_id) = self.agency_of.remove(&id) else {
            return;
        };
        if let Some(count) = self.per_agency.get_mut(&agency_id) {
            *count -= 1;
            if *count == 0 {
                self.per_agency.remove(&agency_id);
            }
        }
    }

    /// Agencies whose feeds wait until one of theirs ends.
    fn busy_agencies(&self) -> Vec<Uuid> {
        self.per_agency
            .iter()
            .filter(|(_, count)| **count >= PER_AGENCY)
            .map(|(agency_id, _)| *agency_id)
            .collect()
    }

    /// Until a run ends (a slot is free) or `tick` has passed.
    async fn wait(&mut self, tick: Duration) {
        if self.tasks.is_empty() {
            tokio::time::sleep(tick).await;
            return;
        }
        tokio::select! {
            Some(done) = self.tasks.join_next_with_id() => self.finished(done),
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn run_feed(jobs: &Jobs, fetcher: &FeedFetcher, feed: &FeedRow) {
    let outcome = match fetcher.fetch(&feed.url).await {
        Ok(text) => {
            import_text(
                &jobs.bus,
                jobs.clock.as_ref(),
                feed.property_id,
                &feed.url,
                &text,
            )
            .await
        }
        Err(error) => Err(error.into()),
    };
    let (error, result) = match &outcome {
        Ok(report) => (report.problems(), serde_json::to_value(report).ok()),
        Err(error) => (Some(error.for_the_manager()), None),
    };
    match &outcome {
        Ok(report) => tracing::info!(feed_id = %feed.feed_id, property_id = %feed.property_id,
            created = report.created.len(), moved = report.moved.len(),
            released = report.released.len(), skipped = report.skipped.len(), "ical import ran"),
        Err(error) => tracing::warn!(feed_id = %feed.feed_id, %error, "ical import failed"),
    }
    if let Err(e) = ical::record_run(
        &jobs.pool,
        feed.feed_id,
        error.as_deref(),
        result.as_ref(),
        jobs.clock.now(),
    )
    .await
    {
        tracing::warn!(feed_id = %feed.feed_id, error = %e, "ical import: cannot record the run");
    }
}
