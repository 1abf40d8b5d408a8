//! Changes in hearth's store, listed or followed.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Encoding;

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Put,
    Delete,
}

/// One change in the store, as `/v1/events` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ChangeEvent {
    /// The revision of the change.
    pub revision: u64,
    pub kind: EventKind,
    /// The store key, e.g. `kv/greeting`.
    pub key: String,
    /// The new value (null for deletes).
    pub value: Option<String>,
    pub encoding: Encoding,
    /// Writes since the key was created (0 for deletes).
    pub version: u64,
}

/// `GET /v1/events` without `follow`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventList {
    /// The store's revision when the list was taken; follow from `revision + 1`.
    pub revision: u64,
    pub events: Vec<ChangeEvent>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Stream changes as server-sent events instead of returning a list.
    pub follow: Option<bool>,
    /// First revision to include; 0 is the oldest still retained. Default:
    /// the last `limit` revisions for a list, only new changes when
    /// following.
    pub since: Option<u64>,
    /// Only changes to keys starting with this prefix.
    pub prefix: Option<String>,
    /// At most this many events in a list (default 100, at most 10000).
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<usize>,
}

/// The data of one server-sent event of `/v1/events?follow=true`: a
/// change (events `put` and `delete`, whose `id` is its revision), or, as
/// the stream's last event, why it ended (event `error`, e.g. `compacted`
/// when the history the stream needed is gone).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum StreamedEvent {
    Change(ChangeEvent),
    Error(super::ErrorBody),
}

/// One server-sent event of `/v1/events?follow=true` as it is framed on the
/// wire (the `text/event-stream` item schema of OpenAPI 3.2). Documentation
/// only: clients read [`StreamedEvent`] out of `data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EventFrame {
    /// The change's revision, on `put` and `delete`: a client that
    /// reconnects sends the last one as `Last-Event-ID` to resume after it.
    /// On `end`, the revision the stream is complete through.
    pub id: Option<String>,
    /// `put`, `delete`, `error`, or `end`: the stream reached its lifetime
    /// (an hour) and ends; reconnect with `Last-Event-ID` set to its `id`.
    pub event: String,
    /// A [`StreamedEvent`], as JSON (empty on `end`).
    pub data: String,
}
