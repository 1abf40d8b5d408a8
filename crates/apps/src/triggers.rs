//! What calls an app besides a client: cron schedules and changes in
//! hearth's store call one of its routes, and webhooks put a signature check
//! in front of one. Declared in `hearth.toml`, or added and removed through
//! the API (`hearth app trigger add`), which keeps them apart from the
//! app's versions so a redeploy does not drop them:
//!
//! ```toml
//! [[cron]]
//! schedule = "*/5 * * * *"     # five fields, or six with seconds first; @daily...
//! timezone = "Europe/Paris"    # default UTC
//! path = "/tasks/cleanup"      # the route called: POST, default "/"
//! body = '{"why": "cron"}'     # default empty
//!
//! [[event]]
//! prefix = "machines/"         # a call per change in hearth's store under it
//! kinds = ["put"]              # default both put and delete
//! path = "/on-machine"         # POSTed {"kind", "key", "value", "revision"}
//!
//! [[webhook]]
//! path = "/github"             # deliveries under this path: once per Idempotency-Key,
//! secret = "…"                 # and, with a secret, signed: X-Hearth-Signature: sha256=HMAC(body)
//! ```
//!
//! A webhook delivery with an `Idempotency-Key` header reaches the app once:
//! the key is claimed in the store (`apps/deliveries/NAME/HASH`, kept a day)
//! before the app runs, and a redelivery is answered with the first
//! answer's status, marked `X-Hearth-Duplicate: true`. An answer of 500 or
//! more forgets the key, so the sender's retry is handled again; so does a
//! delivery dropped unanswered, and a claim left pending by a daemon that
//! died is taken over once it is well past the app's timeout.
//!
//! Where webhooks nest, the longest path's check applies (`guard_for`),
//! to every spelling of the path an app's router might read as it. The
//! checks are installed with the version that serves, so no request meets
//! a version without them.
//!
//! Calls made by a trigger carry `X-Hearth-Trigger: cron|event`, the
//! trigger's id in `X-Hearth-Trigger-Id` and, from cron, the firing's time
//! (Unix milliseconds) in `X-Hearth-Trigger-Time`; they run under the app's limits like any
//! request, and show in `hearth app logs`.
//!
//! **Cron fires at most once per firing.** The firing is recorded in the
//! store (`apps/cron/NAME/ID`, by compare-and-swap: one daemon of several
//! on a store wins) before the app is called, so a restart never repeats
//! one; a crash between the two loses that one call. A firing that comes
//! while the last one's call still runs, or while the app cannot serve, is
//! skipped and logged. Firings missed
//! while hearth was down collapse into one when it comes back (see
//! [`hearth_triggers::due`]). Workflows, which are durable, get exactly once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use hearth_triggers::driver::{self, CronJob, CronTarget, Guarantee};
use hearth_triggers::spec::{self, Kind, OwnKeys};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::{self, App, Route};
use crate::service::Apps;
use crate::{Error, chain, now_ms};

/// Triggers added through the API: `apps/triggers/NAME/ID`.
pub const TRIGGERS: &str = "apps/triggers/";
/// When each cron trigger last fired: `apps/cron/NAME/ID`.
pub const CRON_STATE: &str = "apps/cron/";

/// Largest body a cron trigger sends.
const MAX_BODY: usize = 64 << 10;

/// A cron schedule that calls one of the app's routes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    /// The route called, with POST.
    #[serde(default = "root")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub body: String,
}

/// Changes in hearth's store under a prefix, each POSTed to a route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Event {
    pub prefix: String,
    /// `put`, `delete`; empty means both.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    #[serde(default = "root")]
    pub path: String,
}

/// A route that takes deliveries: signed, if it has a secret, and handled
/// once per `Idempotency-Key`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    pub path: String,
    /// Requests must carry `X-Hearth-Signature: sha256=HMAC-SHA256(body)`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn utc() -> String {
    "UTC".into()
}

fn root() -> String {
    "/".into()
}

/// One trigger, of any kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Cron(Cron),
    Event(Event),
    Webhook(Webhook),
}

impl Spec {
    /// Checks the trigger, so that a bad one is refused when it is declared
    /// rather than failing when it fires.
    pub fn validate(&self) -> Result<(), Error> {
        match self {
            Spec::Cron(c) => {
                spec::check_schedule(&c.schedule, &c.timezone).map_err(Error::Manifest)?;
                check_path("cron", &c.path)?;
                if c.body.len() > MAX_BODY {
                    return Err(Error::Manifest(format!(
                        "the cron body is {} bytes; keep it under {} KiB",
                        c.body.len(),
                        MAX_BODY >> 10
                    )));
                }
            }
            Spec::Event(e) => {
                spec::check_event(&e.prefix, &e.kinds, OWN_KEYS).map_err(Error::Manifest)?;
                check_path("event", &e.path)?;
            }
            Spec::Webhook(w) => {
                check_path("webhook", &w.path)?;
                spec::check_secret(&w.path, w.secret.as_deref()).map_err(Error::Manifest)?;
            }
        }
        Ok(())
    }
}

impl hearth_triggers::Spec for Spec {
    fn kind(&self) -> Kind {
        match self {
            Spec::Cron(_) => Kind::Cron,
            Spec::Event(_) => Kind::Event,
            Spec::Webhook(_) => Kind::Webhook,
        }
    }
}

/// What apps' event triggers may not follow.
const OWN_KEYS: OwnKeys = OwnKeys {
    prefix: record::APPS,
    why: "apps cannot trigger on apps' own records and data (a key-value write would call the app again)",
};

/// A route path a trigger calls (it may carry a query), or, for a webhook,
/// the path it guards: plain segments only, so that the path the guard
/// matches is the path the app reads.
fn check_path(what: &str, path: &str) -> Result<(), Error> {
    let uri_ok = path.starts_with('/')
        && path.len() <= 1024
        && !path.contains('#')
        && path.bytes().all(|b| b.is_ascii_graphic())
        && path.parse::<http::uri::PathAndQuery>().is_ok();
    if !uri_ok {
        return Err(Error::Manifest(format!(
            "{what} path {path:?} is not valid: write a route path such as \"/tasks/cleanup\" (starting with /, \
             no spaces or fragment)"
        )));
    }
    if what == "webhook" {
        let plain = path.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-._~!$&'()*+,;=:@".contains(&b))
            && !path.contains("//")
            && path.split('/').all(|segment| segment != "." && segment != "..");
        if !plain {
            return Err(Error::Manifest(format!(
                "webhook path {path:?} is not valid: a webhook guards a plain path such as \"/hooks/github\" \
                 (no query, percent-escapes, empty or dot segments)"
            )));
        }
    }
    Ok(())
}

/// Checks a manifest's triggers together: each one, and no two webhooks on
/// one path.
pub(crate) fn validate_all(specs: &[Spec]) -> Result<(), Error> {
    let mut paths = std::collections::HashSet::new();
    for spec in specs {
        spec.validate()?;
        if let Spec::Webhook(w) = spec
            && !paths.insert(w.path.trim_end_matches('/').to_ascii_lowercase())
        {
            return Err(Error::Manifest(format!("two webhooks have the path {:?}", w.path)));
        }
    }
    Ok(())
}

/// Whether `spec` is a webhook on `path`, compared as the ingress matches
/// paths: without a trailing slash, in any case.
fn same_webhook(spec: &Spec, path: &str) -> bool {
    matches!(spec, Spec::Webhook(w) if w.path.trim_end_matches('/').eq_ignore_ascii_case(path.trim_end_matches('/')))
}

/// Refuses a version whose manifest declares a webhook on a path that a
/// webhook added by API already guards: which secret applies would be a
/// guess.
pub(crate) fn check_clash(app: &str, manifest: &[Spec], added: &[Trigger]) -> Result<(), Error> {
    for spec in manifest {
        let Spec::Webhook(w) = spec else { continue };
        if let Some(other) = added.iter().find(|t| same_webhook(&t.spec, &w.path)) {
            return Err(Error::Invalid(format!(
                "the hearth.toml declares a webhook on {:?}, and app {app:?} already has one there (trigger {}, \
                 added by `hearth app trigger add`): remove one of them (`hearth app trigger rm {app} {}`)",
                w.path, other.id, other.id
            )));
        }
    }
    Ok(())
}

/// The webhook checks of `app`'s active version with the triggers added to
/// it, longest path first: a request meets the most specific one.
pub(crate) fn guards(app: &App, added: &[Trigger]) -> crate::service::Guards {
    let mut guards: Vec<Guard> = manifest_triggers(app)
        .iter()
        .chain(added)
        .filter_map(|t| match &t.spec {
            Spec::Webhook(w) => {
                Some(Guard { path: w.path.trim_end_matches('/').to_owned(), secret: w.secret.clone() })
            }
            _ => None,
        })
        .collect();
    sort_guards(&mut guards);
    guards.into()
}

/// Longest path first; of two on one path (two daemons racing), the signed.
fn sort_guards(guards: &mut [Guard]) {
    guards.sort_by_key(|g| (std::cmp::Reverse(g.path.len()), g.secret.is_none()));
}

/// The store operations that delete what `app`'s triggers keep (on `app rm`).
pub(crate) fn delete_ops(app: &str) -> Vec<hearth_store::Op> {
    [trigger_prefix(app), format!("{CRON_STATE}{app}/"), format!("{DELIVERIES}{app}/")]
        .into_iter()
        .map(|prefix| hearth_store::Op::DeletePrefix { prefix })
        .collect()
}

/// A trigger of an app as listed: where it came from, and what it does.
pub type Trigger = hearth_triggers::Trigger<Spec>;
type Stored = hearth_triggers::Stored<Spec>;

fn trigger_prefix(app: &str) -> String {
    format!("{TRIGGERS}{app}/")
}

/// The manifest's triggers of `app`'s active version, with their ids.
fn manifest_triggers(app: &App) -> Vec<Trigger> {
    let Some(version) = app.active_version() else { return Vec::new() };
    spec::from_manifest(version.manifest.triggers(), version.created_at)
}

impl Apps {
    /// Every trigger of `name`: its active version's, then those added.
    pub async fn triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        record::validate_name(name)?;
        let (app, _) = self.find(name).await?.ok_or_else(|| Error::NotFound(name.to_owned()))?;
        let mut all = manifest_triggers(&app);
        all.extend(self.added_triggers(name).await?);
        Ok(all)
    }

    pub(crate) async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let prefix = trigger_prefix(name);
        let range = self.store().range(&prefix).await?;
        let mut out = Vec::with_capacity(range.kvs.len());
        for kv in range.kvs {
            let stored: Stored = serde_json::from_slice(&kv.value).map_err(|source| {
                Error::CorruptTrigger { app: name.to_owned(), id: kv.key[prefix.len()..].to_owned(), source }
            })?;
            out.push(Trigger::added(stored));
        }
        Ok(out)
    }

    /// Adds a trigger to a deployed app; it stays across redeploys until
    /// removed.
    pub async fn add_trigger(&self, name: &str, spec: Spec) -> Result<Trigger, Error> {
        record::validate_name(name)?;
        spec.validate()?;
        let lock = self.app_lock(name);
        let _held = lock.lock().await;
        let existing = self.triggers(name).await?;
        if let Spec::Webhook(w) = &spec
            && let Some(other) = existing.iter().find(|t| same_webhook(&t.spec, &w.path))
        {
            return Err(Error::Invalid(format!(
                "app {name:?} already has a webhook on {:?} ({}); remove it first",
                w.path, other.id
            )));
        }
        let stored = Stored::new(spec, now_ms());
        let id = &stored.id;
        // Only while the app exists: an `app rm` racing this leaves nothing.
        let txn = hearth_store::Txn::new().when(hearth_store::Compare::exists(record::key(name))).and_then(
            hearth_store::Op::Put {
                key: format!("{}{id}", trigger_prefix(name)),
                value: encode(&stored)?,
                lease: None,
            },
        );
        if !self.store().txn(txn).await?.succeeded {
            return Err(Error::NotFound(name.to_owned()));
        }
        self.rearm(name).await;
        self.note(
            name,
            format!("Added the {} trigger {id}.", hearth_triggers::Spec::kind(&stored.spec).as_str()),
        );
        Ok(Trigger::added(stored))
    }

    /// Removes a trigger added through the API. A manifest's triggers go
    /// with a redeploy that no longer declares them.
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        record::validate_name(name)?;
        let lock = self.app_lock(name);
        let _held = lock.lock().await;
        let key = format!("{}{id}", trigger_prefix(name));
        // An added trigger goes by its key, read or not (an unreadable one
        // must be removable).
        if !id.contains('/') && self.store().get(&key).await?.is_some() {
            self.delete_added(name, id).await?;
            return Ok(());
        }
        let all = self.triggers(name).await?;
        match all.iter().find(|t| t.id == id) {
            None => {
                let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
                return Err(Error::TriggerNotFound {
                    app: name.to_owned(),
                    id: id.to_owned(),
                    ids: ids.join(", "),
                });
            }
            Some(t) if t.source == spec::FROM_MANIFEST => {
                return Err(Error::Invalid(format!(
                    "trigger {id} of app {name:?} comes from its hearth.toml: remove it there and deploy again"
                )));
            }
            Some(_) => {}
        }
        self.delete_added(name, id).await
    }

    async fn delete_added(&self, name: &str, id: &str) -> Result<(), Error> {
        let txn = hearth_store::Txn::new()
            .and_then(hearth_store::Op::Delete { key: format!("{}{id}", trigger_prefix(name)) })
            .and_then(hearth_store::Op::Delete { key: format!("{CRON_STATE}{name}/{id}") });
        self.store().txn(txn).await?;
        self.rearm(name).await;
        Ok(())
    }

    /// Installs the app's checks again after its triggers changed. The
    /// change is made; if this fails, the app answers 503 (never
    /// unchecked) and the watch of the store tries again.
    async fn rearm(&self, name: &str) {
        if let Err(e) = self.reconcile_held(name).await {
            tracing::warn!(app = name, error = %chain(&e), "Cannot install the app's webhooks after a trigger change.");
        }
    }

    /// Every app's triggers, by app, read in one pass.
    async fn all_triggers(&self) -> Result<Vec<(App, Vec<Trigger>)>, Error> {
        let store = self.store();
        let records = store.range(record::RECORDS).await?;
        let added = store.range(TRIGGERS).await?;
        let mut by_app: HashMap<String, Vec<Trigger>> = HashMap::new();
        for kv in added.kvs {
            let Some(rest) = kv.key.strip_prefix(TRIGGERS) else { continue };
            let Some((app, _)) = rest.split_once('/') else { continue };
            match serde_json::from_slice::<Stored>(&kv.value) {
                Ok(s) => by_app.entry(app.to_owned()).or_default().push(Trigger::added(s)),
                Err(e) => tracing::warn!(key = kv.key, error = %e, "An unreadable app trigger; skipped."),
            }
        }
        let mut out = Vec::with_capacity(records.kvs.len());
        for kv in records.kvs {
            let app: App = match serde_json::from_slice(&kv.value) {
                Ok(app) => app,
                Err(e) => {
                    tracing::warn!(key = kv.key, error = %e, "An unreadable app record; its triggers are skipped.");
                    continue;
                }
            };
            let mut triggers = manifest_triggers(&app);
            triggers.extend(by_app.remove(&app.name).unwrap_or_default());
            out.push((app, triggers));
        }
        Ok(out)
    }

    /// A line from hearth in the app's log, under the version it serves.
    fn note(&self, name: &str, text: String) {
        let version = self.serving(name).map_or(0, |l| l.ctx.version);
        self.log(name).push(version, crate::LogStream::Hearth, text);
    }

    /// Calls `path` of `name`'s serving version, as a trigger, and returns
    /// the response's status, or why it could not be called.
    async fn call(
        &self,
        name: &str,
        trigger: &Trigger,
        path: &str,
        body: Bytes,
        content_type: &str,
        firing: Option<u64>,
    ) -> Result<u16, String> {
        let loaded = self.serving(name).ok_or("the app is not serving")?;
        let host = Route::default_for(name, &self.inner.options.domain).host;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(format!("http://{host}{path}"))
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, content_type)
            .header("x-hearth-trigger", hearth_triggers::Spec::kind(&trigger.spec).as_str())
            .header("x-hearth-trigger-id", trigger.id.as_str());
        let request = match firing {
            Some(ms) => request.header("x-hearth-trigger-time", ms),
            None => request,
        };
        let request = request
            .body(crate::ingress::full_body(body))
            .map_err(|e| format!("the request cannot be made ({e}); fix the trigger's path"))?;
        let response = crate::ingress::run(self, loaded, request).await;
        Ok(response.status().as_u16())
    }
}

/// Deliveries to webhooks, by `Idempotency-Key`: `apps/deliveries/NAME/HASH`,
/// kept about a day.
pub const DELIVERIES: &str = "apps/deliveries/";
/// How long a delivery is remembered: a lease of 25 hours, shared by the
/// deliveries of an hour, so each is kept 24 to 25 hours.
const DELIVERY_TTL: Duration = Duration::from_secs(25 * 3600);
const DELIVERY_LEASE_REUSE: Duration = Duration::from_secs(3600);
/// How long past the app's request timeout a pending delivery is taken for
/// one that its daemon dropped.
const STALE_MARGIN: Duration = Duration::from_secs(5);

/// What became of a delivery's `Idempotency-Key`.
pub(crate) enum Claim {
    /// First time: handle it, then [`Pending::settle`] the claim.
    New(Pending),
    /// Handled before; the app answered with this status.
    Done(u16),
    /// Being handled right now.
    InFlight,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    /// 0 while the app handles it.
    status: u16,
    at: u64,
}

/// Where a delivery to `app`'s webhook at `path` with `Idempotency-Key`
/// `key` is remembered: `apps/deliveries/APP/HASH`.
pub fn delivery_key(app: &str, path: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(path).chain_update([0]).chain_update(key).finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{DELIVERIES}{app}/{hex}")
}

/// A claimed delivery that the app is handling. Settled with the app's
/// answer (the ingress settles it from a task of its own, so a client that
/// goes away does not stop it); dropped unsettled, which only a panic or a
/// runtime shutting down does, it is forgotten if it is still this claim,
/// so the sender's retry is handled.
pub(crate) struct Pending {
    apps: Apps,
    /// The store key, and the revision the claim was written at.
    key: Option<(String, u64)>,
}

impl Pending {
    /// Records how the app answered. A failure (5xx) forgets the key, so
    /// that the sender's retry is handled again.
    pub(crate) async fn settle(mut self, status: u16) {
        let Some((key, _)) = self.key.take() else { return };
        let apps = &self.apps;
        let result = if status >= 500 {
            apps.store().delete(&key).await.map(drop)
        } else {
            match (apps.delivery_lease().await, encode(&Delivery { status, at: now_ms() })) {
                (Ok(lease), Ok(value)) => apps.store().put(&key, value, Some(lease)).await.map(drop),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %chain(&e), "Cannot record a webhook delivery.");
                    return;
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Cannot record a webhook delivery.");
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((key, revision)) = self.key.take() else { return };
        let store = self.apps.store().clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let forget = hearth_store::Txn::new()
                    .when(hearth_store::Compare::mod_revision(&key, revision))
                    .and_then(hearth_store::Op::Delete { key: key.clone() });
                if let Err(e) = store.txn(forget).await {
                    tracing::warn!(error = %e, "Cannot forget an unfinished webhook delivery.");
                }
            });
        }
    }
}

impl Apps {
    /// Claims a delivery's key before the app sees it, so two deliveries
    /// with one key never both reach the app. A claim still pending well
    /// past the app's request timeout (`timeout`) was left by a daemon that
    /// died handling it, and is taken over.
    pub(crate) async fn claim_delivery(
        &self,
        app: &str,
        path: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Claim, Error> {
        let store_key = delivery_key(app, path, key);
        let lease = self.delivery_lease().await?;
        let now = now_ms();
        let pending = encode(&Delivery { status: 0, at: now })?;
        let put = hearth_store::Op::Put { key: store_key.clone(), value: pending, lease: Some(lease) };
        let txn = hearth_store::Txn::new()
            .when(hearth_store::Compare::missing(&store_key))
            .and_then(put.clone())
            .or_else(hearth_store::Op::Get { key: store_key.clone() });
        let response = self.store().txn(txn).await?;
        let claimed =
            |revision| Claim::New(Pending { apps: self.clone(), key: Some((store_key.clone(), revision)) });
        if response.succeeded {
            return Ok(claimed(response.revision));
        }
        let Some(hearth_store::OpResponse::Get { kv: Some(kv) }) = response.responses.first() else {
            // Expired between the two: taken as new on the next delivery.
            return Ok(Claim::InFlight);
        };
        let existing: Delivery =
            serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(store_key.clone(), e))?;
        if existing.status != 0 {
            return Ok(Claim::Done(existing.status));
        }
        let stale_after = timeout.as_millis() as u64 + STALE_MARGIN.as_millis() as u64;
        if now.saturating_sub(existing.at) < stale_after {
            return Ok(Claim::InFlight);
        }
        let takeover = hearth_store::Txn::new()
            .when(hearth_store::Compare::mod_revision(&store_key, kv.mod_revision))
            .and_then(put);
        let taken = self.store().txn(takeover).await?;
        if taken.succeeded {
            tracing::info!(app, path, "Took over a webhook delivery left unfinished by an earlier daemon.");
            Ok(claimed(taken.revision))
        } else {
            Ok(Claim::InFlight)
        }
    }

    async fn delivery_lease(&self) -> Result<hearth_store::LeaseId, Error> {
        let mut current = self.inner.delivery_lease.lock().await;
        if let Some((id, granted)) = *current
            && granted.elapsed() < DELIVERY_LEASE_REUSE
        {
            return Ok(id);
        }
        let lease = self.store().lease_grant(DELIVERY_TTL).await?;
        *current = Some((lease.id, std::time::Instant::now()));
        Ok(lease.id)
    }
}

/// A webhook's check, as the ingress applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Guard {
    /// Without a trailing slash ("" for the root).
    pub(crate) path: String,
    pub(crate) secret: Option<String>,
}

impl Guard {
    /// Whether a request for `path` falls under this guard.
    pub(crate) fn covers(&self, path: &str) -> bool {
        under(&self.path, path)
    }
}

/// Whether `path` is `prefix` or below it ("" is the root, above all).
fn under(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || (path.starts_with(prefix) && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/')))
}

/// The guard a request for `path` meets: the longest that covers the path
/// as sent or as the app's router may read it (percent-escapes decoded, dot
/// segments and repeated slashes resolved, in any case), so that no
/// spelling of a guarded path slips past its check. `guards` is longest
/// first.
pub(crate) fn guard_for<'g>(guards: &'g [Guard], path: &str) -> Verdict<'g> {
    if guards.is_empty() {
        return Verdict::Open;
    }
    // Each spelling meets its own longest guard (in any case). Two
    // spellings under two different guards are refused: the request could
    // pass one check and be routed as the other.
    let mut met: Option<&Guard> = None;
    for form in path_forms(path) {
        let lower = form.to_ascii_lowercase();
        let Some(guard) =
            guards.iter().find(|g| g.covers(&form) || under(&g.path.to_ascii_lowercase(), &lower))
        else {
            continue;
        };
        match met {
            Some(seen) if !std::ptr::eq(seen, guard) => return Verdict::Ambiguous,
            _ => met = Some(guard),
        }
    }
    match met {
        Some(guard) => Verdict::Guarded(guard),
        None => Verdict::Open,
    }
}

/// What the ingress does with a request, by its app's webhooks.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<'g> {
    /// No webhook covers it.
    Open,
    /// This webhook's checks apply.
    Guarded(&'g Guard),
    /// Spellings of its path fall under different webhooks: refused.
    Ambiguous,
}

/// `path` as sent and normalised: percent-decoded (repeatedly, for
/// double escapes), `.` and `..` resolved, empty segments dropped.
fn path_forms(path: &str) -> Vec<String> {
    let mut forms = vec![path.to_owned()];
    let mut decoded = path.to_owned();
    for _ in 0..3 {
        let next = hearth_triggers::percent::decode_path(&decoded);
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let mut segments: Vec<&str> = Vec::new();
    for segment in decoded.split(['/', '\\']) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let normal = format!("/{}", segments.join("/"));
    if normal != path {
        forms.push(normal);
    }
    forms
}

/// Fires cron and event triggers until `shutdown`, once the apps are loaded.
pub(crate) async fn run(apps: Apps, shutdown: watch::Receiver<bool>) {
    let mut shutdown = shutdown;
    tokio::select! {
        () = apps.ready() => {}
        _ = shutdown.changed() => return,
    }
    let events = tokio::spawn(follow_events(apps.clone()));
    let store = apps.store().clone();
    driver::run(Crons { apps, running: Running::default() }, store, shutdown).await;
    events.abort();
}

/// The cron triggers whose call is still running, by `APP/ID`: a firing
/// that comes while the last one runs is skipped, so a slow app never
/// piles up calls.
type Running = Arc<std::sync::Mutex<std::collections::HashSet<String>>>;

/// What an app's cron firing does: call the trigger's route. Recorded
/// before the call (at most once per firing, even across a crash, and by
/// one daemon only); the state is kept only while the trigger exists, so
/// an `app rm` racing a firing leaves nothing behind.
struct Crons {
    apps: Apps,
    running: Running,
}

impl CronTarget for Crons {
    type Job = (Trigger, Cron);
    type Error = Error;
    const GUARANTEE: Guarantee = Guarantee::AtMostOnce;

    async fn jobs(&self) -> Result<Vec<CronJob<(Trigger, Cron)>>, Error> {
        let mut jobs = Vec::new();
        for (app, triggers) in self.apps.all_triggers().await? {
            for trigger in triggers {
                let Spec::Cron(cron) = &trigger.spec else { continue };
                let source_key = if trigger.source == spec::FROM_API {
                    format!("{}{}", trigger_prefix(&app.name), trigger.id)
                } else {
                    record::key(&app.name)
                };
                jobs.push(CronJob {
                    owner: app.name.clone(),
                    state_key: format!("{CRON_STATE}{}/{}", app.name, trigger.id),
                    source_key,
                    schedule: cron.schedule.clone(),
                    timezone: cron.timezone.clone(),
                    job: (trigger.clone(), cron.clone()),
                });
            }
        }
        Ok(jobs)
    }

    async fn fire(&self, job: &CronJob<(Trigger, Cron)>, due: hearth_triggers::Due) -> Result<(), Error> {
        let (apps, name, (trigger, cron)) = (&self.apps, &job.owner, &job.job);
        let what = format!("Cron {} (the firing at {} ms)", trigger.id, due.slot);
        let busy = format!("{name}/{}", trigger.id);
        if apps.serving(name).is_none() {
            apps.note(name, format!("{what} was skipped: the app is not serving."));
            return Ok(());
        }
        if !self.running.lock().unwrap_or_else(|e| e.into_inner()).insert(busy.clone()) {
            apps.note(name, format!("{what} was skipped: the previous firing's call is still running."));
            return Ok(());
        }
        if due.skipped > 0 {
            apps.note(
                name,
                format!(
                    "Cron {}: {} firings were missed while hearth was down; firing the latest once.",
                    trigger.id, due.skipped
                ),
            );
        }
        // Each call runs on its own, so one slow app holds up no other.
        let (apps, name, trigger, path, running) =
            (apps.clone(), name.clone(), trigger.clone(), cron.path.clone(), self.running.clone());
        let body = Bytes::from(cron.body.clone());
        tokio::spawn(async move {
            let status =
                apps.call(&name, &trigger, &path, body, "text/plain; charset=utf-8", Some(due.slot)).await;
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&busy);
            apps.note(&name, fired_line(&what, &path, status));
        });
        Ok(())
    }
}

fn fired_line(what: &str, path: &str, status: Result<u16, String>) -> String {
    match status {
        Ok(status) => format!("{what} called POST {path}: {status}."),
        Err(why) => format!("{what} could not call POST {path}: {why}."),
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(value).map_err(|e| Error::Internal(e.to_string()))
}

/// How many event calls wait for one app before more are dropped.
const EVENT_QUEUE: usize = 256;

/// One call an event trigger makes.
struct EventCall {
    trigger: Trigger,
    path: String,
    body: Bytes,
}

/// Calls the routes that event triggers name, a call per matching change,
/// each app's calls in the store's order. Follows the store from the
/// current revision (the store is this daemon's, so nothing changes while
/// it is down), and from where it was when the watch breaks. Changes to
/// the apps' own keys and to keys that hold secrets reach no trigger.
async fn follow_events(apps: Apps) {
    let mut queues: HashMap<String, tokio::sync::mpsc::Sender<EventCall>> = HashMap::new();
    let changes = hearth_triggers::events::follow(apps.store().clone(), "App event triggers").await;
    futures::pin_mut!(changes);
    let mut triggers = event_triggers(&apps).await;
    while let Some(event) = changes.next().await {
        let key = &event.kv.key;
        if key.starts_with(record::APPS) {
            if key.starts_with(record::RECORDS) || key.starts_with(TRIGGERS) {
                triggers = event_triggers(&apps).await;
            }
            continue;
        }
        if hearth_triggers::private::is_secret_key(key) {
            continue;
        }
        for (name, trigger) in &triggers {
            let Spec::Event(spec) = &trigger.spec else { continue };
            if !hearth_triggers::events::takes(&spec.prefix, &spec.kinds, &event) {
                continue;
            }
            let call = EventCall {
                trigger: trigger.clone(),
                path: spec.path.clone(),
                body: Bytes::from(hearth_triggers::events::payload(&event)),
            };
            let queue = queues.entry(name.clone()).or_insert_with(|| event_worker(&apps, name));
            match queue.try_send(call) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(call)) => apps.note(
                    name,
                    format!(
                        "Event {}: the change to {key} was dropped: {EVENT_QUEUE} calls are already waiting.",
                        call.trigger.id
                    ),
                ),
                Err(tokio::sync::mpsc::error::TrySendError::Closed(call)) => {
                    let queue = event_worker(&apps, name);
                    let _ = queue.try_send(call);
                    queues.insert(name.clone(), queue);
                }
            }
        }
    }
}

/// A task that makes one app's event calls, one at a time, in order.
fn event_worker(apps: &Apps, name: &str) -> tokio::sync::mpsc::Sender<EventCall> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<EventCall>(EVENT_QUEUE);
    let (apps, name) = (apps.clone(), name.to_owned());
    tokio::spawn(async move {
        while let Some(call) = rx.recv().await {
            let status =
                apps.call(&name, &call.trigger, &call.path, call.body, "application/json", None).await;
            apps.note(&name, fired_line(&format!("Event {}", call.trigger.id), &call.path, status));
        }
    });
    tx
}

async fn event_triggers(apps: &Apps) -> Vec<(String, Trigger)> {
    match apps.all_triggers().await {
        Ok(all) => all
            .into_iter()
            .flat_map(|(app, ts)| {
                ts.into_iter()
                    .filter(|t| matches!(t.spec, Spec::Event(_)))
                    .map(move |t| (app.name.clone(), t))
            })
            .collect(),
        Err(e) => {
            tracing::warn!(error = %chain(&e), "Cannot read the apps' event triggers.");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cron(schedule: &str, path: &str) -> Spec {
        Spec::Cron(Cron {
            schedule: schedule.into(),
            timezone: "UTC".into(),
            path: path.into(),
            body: String::new(),
        })
    }

    #[test]
    fn triggers_are_checked_when_declared() {
        assert!(cron("*/5 * * * *", "/tick").validate().is_ok());
        for (spec, needle) in [
            (cron("* * *", "/"), "has 3 fields"),
            (cron("* * * * *", "tick"), "not valid"),
            (cron("* * * * *", "/a b"), "not valid"),
            (cron("* * * * *", "/a#b"), "not valid"),
            (
                Spec::Event(Event { prefix: "apps/data/".into(), kinds: vec![], path: "/".into() }),
                "not allowed",
            ),
            (
                Spec::Event(Event {
                    prefix: "machines/".into(),
                    kinds: vec!["poke".into()],
                    path: "/".into(),
                }),
                "not one of",
            ),
            (Spec::Webhook(Webhook { path: "/gh".into(), secret: Some(String::new()) }), "empty secret"),
            (Spec::Webhook(Webhook { path: "gh".into(), secret: None }), "not valid"),
        ] {
            let error = spec.validate().unwrap_err().to_string();
            assert!(error.contains(needle), "{spec:?}: {error}");
        }
        let two = [
            Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("a".into()) }),
            Spec::Webhook(Webhook { path: "/gh/".into(), secret: None }),
        ];
        assert!(validate_all(&two).unwrap_err().to_string().contains("two webhooks"));
    }

    #[test]
    fn specs_are_tagged_by_kind_in_json() {
        let json = serde_json::to_value(cron("@daily", "/")).unwrap();
        assert_eq!(json["kind"], "cron");
        let back: Spec =
            serde_json::from_value(serde_json::json!({"kind": "webhook", "path": "/gh", "secret": "s"}))
                .unwrap();
        assert_eq!(back, Spec::Webhook(Webhook { path: "/gh".into(), secret: Some("s".into()) }));
        let unknown = serde_json::from_value::<Spec>(
            serde_json::json!({"kind": "cron", "schedule": "@daily", "paht": "/"}),
        );
        assert!(unknown.is_err());
    }

    #[test]
    fn guards_cover_their_path_and_below() {
        let g = Guard { path: "/hooks/github".into(), secret: None };
        assert!(g.covers("/hooks/github"));
        assert!(g.covers("/hooks/github/push"));
        assert!(!g.covers("/hooks/githubx"));
        assert!(!g.covers("/"));
        assert!(Guard { path: String::new(), secret: None }.covers("/anything"));
    }

    #[test]
    fn the_longest_guard_wins_under_any_spelling() {
        let guard =
            |path: &str, secret: Option<&str>| Guard { path: path.into(), secret: secret.map(Into::into) };
        let mut list = vec![guard("/hooks", None), guard("/hooks/github", Some("s")), guard("", None)];
        sort_guards(&mut list);
        let pick = |path: &str| match guard_for(&list, path) {
            Verdict::Guarded(g) => Some(g.path.as_str()),
            Verdict::Open => None,
            Verdict::Ambiguous => Some("ambiguous"),
        };
        assert_eq!(pick("/hooks/github/push"), Some("/hooks/github"));
        assert_eq!(pick("/hooks/gitlab"), Some("/hooks"));
        assert_eq!(pick("/other"), Some(""));
        for spelling in
            ["/hooks//github", "/a/../hooks/github", "/hooks/%67ithub", "/Hooks/GITHUB", "/hooks\\github"]
        {
            // Checked as the signed one, or refused for being two at once.
            let met = pick(spelling);
            assert!(matches!(met, Some("/hooks/github" | "ambiguous")), "{spelling}: {met:?}");
        }
        assert_eq!(path_forms("/a/./b/../c%2Fd"), ["/a/./b/../c%2Fd", "/a/c/d"]);
        assert_eq!(path_forms("/plain"), ["/plain"]);
        assert_eq!(guard_for(&[], "/x"), Verdict::Open);
        // A spelling that one check would pass and another route refuses.
        assert_eq!(pick("/hooks/github/../gitlab"), Some("ambiguous"));
        // Of two on one path, the signed one.
        let mut tie = vec![guard("/a", None), guard("/a", Some("s"))];
        sort_guards(&mut tie);
        assert_eq!(guard_for(&tie, "/a"), Verdict::Guarded(&tie[0]));
    }

    #[test]
    fn webhook_paths_are_plain() {
        let hook = |path: &str| Spec::Webhook(Webhook { path: path.into(), secret: None }).validate();
        assert!(hook("/hooks/git-hub_1.v2~x").is_ok());
        for bad in ["/h?x=1", "/h%41", "/a//b", "/a/../b", "/a/./b", "/a b", "/\u{e9}"] {
            let error = hook(bad).unwrap_err().to_string();
            assert!(error.contains("not valid"), "{bad}: {error}");
        }
        // A route a cron calls may carry a query.
        assert!(cron("@daily", "/tasks?full=1").validate().is_ok());
        assert!(cron("@daily", "/t\u{e4}").validate().is_err());
        assert!(cron("@daily", "/t\tx").validate().is_err());
    }
}
