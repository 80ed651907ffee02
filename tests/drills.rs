//! Reliability drills (docs/quality.md R1, R2, R3, R8 and the hang-up probe): the
//! real `ledger` under concurrency, disconnects, kill -9 and a NATS outage,
//! judged by the log itself (the `events` table), never by the read models.
//!
//! The short forms run in CI. The long forms take their size from the
//! environment (`HANGUP_ROUNDS`, `R8_COMMANDS`, `R1_ROUNDS`) or only run when
//! asked (`DRILL_R2=1`, `DRILL_R3=1`); `scripts/drills.sh` sets them, and
//! docs/reliability.md records what each drill saw.

use crate::common;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{Days, NaiveDate};
use common::nats::NatsServer;
use common::stream::{acknowledged, Stays};
use common::{
    agency, created, eventually, properties_in_log, spawn_app, spawn_app_on, spawn_app_with_env,
    spawn_process, spawn_process_with_env, TestApp,
};
use ledger_domain::values::Nights;
use ledger_domain::PropertyCalendar;
use ledger_infra::channel::{Binding, ChannelConsumer, ChannelError};
use ledger_infra::{EventStore, Loaded};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::{PgPool, Row};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use uuid::Uuid;

// ------------------------------------------------------------------ helpers

/// A number in `0..n` (n > 0), random enough for fault injection.
fn random_below(n: u64) -> u64 {
    (Uuid::new_v4().as_u128() % u128::from(n)) as u64
}

/// The drill's size: `$name` when set to a number, else `default`.
fn size(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Whether a long drill was asked for (`$name=1`); says so when it was not.
fn asked_for(name: &str) -> bool {
    let asked = std::env::var(name).is_ok_and(|value| value == "1");
    if !asked {
        eprintln!("skipped: set {name}=1 (or run scripts/drills.sh) for this long drill");
    }
    asked
}

fn night(base: NaiveDate, offset: u64) -> String {
    (base + Days::new(offset)).to_string()
}

/// Writes one whole HTTP/1.1 request on a fresh TCP connection, then closes
/// the connection `after` later without reading the reply: a client that
/// hangs up while its command runs.
async fn hang_up(
    app: &TestApp, method: &str, path: &str, token: &str, body: &[u8], headers: &[(&str, &str)],
    after: Duration,
) {
    let mut stream = TcpStream::connect(("127.0.0.1", app.port))
        .await
        .expect("connect to the ledger");
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: {}\r\n",
        app.port,
        body.len()
    );
    if !body.is_empty() {
        head.push_str("Content-Type: application/json\r\n");
    }
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut request = head.into_bytes();
    request.extend_from_slice(body);
    stream.write_all(&request).await.expect("send the request");
    tokio::time::sleep(after).await;
    drop(stream);
}

/// What the log says, judged on its own: claims that overlapped at any point
/// of a property's history, and streams whose sequences are not `1..n`.
#[derive(Debug, Default)]
struct LogAudit {
    properties: usize,
    events: usize,
    overlaps: Vec<String>,
    gaps: Vec<String>,
}

impl LogAudit {
    #[track_caller]
    fn assert_sound(&self) {
        assert!(
            self.overlaps.is_empty(),
            "DOUBLE BOOKING: {} overlapping active claims in the log, e.g. {:?}",
            self.overlaps.len(),
            &self.overlaps[..self.overlaps.len().min(5)]
        );
        assert!(
            self.gaps.is_empty(),
            "SEQUENCE GAP: {} streams are not 1..n, e.g. {:?}",
            self.gaps.len(),
            &self.gaps[..self.gaps.len().min(5)]
        );
    }
}

/// An active claim: `(kind, id, nights, room type, units)`.
type ActiveClaim = (&'static str, Uuid, Nights, Option<Uuid>, u32);

/// The active claims of a calendar: bookings with an active status and
/// blocks not released, read from the records rather than from the claim
/// index (which assumes what is being checked).
fn active_claims(calendar: &PropertyCalendar) -> Vec<ActiveClaim> {
    let bookings = calendar
        .bookings
        .values()
        .filter(|booking| booking.status.is_active())
        .map(|booking| {
            (
                "booking",
                booking.id,
                booking.nights,
                booking.room_type_id,
                1,
            )
        });
    let blocks = calendar
        .blocks
        .values()
        .filter(|block| !block.released)
        .map(|block| {
            (
                "block",
                block.id,
                block.nights,
                block.room_type_id,
                block.units,
            )
        });
    bookings.chain(blocks).collect()
}

/// The units the room-type claims among `claims` hold, per room type and night.
fn held_per_night(claims: &[ActiveClaim]) -> HashMap<(Uuid, NaiveDate), u32> {
    let mut held = HashMap::new();
    for (_, _, nights, room_type, units) in claims {
        let Some(room_type) = room_type else { continue };
        for night in nights.start.iter_days().take_while(|d| *d < nights.end) {
            *held.entry((*room_type, night)).or_default() += units;
        }
    }
    held
}

/// Every pair of single-unit claims that share a night, and every night of
/// a room type that holds more than its units.
fn overlapping_pairs(calendar: &PropertyCalendar) -> Vec<String> {
    let claims = active_claims(calendar);
    let single: Vec<&ActiveClaim> = claims.iter().filter(|c| c.3.is_none()).collect();
    let mut pairs = Vec::new();
    for (i, a) in single.iter().enumerate() {
        for b in &single[i + 1..] {
            if a.2.overlaps(&b.2) {
                pairs.push(format!(
                    "{} {} [{}, {}) and {} {} [{}, {})",
                    a.0, a.1, a.2.start, a.2.end, b.0, b.1, b.2.start, b.2.end
                ));
            }
        }
    }
    for ((room_type, night), taken) in held_per_night(&claims) {
        let units = calendar.room_types.get(&room_type).map_or(0, |t| t.units);
        if taken > units {
            pairs.push(format!(
                "room type {room_type} holds {taken} of {units} units on {night}"
            ));
        }
    }
    pairs
}

async fn pool(app: &TestApp) -> PgPool {
    PgPool::connect(&app.database_url)
        .await
        .expect("connect to the test database")
}

/// Folds every property's events one at a time through the domain and
/// compares every pair of active claims after each event (`apply` does not
/// check), and checks that each stream's sequences are exactly `1..n`.
async fn audit_log(app: &TestApp) -> LogAudit {
    let pool = pool(app).await;
    let mut audit = LogAudit::default();
    let streams = sqlx::query(
        "SELECT aggregate_type, aggregate_id, count(*) AS n,
                min(sequence) AS first, max(sequence) AS last
           FROM events GROUP BY aggregate_type, aggregate_id",
    )
    .fetch_all(&pool)
    .await
    .expect("read the streams");
    for row in &streams {
        let (n, first, last): (i64, i64, i64) = (row.get("n"), row.get("first"), row.get("last"));
        audit.events += n as usize;
        if first != 1 || last != n {
            audit.gaps.push(format!(
                "{} {}: {n} events, sequences {first}..{last}",
                row.get::<String, _>("aggregate_type"),
                row.get::<String, _>("aggregate_id"),
            ));
        }
    }
    let store = EventStore::new(pool.clone());
    for id in properties_in_log(&pool).await {
        let events = store.load_after(id, 0).await.expect("every event decodes");
        let mut loaded = Loaded::default();
        let mut seen = HashSet::new();
        for (sequence, position, event) in events {
            loaded.fold(vec![(sequence, position, event)]);
            for pair in overlapping_pairs(&loaded.calendar) {
                if seen.insert(pair.clone()) {
                    audit.overlaps.push(format!(
                        "property {id} from sequence {sequence} (position {position}): {pair}"
                    ));
                }
            }
        }
        audit.properties += 1;
    }
    pool.close().await;
    audit
}

/// Positions of the log's events of `event_type` whose payload names `id`
/// under `field` (`booking_id`, `block_id`).
async fn positions_of(pool: &PgPool, event_type: &str, field: &str, id: Uuid) -> Vec<i64> {
    sqlx::query_scalar(
        "SELECT position FROM events
          WHERE event_type = $1 AND payload->>$2 = $3 ORDER BY position",
    )
    .bind(event_type)
    .bind(field)
    .bind(id.to_string())
    .fetch_all(pool)
    .await
    .expect("query the log")
}

// ------------------------------------------------------------------ hang-up probe

/// The hang-up probe: reserve Jul 1-4, send a cancel and close the
/// connection 0-4 ms later, reserve Jul 2-3. The second reserve may only
/// succeed when the cancel is in the log before it, and the log never holds
/// two active claims on one night.
#[tokio::test]
async fn a_client_hanging_up_on_a_cancel_never_leaves_a_double_booking() {
    hang_ups_on_cancels(None).await;
}

/// The hang-up probe on a room type of 3 units, filled Jul 1-4 by three
/// bookings: after the storm no night holds more than 3, and the read
/// models (`inventory_ranges`, `inventory_nights`) are what the log folds to.
#[tokio::test]
async fn a_client_hanging_up_on_a_cancel_never_overfills_a_room_type() {
    hang_ups_on_cancels(Some(3)).await;
}

/// A fresh room type of `units` on `property`.
async fn room_type(app: &TestApp, token: &str, property: Uuid, units: u32) -> Uuid {
    let reply = app
        .post(
            &format!("/api/v1/properties/{property}/room-types"),
            token,
            json!({"name": "Double", "units": units}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{:?}", reply.body);
    reply.id()
}

/// Rounds of the hang-up probe on a single-unit property, or on a room type
/// of `units` whose Jul 1-4 is full: the cancel whose client hangs up is of
/// one of the bookings that fill it.
async fn hang_ups_on_cancels(units: Option<u32>) {
    let _heavy = common::heavy().await;
    let rounds = size("HANGUP_ROUNDS", 150);
    let app = spawn_app().await;
    let (_, token) = agency();
    let started = Instant::now();
    // (round, first booking, second booking) for every second reserve that got 201.
    let mut second_created = Vec::new();
    let mut conflicts = 0;
    for round in 0..rounds {
        let property = app.property(&token, None).await;
        let on = match units {
            Some(units) => json!({"room_type_id": room_type(&app, &token, property, units).await}),
            None => json!({}),
        };
        let mut filling = Vec::new();
        for _ in 0..units.unwrap_or(1) {
            let reply = app
                .reserve_with(&token, property, "2027-07-01", "2027-07-04", on.clone())
                .await;
            filling.push(created(reply).id());
        }
        let booking = filling[random_below(filling.len() as u64) as usize];
        let after = Duration::from_micros(random_below(4_001));
        hang_up(
            &app,
            "POST",
            &format!("/api/v1/bookings/{booking}/cancel"),
            &token,
            b"{}",
            &[],
            after,
        )
        .await;
        let second = app
            .reserve_with(&token, property, "2027-07-02", "2027-07-03", on)
            .await;
        match second.status {
            StatusCode::CREATED => second_created.push((round, booking, second.id())),
            StatusCode::CONFLICT => {
                assert_eq!(second.code(), "BOOKING_CONFLICT", "{:?}", second.body);
                conflicts += 1;
            }
            other => panic!(
                "round {round}: the second reserve got {other}: {:?}",
                second.body
            ),
        }
    }

    let pool = pool(&app).await;
    let mut without_cancel = Vec::new();
    for (round, first, second) in &second_created {
        let cancelled = positions_of(&pool, "booking.cancelled", "booking_id", *first).await;
        let reserved = positions_of(&pool, "booking.reserved", "booking_id", *second).await;
        assert_eq!(
            reserved.len(),
            1,
            "round {round}: booking {second} in the log"
        );
        if cancelled.first().is_none_or(|cancel| *cancel > reserved[0]) {
            without_cancel.push(*round);
        }
    }
    let audit = audit_log(&app).await;
    caught_up(&app, Duration::from_secs(60)).await;
    let mut mismatched = inventory_matches_the_log(&pool).await;
    mismatched.extend(nights_match_the_log(&pool).await);
    eprintln!(
        "hang-up probe ({}): {rounds} rounds in {:?}; second reserve 201 in {}, \
         409 in {conflicts}; log: {} events over {} properties, {} overlapping pairs \
         or overfilled nights, {} sequence gaps, {} rounds with 201 but no cancel before it; \
         {} differences between the read models and the log",
        units.map_or("single unit".to_owned(), |u| format!(
            "room type of {u} units"
        )),
        started.elapsed(),
        second_created.len(),
        audit.events,
        audit.properties,
        audit.overlaps.len(),
        audit.gaps.len(),
        without_cancel.len(),
        mismatched.len()
    );
    audit.assert_sound();
    assert!(
        without_cancel.is_empty(),
        "DOUBLE BOOKING: the second reserve got 201 without the cancel in the log before it \
         in rounds {without_cancel:?}"
    );
    assert!(
        mismatched.is_empty(),
        "the read models differ from the log: {:?}",
        &mismatched[..mismatched.len().min(10)]
    );
}

// ------------------------------------------------------------------ R8

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Reserve,
    Modify,
    Cancel,
    Block,
    Release,
}

/// One command of the R8 drill, sent twice with the same key and bytes.
#[derive(Debug, Clone)]
struct Keyed {
    kind: Kind,
    key: String,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    /// The booking or block the command is about (none for a create).
    target: Option<Uuid>,
}

/// A random stay of 1-4 nights in a 30-night window, so commands collide.
fn random_stay(base: NaiveDate) -> (String, String) {
    let start = random_below(30);
    (night(base, start), night(base, start + 1 + random_below(4)))
}

fn r8_command(properties: &[Uuid], bookings: &[Uuid], blocks: &[Uuid]) -> Keyed {
    let base = NaiveDate::from_ymd_opt(2028, 1, 1).expect("a date");
    let property = properties[random_below(properties.len() as u64) as usize];
    let kinds: &[Kind] = match (bookings.is_empty(), blocks.is_empty()) {
        (true, true) => &[Kind::Reserve, Kind::Block],
        (false, true) => &[
            Kind::Reserve,
            Kind::Reserve,
            Kind::Modify,
            Kind::Cancel,
            Kind::Block,
        ],
        (true, false) => &[Kind::Reserve, Kind::Block, Kind::Release],
        (false, false) => &[
            Kind::Reserve,
            Kind::Reserve,
            Kind::Modify,
            Kind::Cancel,
            Kind::Block,
            Kind::Release,
        ],
    };
    let kind = kinds[random_below(kinds.len() as u64) as usize];
    let pick = |ids: &[Uuid]| ids[random_below(ids.len() as u64) as usize];
    let key = format!("r8-{}", Uuid::new_v4());
    let (check_in, check_out) = random_stay(base);
    let (method, path, body, target) = match kind {
        Kind::Reserve => (
            "POST",
            "/api/v1/bookings".to_owned(),
            json!({"property_id": property, "check_in": check_in, "check_out": check_out,
                   "guest": {"name": "Drill Guest"}}),
            None,
        ),
        Kind::Modify => {
            let booking = pick(bookings);
            (
                "PATCH",
                format!("/api/v1/bookings/{booking}"),
                json!({"check_in": check_in, "check_out": check_out, "notes": key}),
                Some(booking),
            )
        }
        Kind::Cancel => {
            let booking = pick(bookings);
            (
                "POST",
                format!("/api/v1/bookings/{booking}/cancel"),
                json!({"reason": "drill"}),
                Some(booking),
            )
        }
        Kind::Block => (
            "POST",
            "/api/v1/availability/blocks".to_owned(),
            json!({"property_id": property, "start": check_in, "end": check_out,
                   "reason": "maintenance"}),
            None,
        ),
        Kind::Release => {
            let block = pick(blocks);
            (
                "DELETE",
                format!("/api/v1/availability/blocks/{block}"),
                Value::Null,
                Some(block),
            )
        }
    };
    let body = if body.is_null() {
        Vec::new()
    } else {
        body.to_string().into_bytes()
    };
    Keyed {
        kind,
        key,
        method,
        path,
        body,
        target,
    }
}

/// The retry's answer to one keyed command.
struct Answered {
    command: Keyed,
    status: StatusCode,
    body: Value,
}

/// Why a refusal contradicts the log, if it does: a state refusal needs the
/// booking cancelled (or the block released) in the log, and a conflict must
/// name claims the log holds.
async fn refusal_against_the_log(pool: &PgPool, command: &Keyed, body: &Value) -> Option<String> {
    match body["error"]["code"].as_str().unwrap_or("") {
        "INVALID_STATE_TRANSITION" => {
            let target = command.target?;
            let (event_type, field) = match command.kind {
                Kind::Release => ("availability.released", "block_id"),
                _ => ("booking.cancelled", "booking_id"),
            };
            positions_of(pool, event_type, field, target)
                .await
                .is_empty()
                .then(|| format!("refused as a state transition, yet no {event_type} in the log"))
        }
        "BOOKING_CONFLICT" => {
            let conflicts = body["error"]["details"]["conflicts"].as_array()?;
            for conflict in conflicts {
                let id: Uuid = conflict["id"].as_str()?.parse().ok()?;
                let (event_type, field) = match conflict["kind"].as_str() {
                    Some("block") => ("availability.blocked", "block_id"),
                    _ => ("booking.reserved", "booking_id"),
                };
                if positions_of(pool, event_type, field, id).await.is_empty() {
                    return Some(format!("a conflict with {id}, which the log does not hold"));
                }
            }
            None
        }
        _ => None,
    }
}

/// R8: commands whose clients disconnect 0-10 ms after sending, each then
/// retried with its key. The log has no overlap and no gap, and every
/// retry's reply is what the log holds for that key.
#[tokio::test]
async fn commands_whose_clients_hang_up_then_retry_with_their_keys_match_the_log() {
    let _heavy = common::heavy().await;
    let total = size("R8_COMMANDS", 300);
    const WAVE: usize = 25;
    let app = spawn_app().await;
    let (_, token) = agency();
    let properties = futures::future::join_all((0..5).map(|_| app.property(&token, None))).await;
    let started = Instant::now();
    let (mut bookings, mut blocks) = (Vec::new(), Vec::new());
    let mut answered: Vec<Answered> = Vec::with_capacity(total);
    while answered.len() < total {
        let wave: Vec<Keyed> = (0..WAVE.min(total - answered.len()))
            .map(|_| r8_command(&properties, &bookings, &blocks))
            .collect();
        futures::future::join_all(wave.iter().map(|command| {
            let after = Duration::from_micros(random_below(10_001));
            let (app, token) = (&app, &token);
            async move {
                let key = [("Idempotency-Key", command.key.as_str())];
                let (method, path, body) = (command.method, &command.path, &command.body);
                hang_up(app, method, path, token, body, &key, after).await
            }
        }))
        .await;
        let replies = futures::future::join_all(wave.iter().map(|command| {
            let mut headers = vec![("Idempotency-Key", command.key.as_str())];
            if !command.body.is_empty() {
                headers.push(("Content-Type", "application/json"));
            }
            let (method, path, body) = (command.method, command.path.clone(), command.body.clone());
            let (app, token) = (&app, &token);
            async move {
                app.send_bytes(method, &path, Some(token), body, &headers)
                    .await
            }
        }))
        .await;
        for (command, reply) in wave.into_iter().zip(replies) {
            if reply.status == StatusCode::CREATED {
                match command.kind {
                    Kind::Reserve => bookings.push(reply.id()),
                    Kind::Block => blocks.push(reply.id()),
                    _ => {}
                }
            }
            answered.push(Answered {
                command,
                status: reply.status,
                body: reply.body,
            });
        }
    }
    let elapsed = started.elapsed();

    let pool = pool(&app).await;
    // Each key's events: count and last position.
    let rows = sqlx::query(
        "SELECT metadata->>'idempotency_key' AS key, count(*) AS n, max(position) AS last
           FROM events WHERE metadata->>'idempotency_key' IS NOT NULL GROUP BY 1",
    )
    .fetch_all(&pool)
    .await
    .expect("the keyed events");
    let by_key: HashMap<String, (i64, i64)> = rows
        .iter()
        .map(|row| (row.get("key"), (row.get("n"), row.get("last"))))
        .collect();
    let mut mismatches = Vec::new();
    let mut statuses: HashMap<(Kind, u16), usize> = HashMap::new();
    for answer in &answered {
        let Answered {
            command,
            status,
            body,
        } = answer;
        *statuses.entry((command.kind, status.as_u16())).or_default() += 1;
        let logged = by_key.get(&command.key);
        let describe = || format!("{:?} {} -> {status} {body}", command.kind, command.path);
        if status.is_server_error() || *status == StatusCode::UNPROCESSABLE_ENTITY {
            mismatches.push(format!("a retry must not get this: {}", describe()));
            continue;
        }
        if !status.is_success() {
            if logged.is_some() {
                mismatches.push(format!("refused, yet the key appended: {}", describe()));
            }
            if let Some(why) = refusal_against_the_log(&pool, command, body).await {
                mismatches.push(format!("{why}: {}", describe()));
            }
            continue;
        }
        let position = body["position"].as_i64().unwrap_or_default();
        match logged {
            Some((_, last)) if *last == position => {}
            other => {
                mismatches.push(format!(
                    "reply position {position}, the key's events {other:?}: {}",
                    describe()
                ));
                continue;
            }
        }
        let id = body["id"]
            .as_str()
            .and_then(|id| id.parse::<Uuid>().ok())
            .unwrap_or_default();
        let (event_type, field) = match command.kind {
            Kind::Reserve => ("booking.reserved", "booking_id"),
            Kind::Modify => ("booking.modified", "booking_id"),
            Kind::Cancel => ("booking.cancelled", "booking_id"),
            Kind::Block => ("availability.blocked", "block_id"),
            Kind::Release => ("availability.released", "block_id"),
        };
        if command.target.is_some_and(|target| target != id) {
            mismatches.push(format!("the reply names another resource: {}", describe()));
        }
        let at = positions_of(&pool, event_type, field, id).await;
        let expected_once = matches!(command.kind, Kind::Reserve | Kind::Block | Kind::Release);
        if !at.contains(&position) || (expected_once && at.len() != 1) {
            mismatches.push(format!(
                "{event_type} of {id} at positions {at:?}: {}",
                describe()
            ));
        }
    }
    // Nothing in the log by a key whose retry was refused or never answered 2xx.
    let succeeded: HashSet<&str> = answered
        .iter()
        .filter(|answer| answer.status.is_success())
        .map(|answer| answer.command.key.as_str())
        .collect();
    for key in by_key.keys() {
        if key.starts_with("r8-") && !succeeded.contains(key.as_str()) {
            mismatches.push(format!("key {key} appended but its retry did not succeed"));
        }
    }
    let audit = audit_log(&app).await;
    let mut table: Vec<_> = statuses.into_iter().collect();
    table.sort_by_key(|((kind, status), _)| (format!("{kind:?}"), *status));
    eprintln!(
        "R8: {} commands in {elapsed:?}; retries {table:?}; log: {} events, {} overlapping \
         pairs, {} sequence gaps; {} replies that do not match the log",
        answered.len(),
        audit.events,
        audit.overlaps.len(),
        audit.gaps.len(),
        mismatches.len()
    );
    for mismatch in mismatches.iter().take(5) {
        eprintln!("R8 mismatch: {mismatch}");
    }
    audit.assert_sound();
    assert!(
        mismatches.is_empty(),
        "{} retries do not match the log, e.g. {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(10)]
    );
}

// ------------------------------------------------------------------ R1

/// R1: 500 concurrent overlapping reserves on one property through 3 ledger
/// processes on one database: exactly one 201, the rest 409 BOOKING_CONFLICT.
#[tokio::test]
async fn five_hundred_overlapping_reserves_through_three_processes_admit_exactly_one() {
    overlapping_reserves_through_three_processes(None).await;
}

/// R1 on a room type of 3 units: exactly three 201s.
#[tokio::test]
async fn five_hundred_overlapping_reserves_on_a_three_unit_room_type_admit_exactly_three() {
    overlapping_reserves_through_three_processes(Some(3)).await;
}

/// 500 concurrent reserves that all hold the night of Aug 5, spread over 3
/// processes, on a single-unit property or on a room type of `units`: as
/// many succeed as there are units, the rest are 409 BOOKING_CONFLICT.
async fn overlapping_reserves_through_three_processes(units: Option<u32>) {
    let rounds = size("R1_ROUNDS", 20);
    const CONCURRENT: usize = 500;
    let admitted = units.map_or(1, |u| u as usize);
    let _heavy = common::heavy().await;
    let first = spawn_process().await;
    let second = spawn_app_on(&first.database_url, &format!("{}_b", first.db_name), &[]).await;
    let third = spawn_app_on(&first.database_url, &format!("{}_c", first.db_name), &[]).await;
    let bases = [&first.base, &second.base, &third.base];
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENT)
        .timeout(Duration::from_secs(60))
        .build()
        .expect("an HTTP client");
    let (_, token) = agency();
    let base = NaiveDate::from_ymd_opt(2027, 8, 1).expect("a date");
    let started = Instant::now();
    for round in 0..rounds {
        let property = first.property(&token, None).await;
        let room_type = match units {
            Some(units) => Some(room_type(&first, &token, property, units).await),
            None => None,
        };
        let round_started = Instant::now();
        // Every stay holds the night of Aug 5.
        let replies = futures::future::join_all((0..CONCURRENT).map(|i| {
            let mut body = json!({
                "property_id": property,
                "check_in": night(base, random_below(5)),
                "check_out": night(base, 5 + random_below(5)),
                "guest": {"name": "Race Guest"},
            });
            if let Some(room_type) = room_type {
                body["room_type_id"] = json!(room_type);
            }
            let request = client
                .post(format!("{}/api/v1/bookings", bases[i % bases.len()]))
                .bearer_auth(&token)
                .json(&body)
                .send();
            async move {
                let response = request.await.expect("the reserve is answered");
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                (status, body)
            }
        }))
        .await;
        let mut counts: HashMap<(u16, String), usize> = HashMap::new();
        for (status, body) in &replies {
            let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
            *counts.entry((status.as_u16(), code)).or_default() += 1;
        }
        eprintln!(
            "R1 ({units:?} units) round {round}: {counts:?} in {:?}",
            round_started.elapsed()
        );
        assert_eq!(
            counts.get(&(201, String::new())),
            Some(&admitted),
            "round {round}: exactly {admitted} reserve(s) succeed: {counts:?}"
        );
        assert_eq!(
            counts.get(&(409, "BOOKING_CONFLICT".to_owned())),
            Some(&(CONCURRENT - admitted)),
            "round {round}: the rest are 409 BOOKING_CONFLICT: {counts:?}"
        );
        let reserved: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM events
              WHERE aggregate_id = $1 AND event_type = 'booking.reserved'",
        )
        .bind(property.to_string())
        .fetch_one(&mut first.db().await)
        .await
        .expect("count the reserves");
        assert_eq!(
            reserved, admitted as i64,
            "round {round}: {admitted} booking.reserved in the log"
        );
    }
    eprintln!(
        "R1 ({units:?} units): {rounds} rounds of {CONCURRENT} through 3 processes in {:?}",
        started.elapsed()
    );
    audit_log(&first).await.assert_sound();
}

// ------------------------------------------------------------------ load for R2 and R3

/// A write the ledger acknowledged with a 2xx: what it was about and where
/// its last event is.
#[derive(Debug, Clone)]
struct Acknowledged {
    event_type: &'static str,
    field: &'static str,
    id: Uuid,
    position: i64,
}

/// Writers sending a mix of reserves, cancels of their own bookings and
/// blocks until stopped; connection failures (a killed ledger, a restart)
/// are counted and retried after a pause, never fatal.
struct MixedLoad {
    acknowledged: Arc<Mutex<Vec<Acknowledged>>>,
    failed: Arc<Mutex<usize>>,
    stays: Stays,
    writers: tokio::task::JoinSet<()>,
}

impl MixedLoad {
    fn start(app: &TestApp, token: &str, properties: &[Uuid], writers: usize) -> MixedLoad {
        let acknowledged = Arc::new(Mutex::new(Vec::new()));
        let failed = Arc::new(Mutex::new(0));
        let stays = Stays::new(properties);
        let mut tasks = tokio::task::JoinSet::new();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        for writer in 0..writers {
            let (client, token, base) = (client.clone(), token.to_owned(), app.base.clone());
            let (acknowledged, failed, stays) =
                (acknowledged.clone(), failed.clone(), stays.clone());
            tasks.spawn(async move {
                let mut mine: Vec<Uuid> = Vec::new();
                let mut turn = 0usize;
                while let Some((property, start)) = stays.next_stay() {
                    turn += 1;
                    let (request, event_type, field) = if turn.is_multiple_of(3) && !mine.is_empty()
                    {
                        let booking = mine.swap_remove(0);
                        (
                            client
                                .post(format!("{base}/api/v1/bookings/{booking}/cancel"))
                                .json(&json!({})),
                            "booking.cancelled",
                            "booking_id",
                        )
                    } else if writer.is_multiple_of(4) && turn.is_multiple_of(5) {
                        (
                            client
                                .post(format!("{base}/api/v1/availability/blocks"))
                                .json(&json!({"property_id": property, "start": start.to_string(),
                                        "end": (start + Days::new(1)).to_string(),
                                        "reason": "maintenance"})),
                            "availability.blocked",
                            "block_id",
                        )
                    } else {
                        (
                            client.post(format!("{base}/api/v1/bookings")).json(
                                &json!({"property_id": property, "check_in": start.to_string(),
                                        "check_out": (start + Days::new(1)).to_string(),
                                        "guest": {"name": "Load Guest"}}),
                            ),
                            "booking.reserved",
                            "booking_id",
                        )
                    };
                    let reply = request.bearer_auth(&token).send().await;
                    let answer = match reply {
                        Ok(response) if response.status().is_success() => {
                            response.json::<Value>().await.ok()
                        }
                        _ => None,
                    };
                    let id = answer
                        .as_ref()
                        .and_then(|body| body["id"].as_str()?.parse::<Uuid>().ok());
                    let position = answer.as_ref().and_then(|body| body["position"].as_i64());
                    match (id, position) {
                        (Some(id), Some(position)) => {
                            if event_type == "booking.reserved" {
                                mine.push(id);
                            }
                            let mut all = acknowledged.lock().expect("not poisoned");
                            all.push(Acknowledged {
                                event_type,
                                field,
                                id,
                                position,
                            });
                        }
                        _ => {
                            *failed.lock().expect("not poisoned") += 1;
                            // A killed or restarting ledger: back off before the next try.
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            });
        }
        MixedLoad {
            acknowledged,
            failed,
            stays,
            writers: tasks,
        }
    }

    fn acknowledged(&self) -> usize {
        self.acknowledged.lock().expect("not poisoned").len()
    }

    fn failed(&self) -> usize {
        *self.failed.lock().expect("not poisoned")
    }

    /// Waits until `count` writes were acknowledged (60 s at most).
    async fn until(&self, count: usize) {
        acknowledged(Duration::from_secs(60), count, || self.acknowledged()).await
    }

    async fn finish(mut self) -> Vec<Acknowledged> {
        self.stays.stop();
        while self.writers.join_next().await.is_some() {}
        let all = self.acknowledged.lock().expect("not poisoned");
        all.clone()
    }
}

/// Waits until every projection and the publisher have reached the log's
/// head (`limit` at most); returns the head.
async fn caught_up(app: &TestApp, limit: Duration) -> i64 {
    eventually(limit, || async {
        let rows: Vec<(String, i64, i64)> = sqlx::query_as(
            "SELECT name, position, (SELECT coalesce(max(position), 0) FROM events)
               FROM projection_checkpoints ORDER BY name",
        )
        .fetch_all(&mut app.db().await)
        .await
        .expect("read the checkpoints");
        if !rows.is_empty() && rows.iter().all(|(_, position, head)| position == head) {
            Ok(rows[0].2)
        } else {
            Err(format!("not caught up: {rows:?}"))
        }
    })
    .await
}

/// Receives every event of the log through the consumer kit; asserts each
/// arrives once, in log order, with per-property sequences `1, 2, 3, ...`,
/// and that together they are exactly the log.
async fn consumer_sees_the_whole_log(app: &TestApp, nats: &NatsServer, name: &str) -> usize {
    let client = async_nats::connect(&nats.url)
        .await
        .expect("connect to the test's nats-server");
    let mut consumer = ChannelConsumer::bind(&client, Binding::new(name))
        .await
        .expect("bind the consumer kit");
    let expected: Vec<Uuid> = sqlx::query_scalar("SELECT event_id FROM events ORDER BY position")
        .fetch_all(&mut app.db().await)
        .await
        .expect("the log's event ids");
    let mut received = Vec::with_capacity(expected.len());
    let mut last_sequence: HashMap<Uuid, i64> = HashMap::new();
    let mut last_position = 0;
    while received.len() < expected.len() {
        let delivery = match tokio::time::timeout(Duration::from_secs(30), consumer.next()).await {
            Err(_) => panic!(
                "only {} of {} events arrived",
                received.len(),
                expected.len()
            ),
            Ok(None) => panic!("the subscription ended"),
            Ok(Some(Err(ChannelError::Nats(error)))) => {
                eprintln!("pull failed: {error}");
                continue;
            }
            Ok(Some(Err(error))) => panic!("{error}"),
            Ok(Some(Ok(delivery))) => delivery,
        };
        let event = delivery.event.clone();
        assert_eq!(delivery.gap, None, "after {} events", received.len());
        assert!(
            event.position() > last_position,
            "position {} after {last_position}",
            event.position()
        );
        last_position = event.position();
        let previous = last_sequence
            .insert(event.property_id, event.sequence())
            .unwrap_or(0);
        assert_eq!(event.sequence(), previous + 1, "{}", event.property_id);
        received.push(event.id());
        delivery.ack().await.expect("ack");
    }
    assert_eq!(received, expected, "the consumer saw the log, in order");
    received.len()
}

// ------------------------------------------------------------------ R2

/// R2 (long; `DRILL_R2=1`): kill -9 of the ledger under mixed load, 10
/// times. Every acknowledged write is in the log, `inventory_ranges` equals
/// what the log says, and a NATS consumer sees every event.
#[tokio::test]
async fn kill_nine_under_load_loses_no_acknowledged_write() {
    let _heavy = common::heavy().await;
    if !asked_for("DRILL_R2") {
        return;
    }
    let kills = size("R2_KILLS", 10);
    let nats = NatsServer::start();
    let mut app = spawn_process_with_env(&[("NATS_URL", &nats.url)]).await;
    let (_, token) = agency();
    let properties = futures::future::join_all((0..20).map(|_| app.property(&token, None))).await;
    let load = MixedLoad::start(&app, &token, &properties, 16);
    let started = Instant::now();
    for kill in 1..=kills {
        load.until(load.acknowledged() + 100).await;
        app.kill();
        let at = load.acknowledged();
        app.start().await;
        eprintln!("R2 kill {kill}: after {at} acknowledged writes; restarted");
    }
    load.until(load.acknowledged() + 100).await;
    let failed = load.failed();
    let acknowledged = load.finish().await;
    let head = caught_up(&app, Duration::from_secs(120)).await;

    let pool = pool(&app).await;
    let mut missing = Vec::new();
    for ack in &acknowledged {
        let at = positions_of(&pool, ack.event_type, ack.field, ack.id).await;
        if !at.contains(&ack.position) {
            missing.push(ack.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "{} acknowledged writes are not in the log, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let mismatched = inventory_matches_the_log(&pool).await;
    assert!(
        mismatched.is_empty(),
        "inventory_ranges differs from the log: {:?}",
        &mismatched[..mismatched.len().min(10)]
    );
    audit_log(&app).await.assert_sound();
    let seen = consumer_sees_the_whole_log(&app, &nats, "r2").await;
    eprintln!(
        "R2: {kills} kills in {:?}; {} acknowledged writes all in the log ({failed} failed \
         attempts during restarts); log head at position {head}; inventory_ranges equals the \
         log; the consumer saw all {seen} events of the log",
        started.elapsed(),
        acknowledged.len()
    );
}

/// Compares `inventory_nights` with what the log folds to: the units each
/// room type's claims hold per night (a night held by none has no row).
async fn nights_match_the_log(pool: &PgPool) -> Vec<String> {
    let stored: HashSet<(Uuid, NaiveDate, i32, i32)> =
        sqlx::query_as("SELECT room_type_id, night, units, taken FROM inventory_nights")
            .fetch_all(pool)
            .await
            .expect("read inventory_nights")
            .into_iter()
            .collect();
    let store = EventStore::new(pool.clone());
    let mut folded = HashSet::new();
    for property in properties_in_log(pool).await {
        let calendar = store
            .load(property)
            .await
            .expect("the events decode")
            .calendar;
        for ((room_type, night), taken) in held_per_night(&active_claims(&calendar)) {
            let units = calendar.room_types.get(&room_type).map_or(0, |t| t.units);
            folded.insert((room_type, night, units as i32, taken as i32));
        }
    }
    differences("inventory_nights", &stored, &folded)
}

/// The rows only one side has, named.
fn differences<T: std::fmt::Debug + Eq + std::hash::Hash>(
    table: &str, stored: &HashSet<T>, folded: &HashSet<T>,
) -> Vec<String> {
    let mut differences: Vec<String> = stored
        .difference(folded)
        .map(|row| format!("only in {table}: {row:?}"))
        .collect();
    differences.extend(
        folded
            .difference(stored)
            .map(|row| format!("only in the log: {row:?}")),
    );
    differences
}

/// Compares `inventory_ranges` with the active claims the log folds to.
async fn inventory_matches_the_log(pool: &PgPool) -> Vec<String> {
    let rows = sqlx::query(
        "SELECT ref_id, property_id, kind, lower(during) AS start, upper(during) AS end_
           FROM inventory_ranges",
    )
    .fetch_all(pool)
    .await
    .expect("read inventory_ranges");
    let stored: HashSet<(Uuid, Uuid, String, NaiveDate, NaiveDate)> = rows
        .iter()
        .map(|row| {
            (
                row.get("ref_id"),
                row.get("property_id"),
                row.get("kind"),
                row.get("start"),
                row.get("end_"),
            )
        })
        .collect();
    let store = EventStore::new(pool.clone());
    let mut folded = HashSet::new();
    for id in properties_in_log(pool).await {
        let loaded = store.load(id).await.expect("the events decode");
        for (kind, ref_id, nights, ..) in active_claims(&loaded.calendar) {
            folded.insert((ref_id, id, kind.to_owned(), nights.start, nights.end));
        }
    }
    differences("inventory_ranges", &stored, &folded)
}

// ------------------------------------------------------------------ R3

/// R3 (long; `DRILL_R3=1`): NATS stopped for 30 s under load. Writes keep
/// succeeding, and afterwards the backlog is published in log order.
#[tokio::test]
async fn thirty_seconds_without_nats_keep_writes_going_and_publish_the_backlog_in_order() {
    let _heavy = common::heavy().await;
    if !asked_for("DRILL_R3") {
        return;
    }
    let outage = Duration::from_secs(size("R3_OUTAGE_SECS", 30) as u64);
    let mut nats = NatsServer::start();
    let app = spawn_app_with_env(&[("NATS_URL", &nats.url)]).await;
    let (_, token) = agency();
    let properties = futures::future::join_all((0..10).map(|_| app.property(&token, None))).await;
    let load = MixedLoad::start(&app, &token, &properties, 8);
    load.until(100).await;

    nats.stop();
    let stopped = Instant::now();
    let before = load.acknowledged();
    let mut last = before;
    // Writes go on during the whole outage: each 5 s slice acknowledges more.
    while stopped.elapsed() < outage {
        let slice = Instant::now() + Duration::from_secs(5);
        while Instant::now() < slice && stopped.elapsed() < outage {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let now = load.acknowledged();
        assert!(
            now > last,
            "no write acknowledged in the last slice of the outage"
        );
        last = now;
    }
    let during = load.acknowledged() - before;
    let lag: i64 = sqlx::query_scalar(
        "SELECT (SELECT max(position) FROM events) - position
           FROM projection_checkpoints WHERE name = 'publisher'",
    )
    .fetch_one(&mut app.db().await)
    .await
    .expect("the publisher's lag");
    nats.restart();
    let back = Instant::now();
    load.until(load.acknowledged() + 100).await;
    let failed = load.failed();
    load.finish().await;
    caught_up(&app, Duration::from_secs(120)).await;
    let caught_up_after = back.elapsed();
    assert_eq!(
        failed, 0,
        "every write succeeded during and after the outage"
    );
    let seen = consumer_sees_the_whole_log(&app, &nats, "r3").await;
    eprintln!(
        "R3: NATS down {outage:?}: {during} writes acknowledged meanwhile, 0 failed; publisher \
         lag {lag} when NATS came back; caught up {caught_up_after:?} later; the consumer saw \
         {seen} events in log order"
    );
}
