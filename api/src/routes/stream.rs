//! `GET /api/v1/stream`: the caller's agency's events as Server-Sent Events,
//! as they are appended (`id:` the global position, `event:` the event type,
//! `data:` the CloudEvent the NATS stream carries). `Last-Event-ID` or
//! `?from_position=` resumes after that position; the token's expiry ends
//! the stream with `event: token_expired`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, Uri};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use ledger_domain::policy::Scope;
use ledger_domain::{Action, Actor, CalendarEvent};
use ledger_infra::cloudevent::CloudEvent;
use ledger_infra::tail::{Cursor, Envelope};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use uuid::Uuid;

use super::{serde_urlencoded_query, visible_property};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::live::{Hub, Live, PAGE};
use crate::state::AppState;

/// A comment line this often keeps proxies from closing an idle stream.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamQuery {
    property_id: Option<String>,
    from_position: Option<String>,
    /// For `EventSource`, which cannot send an Authorization header; a
    /// header, when present, wins.
    access_token: Option<String>,
    /// Read models are not involved: accepted and ignored like on reads.
    min_position: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/stream", tag = "stream",
    params(
        ("property_id" = Option<Uuid>, Query, description = "only this property's events"),
        ("from_position" = Option<i64>, Query, description = "resume after this position (as Last-Event-ID)"),
        ("access_token" = Option<String>, Query, description = "the bearer token, for EventSource"),
        ("Last-Event-ID" = Option<i64>, Header, description = "resume after this position"),
    ),
    responses(
        (status = 200, description = "text/event-stream of CloudEvents", content_type = "text/event-stream", body = String)))]
pub async fn stream(
    State(state): State<AppState>, Extension(hub): Extension<Arc<Hub>>, headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let query: StreamQuery = serde_urlencoded_query(uri.query().unwrap_or(""))?;
    let _ = query.min_position;
    let (caller, expires_at) =
        authenticate(&state, &headers, query.access_token, uri.path()).await?;
    caller.require(Action::ReadCalendar)?;
    let property_id = match query.property_id.as_deref() {
        None | Some("") => None,
        Some(raw) => Some(
            raw.parse::<Uuid>()
                .map_err(|_| ApiError::validation(format!("property_id {raw:?} is not a UUID")))?,
        ),
    };
    if let Some(property_id) = property_id {
        visible_property(&state, &caller, property_id, Action::ReadCalendar).await?;
    }
    let resume =
        match resume_position(&headers, query.from_position.as_deref())? {
            None => None,
            Some(position) => Some(hub.cursor_of(position).await?.ok_or_else(|| {
                ApiError::validation(format!("no event has position {position}"))
            })?),
        };
    let subscription = hub.subscribe(caller.0.agency_id, resume).await?;
    let feed = Feed {
        state,
        hub,
        actor: caller.0,
        property_id,
        receiver: subscription.receiver,
        closing: subscription.closing,
        last: subscription.from,
        catching_up: true,
        pending: VecDeque::new(),
        visible: HashMap::new(),
        expires_at,
        done: false,
    };
    let events = futures_util::stream::unfold(feed, |mut feed| async move {
        let event = feed.next().await?;
        Some((Ok::<_, Infallible>(event), feed))
    });
    Ok(Sse::new(events)
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response())
}

/// The caller, from the Authorization header or else `?access_token=`, and
/// when its token expires.
async fn authenticate(
    state: &AppState, headers: &HeaderMap, access_token: Option<String>, path: &str,
) -> Result<(Caller, Instant), ApiError> {
    let token = match headers.get(AUTHORIZATION) {
        Some(header) => header
            .to_str()
            .ok()
            .and_then(|h| {
                h.strip_prefix("Bearer ")
                    .or_else(|| h.strip_prefix("bearer "))
            })
            .map(|t| t.trim().to_owned()),
        None => access_token,
    }
    .filter(|t| !t.is_empty())
    .ok_or(ApiError::Unauthenticated(
        "an Authorization: Bearer token (or ?access_token=) is required",
    ))?;
    let actor = state.keys.verify(&token).await?;
    state.agencies.admit(&actor, path, &state.pool).await?;
    // Verified above: only the expiry is read again here.
    let exp = jsonwebtoken::dangerous::insecure_decode_claims::<serde_json::Value>(&token)
        .ok()
        .and_then(|claims| claims["exp"].as_u64())
        .ok_or(ApiError::Unauthenticated("the token has no exp"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let expires_at = Instant::now() + Duration::from_secs(exp.saturating_sub(now));
    Ok((Caller(actor), expires_at))
}

/// `Last-Event-ID` (what a reconnecting EventSource sends), else
/// `?from_position=`: a position, 0 meaning the start of the log.
fn resume_position(
    headers: &HeaderMap, from_position: Option<&str>,
) -> Result<Option<i64>, ApiError> {
    let raw = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ApiError::validation("Last-Event-ID must be a position"))?
                .trim(),
        ),
        None => from_position.map(str::trim),
    };
    match raw {
        None | Some("") => Ok(None),
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|p| *p >= 0)
            .map(Some)
            .ok_or_else(|| {
                ApiError::validation(
                    "Last-Event-ID and from_position must be a position (0 or more)",
                )
            }),
    }
}

/// One open stream: its filter, and where it is in the reader's order.
struct Feed {
    state: AppState,
    hub: Arc<Hub>,
    actor: Actor,
    property_id: Option<Uuid>,
    receiver: tokio::sync::broadcast::Receiver<Live>,
    /// Becomes true when the process stops.
    closing: tokio::sync::watch::Receiver<bool>,
    /// The last event taken (sent or filtered out), in `(txid, position)` order.
    last: Cursor,
    /// Reading the log (from `last`) rather than the channel.
    catching_up: bool,
    pending: VecDeque<Live>,
    /// For owners: whether each property seen so far is theirs.
    visible: HashMap<Uuid, bool>,
    expires_at: Instant,
    done: bool,
}

impl Feed {
    async fn next(&mut self) -> Option<Event> {
        loop {
            if self.done || *self.closing.borrow() {
                return None;
            }
            while let Some(envelope) = self.pending.pop_front() {
                if Box::pin(self.allows(&envelope)).await {
                    return Some(sse_event(&envelope));
                }
            }
            if self.catching_up {
                // Boxed, as the lookups below: an idle stream's state machine
                // then holds a pointer, not these futures' whole size.
                match Box::pin(self.hub.page(self.last)).await {
                    Ok(page) => {
                        self.catching_up = page.len() as i64 == PAGE;
                        if let Some(last) = page.last() {
                            self.last = last.cursor();
                        }
                        self.pending.extend(page.into_iter().map(Arc::new));
                    }
                    Err(error) => {
                        // The client reconnects with Last-Event-ID and loses nothing.
                        tracing::warn!(%error, "a stream could not read its backlog; ending it");
                        return None;
                    }
                }
                continue;
            }
            tokio::select! {
                received = self.receiver.recv() => match received {
                    Ok(envelope) if envelope.cursor() > self.last => {
                        self.last = envelope.cursor();
                        self.pending.push_back(envelope);
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => self.catching_up = true,
                    Err(RecvError::Closed) => return None,
                },
                _ = self.closing.changed() => return None,
                () = tokio::time::sleep_until(self.expires_at) => {
                    self.done = true;
                    return Some(Event::default().event("token_expired").data("{}"));
                }
            }
        }
    }

    /// The caller's agency's events, of the asked property, and for owners
    /// of their own properties only.
    async fn allows(&mut self, envelope: &Envelope) -> bool {
        if envelope.meta.agency_id != self.actor.agency_id {
            return false;
        }
        if self.property_id.is_some_and(|p| p != envelope.property_id) {
            return false;
        }
        let Ok(scope) = ledger_domain::policy::require(&self.actor, Action::ReadCalendar) else {
            return false;
        };
        if scope != Scope::OwnProperties {
            return true;
        }
        // Owners see a property while they own it: the property's own
        // events say when that changes; otherwise its calendar is asked once.
        let owner_of_event = match &envelope.event {
            CalendarEvent::PropertyRegistered { details, .. }
            | CalendarEvent::PropertyUpdated { details, .. } => Some(details.owner_id.clone()),
            _ => None,
        };
        if let Some(owner_id) = owner_of_event {
            let sees =
                ledger_domain::policy::sees_property(&self.actor, scope, owner_id.as_deref());
            self.visible.insert(envelope.property_id, sees);
            return sees;
        }
        if let Some(sees) = self.visible.get(&envelope.property_id) {
            return *sees;
        }
        let actor = self.actor.clone();
        let looked_up = Box::pin(self.state.bus.read(envelope.property_id, |loaded| {
            loaded
                .calendar
                .property_for(&actor, Action::ReadCalendar)
                .is_ok()
        }))
        .await;
        match looked_up {
            Ok(sees) => {
                self.visible.insert(envelope.property_id, sees);
                sees
            }
            // Not kept: asked again at the property's next event.
            Err(_) => false,
        }
    }
}

fn sse_event(envelope: &Envelope) -> Event {
    let document = CloudEvent::from_envelope(envelope);
    let data = serde_json::to_string(&document).unwrap_or_else(|_| "{}".to_owned());
    Event::default()
        .id(envelope.position.to_string())
        .event(envelope.event.kind())
        .data(data)
}
