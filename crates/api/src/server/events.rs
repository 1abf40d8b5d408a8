//! `/v1/events`: every change in the store, as a list or a live stream.

use std::borrow::Cow;
use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{FutureExt, StreamExt};
use hearth_client::types::{ChangeEvent, Encoding, ErrorBody, EventFrame, EventKind, EventList, EventsQuery};
use hearth_store::{Change, Follower};

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiQuery;

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;

/// Event streams open at once in the daemon. Each holds a connection, a
/// store watch and a task for as long as its client stays; the connection
/// caps bound the connections, this bounds the watches. hearth's own
/// subsystems follow the store directly, so these are people's and tools'
/// `events --follow`: 128 is far more than they open, and a client that
/// opens more is told to close some (503 `too_many_streams`).
pub(crate) const MAX_EVENT_STREAMS: usize = 128;
static EVENT_STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(MAX_EVENT_STREAMS);

/// How long one event stream lasts. Then the server ends it cleanly, at a
/// transaction's end, with a last `end` event whose `id` is the revision
/// the stream is complete through; the client reconnects from there
/// (`Last-Event-ID`, or `since` one past it) and misses nothing.
/// Bounded, so that no stream holds its place among [`MAX_EVENT_STREAMS`],
/// its watch and its connection forever (etcd's gRPC proxy and Kubernetes'
/// watch timeouts do the same); an hour costs a reconnect an hour.
pub const EVENT_STREAM_LIFETIME: Duration = Duration::from_secs(60 * 60);

/// A store event as the wire shows it: its value as
/// [`hearth_triggers::private::redact`] shows it, so no secret leaves here.
/// Every event the API answers (the list and the stream) passes through
/// this function.
fn change_event(event: hearth_store::Event) -> ChangeEvent {
    let revision = event.revision();
    let kind = match event.kind {
        hearth_store::EventKind::Put => EventKind::Put,
        hearth_store::EventKind::Delete => EventKind::Delete,
    };
    let (value, encoding) = match kind {
        EventKind::Put => {
            let shown = match hearth_triggers::private::redact(&event.kv.key, &event.kv.value) {
                Cow::Borrowed(_) => event.kv.value,
                Cow::Owned(shown) => shown,
            };
            let (value, encoding) = Encoding::encode(shown);
            (Some(value), encoding)
        }
        EventKind::Delete => (None, Encoding::Utf8),
    };
    ChangeEvent { revision, kind, key: event.kv.key, value, encoding, version: event.kv.version }
}

/// Whether a change to `key` is shown to a client that asked for `prefix`:
/// it is under the prefix, and is not hearth's own plumbing
/// ([`hearth_triggers::private::is_internal`]: the component bytes shared
/// between hosts), which no client is shown whatever it asks for. Every
/// event the API answers (the list and the stream) passes this test.
fn shown(key: &str, prefix: &str) -> bool {
    key.starts_with(prefix) && !hearth_triggers::private::is_internal(key)
}

/// Lists recent changes, or with `follow=true` streams them as server-sent
/// events: `id` is the revision, `event` is `put` or `delete`, `data` is a
/// [`ChangeEvent`]. A client that reconnects with `Last-Event-ID: R` resumes
/// at revision R + 1. A stream lasts an hour at most: it then ends with an
/// `end` event (no data) whose `id` says where to resume.
#[utoipa::path(get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses(
        (status = 200, description = "A list, or with follow=true an SSE stream whose data are StreamedEvent",
            content((EventList = "application/json"), (EventFrame = "text/event-stream"))),
        (status = 400, body = ErrorBody),
        (status = 410, description = "`since` is older than the retained history", body = ErrorBody),
        (status = 503, description = "`follow=true` and too many event streams are open (`too_many_streams`)", body = ErrorBody)))]
pub(crate) async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let prefix = query.prefix.clone().unwrap_or_default();
    let current = state.store().revision().await?;
    if query.follow.unwrap_or(false) {
        let resume = last_event_id(&headers)?.map(|rev| rev + 1);
        let since = match resume.or(query.since) {
            // The oldest revision still retained, not "from now", which is
            // what the store's watch takes 0 to mean.
            Some(0) => state.store().compacted_revision().await?.max(1),
            Some(since) => since,
            None => current + 1,
        };
        return follow(state, &prefix, since).await;
    }
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("limit {limit} is out of range"),
            format!("use a limit from 1 to {MAX_LIMIT}"),
        ));
    }
    let oldest = state.store().compacted_revision().await?.max(1);
    let since = match query.since {
        // The oldest revision still retained, not "from now", which is what
        // the store's watch takes 0 to mean.
        Some(0) => oldest,
        Some(since) => since,
        None => current.saturating_sub(limit as u64 - 1).max(oldest),
    };
    let mut events = Vec::new();
    if since <= current {
        // Every key, filtered here: every revision up to `current` has an
        // event, so the read ends at `current` and never waits for a write
        // (a prefix nothing was written under would wait forever).
        let mut stream = state.store().watch("", since).await?;
        while events.len() < limit {
            let event = match stream.next().await {
                Some(Ok(event)) if event.revision() <= current => event,
                Some(Ok(_)) | None => break,
                Some(Err(error)) => return Err(error.into()),
            };
            let last = event.revision() == current;
            if shown(&event.kv.key, &prefix) {
                events.push(change_event(event));
            }
            if last {
                // The rest of the last transaction is already there.
                while events.len() < limit {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(event))) if event.revision() == current => {
                            if shown(&event.kv.key, &prefix) {
                                events.push(change_event(event));
                            }
                        }
                        _ => break,
                    }
                }
                break;
            }
        }
    }
    Ok(axum::Json(EventList { revision: current, events }).into_response())
}

pub(crate) fn last_event_id(headers: &HeaderMap) -> Result<Option<u64>, ApiError> {
    let Some(value) = headers.get("last-event-id") else { return Ok(None) };
    value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()).map(Some).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_header",
            "Last-Event-ID is not a revision number",
            "send the `id` of the last event received, or omit the header",
        )
    })
}

/// A place among the [`MAX_EVENT_STREAMS`] streams (events and config
/// watches), given back when dropped.
pub(crate) fn stream_permit() -> Result<tokio::sync::SemaphorePermit<'static>, ApiError> {
    EVENT_STREAMS.try_acquire().map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "too_many_streams",
            format!("{MAX_EVENT_STREAMS} event streams are open already"),
            "close an `events --follow` or `config watch` you no longer need, or retry later",
        )
    })
}

async fn follow(state: AppState, prefix: &str, since: u64) -> Result<Response, ApiError> {
    let permit = stream_permit()?;
    // Opening a watch before answering means a bad `since` is a proper 4xx,
    // not an error buried in a 200 stream; the stream itself comes from a
    // follower, which opens its watch again if it breaks.
    drop(state.store().watch(prefix, since).await?);
    let follower = Follower::new(state.shared_store(), prefix, since, "The events stream");
    let deadline = tokio::time::Instant::now() + state.event_stream_lifetime();
    let stream = futures::stream::unfold(
        Some(Following {
            follower,
            prefix: prefix.to_owned(),
            through: since.saturating_sub(1),
            deadline,
            ending: false,
        }),
        move |following| async move {
            let mut following = following?;
            let change = loop {
                let change = if following.ending {
                    None
                } else {
                    tokio::select! {
                        change = following.follower.next() => Some(change),
                        () = tokio::time::sleep_until(following.deadline) => None,
                    }
                };
                // Past the deadline: what is already there (the rest of a
                // transaction), then where to resume.
                let change = match change {
                    Some(change) => change,
                    None => {
                        following.ending = true;
                        match following.follower.next().now_or_never() {
                            Some(change) => change,
                            None => return Some((end_event(following.through), None)),
                        }
                    }
                };
                match change {
                    // Not shown, but the stream is complete through it.
                    Change::Event(event) if !shown(&event.kv.key, &following.prefix) => {
                        following.through = event.revision();
                    }
                    change => break change,
                }
            };
            Some(match change {
                Change::Event(event) => {
                    following.through = event.revision();
                    (sse_event(event), Some(following))
                }
                // A follower that found its history compacted away cannot
                // hand out the changes in between: the client is told, and
                // the stream ends.
                Change::Reset(range) => {
                    let error =
                        hearth_store::Error::Compacted { requested: since, oldest: range.revision + 1 };
                    (error_event(ApiError::from(error)), None)
                }
            })
        },
    )
    .map(move |event| {
        // The stream's place among MAX_EVENT_STREAMS, given back when it ends.
        let _held = &permit;
        Ok::<_, Infallible>(event)
    })
    .take_until(state.shutting_down());
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

/// An event stream's place: its follower on `prefix`, and the revision it
/// has handed out every event of (the last event's, shown or not; before
/// any, the one before `since`).
struct Following {
    follower: Follower,
    prefix: String,
    through: u64,
    deadline: tokio::time::Instant,
    ending: bool,
}

/// The last event of a stream that reached [`EVENT_STREAM_LIFETIME`]: no
/// data, so a client that does not know it skips it, and an `id` that
/// every SSE client resumes after.
pub(crate) fn end_event(through: u64) -> SseEvent {
    SseEvent::default()
        .event("end")
        .id(through.to_string())
        .comment("this stream reached its lifetime: reconnect with Last-Event-ID to go on")
}

fn sse_event(event: hearth_store::Event) -> SseEvent {
    let change = change_event(event);
    let kind = match change.kind {
        EventKind::Put => "put",
        EventKind::Delete => "delete",
    };
    SseEvent::default()
        .id(change.revision.to_string())
        .event(kind)
        .json_data(&change)
        .unwrap_or_else(|_| SseEvent::default().event("error"))
}

fn error_event(error: ApiError) -> SseEvent {
    let body = ErrorBody { error: error.detail };
    SseEvent::default().event("error").json_data(&body).unwrap_or_else(|_| SseEvent::default().event("error"))
}
