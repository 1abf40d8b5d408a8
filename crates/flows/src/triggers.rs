//! What starts runs besides a direct call: webhooks on the ingress, cron
//! schedules, and events from hearth's own store. Declared in the
//! workflow's `hearth.toml`:
//!
//! ```toml
//! [[webhook]]
//! path = "start"                 # POST http://hooks.localhost:8080/WORKFLOW/start
//! secret = "a shared secret"     # optional: X-Hearth-Signature: sha256=HMAC(body)
//!
//! [[webhook]]
//! path = "approve"
//! signal = "approve"             # signals the run ?run=ID with the body
//!
//! [[cron]]
//! schedule = "0 9 * * mon-fri"
//! timezone = "Europe/Paris"      # default UTC
//! input = '{"report": "daily"}'
//!
//! [[event]]
//! prefix = "machines/"           # a run per change under the prefix
//! kinds = ["put"]                # default: put and delete
//! ```
//!
//! **Cron** never fires twice for one time: each firing's run id is
//! `WORKFLOW-cron-N-TIME` (starting is idempotent by id), and the last time
//! fired is kept in the store. **Missed runs** (the daemon was down over a
//! firing): the most recent missed one fires once when the daemon comes
//! back, the others are skipped and logged — catch up once, as systemd's
//! `Persistent=true` does. A slot that passed while the daemon was up (a
//! slow tick) fires late, on its own.

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use hearth_triggers::CronState;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::record::{self, Definition, decode, encode};
use crate::service::{Flows, StartRequest};
use crate::{Error, now_ms};
use hearth_triggers::{Schedule, signature as webhook_signature};

/// Every trigger a workflow declares.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    #[serde(default, rename = "webhook", skip_serializing_if = "Vec::is_empty")]
    pub webhooks: Vec<Webhook>,
    #[serde(default, rename = "cron", skip_serializing_if = "Vec::is_empty")]
    pub crons: Vec<Cron>,
    #[serde(default, rename = "event", skip_serializing_if = "Vec::is_empty")]
    pub events: Vec<EventTrigger>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The last part of `http://hooks.DOMAIN:PORT/WORKFLOW/PATH`.
    pub path: String,
    /// Signal this name to the run `?run=ID` instead of starting a run.
    #[serde(default)]
    pub signal: Option<String>,
    /// Requests must carry `X-Hearth-Signature: sha256=HEX`, the HMAC-SHA256
    /// of the body with this key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cron {
    pub schedule: String,
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub input: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventTrigger {
    pub prefix: String,
    #[serde(default)]
    pub kinds: Vec<String>,
}

impl Triggers {
    /// Parses the triggers out of a workflow's `hearth.toml` (empty: none).
    pub fn parse(manifest: &str) -> Result<Triggers, Error> {
        let t: Triggers =
            toml::from_str(manifest).map_err(|e| Error::Manifest(e.to_string().trim_end().to_owned()))?;
        t.validate()?;
        Ok(t)
    }

    /// Checks every trigger, and that no two webhooks share a path.
    pub fn validate(&self) -> Result<(), Error> {
        let t = self;
        let mut paths = std::collections::HashSet::new();
        for w in &t.webhooks {
            let ok = !w.path.is_empty()
                && w.path.len() <= 64
                && w.path.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !ok {
                return Err(Error::Manifest(format!(
                    "webhook path {:?} is not valid: use 1 to 64 letters, digits, dashes and underscores",
                    w.path
                )));
            }
            if !paths.insert(&w.path) {
                return Err(Error::Manifest(format!("two webhooks have the path {:?}", w.path)));
            }
            if w.secret.as_deref() == Some("") {
                return Err(Error::Manifest(format!(
                    "webhook {:?} has an empty secret; remove it or set one",
                    w.path
                )));
            }
        }
        for c in &t.crons {
            Schedule::parse(&c.schedule, &c.timezone).map_err(Error::Manifest)?;
        }
        for e in &t.events {
            if hearth_triggers::private::only_secrets(&e.prefix) {
                return Err(Error::Manifest(format!(
                    "event prefix {:?} is not allowed: the values there hold secrets",
                    e.prefix
                )));
            }
            if e.prefix.starts_with(record::WORKFLOWS) || e.prefix.is_empty() {
                return Err(Error::Manifest(format!(
                    "event prefix {:?} is not allowed: workflows cannot trigger on workflow records (runs would start runs); name a prefix such as \"machines/\"",
                    e.prefix
                )));
            }
            if let Some(k) = e.kinds.iter().find(|k| *k != "put" && *k != "delete") {
                return Err(Error::Manifest(format!("event kind {k:?} is not one of \"put\", \"delete\"")));
            }
        }
        Ok(())
    }

    /// With `spec` added.
    fn with(&self, spec: &Spec) -> Triggers {
        let mut t = self.clone();
        match spec {
            Spec::Cron(c) => t.crons.push(c.clone()),
            Spec::Event(e) => t.events.push(e.clone()),
            Spec::Webhook(w) => t.webhooks.push(w.clone()),
        }
        t
    }
}

/// One trigger of any kind, as added through the API
/// (`hearth workflow trigger add`) and listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Spec {
    Cron(Cron),
    Event(EventTrigger),
    Webhook(Webhook),
}

impl Spec {
    fn kind(&self) -> &'static str {
        match self {
            Spec::Cron(_) => "cron",
            Spec::Event(_) => "event",
            Spec::Webhook(_) => "webhook",
        }
    }
}

/// A workflow's trigger: where it came from and what it does.
pub type Trigger = hearth_triggers::Trigger<Spec>;
/// An added trigger as stored at `workflows/triggers/NAME/ID`.
type Stored = hearth_triggers::Stored<Spec>;

fn manifest_triggers(def: &Definition) -> Vec<Trigger> {
    let t = &def.triggers;
    let crons = t.crons.iter().cloned().map(Spec::Cron);
    let events = t.events.iter().cloned().map(Spec::Event);
    let webhooks = t.webhooks.iter().cloned().map(Spec::Webhook);
    let mut counts: HashMap<&str, usize> = HashMap::new();
    crons
        .chain(events)
        .chain(webhooks)
        .map(|spec| {
            let n = counts.entry(spec.kind()).or_default();
            let id = format!("{}-{n}", spec.kind());
            *n += 1;
            Trigger { id, source: "manifest".into(), spec, created_at: def.updated_at }
        })
        .collect()
}

impl Flows {
    /// Every trigger of a workflow: its manifest's, then those added.
    pub async fn triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let def = self.definition(name).await?;
        let mut all = manifest_triggers(&def);
        all.extend(self.added_triggers(name).await?);
        Ok(all)
    }

    async fn added_triggers(&self, name: &str) -> Result<Vec<Trigger>, Error> {
        let range = self.store().range(&record::triggers_prefix(name)).await?;
        range
            .kvs
            .iter()
            .map(|kv| {
                let s: Stored = decode(&kv.key, &kv.value)?;
                Ok(Trigger::added(s))
            })
            .collect()
    }

    /// The manifest's triggers with the added ones, as one set.
    async fn effective(&self, def: &Definition) -> Result<Triggers, Error> {
        let mut t = def.triggers.clone();
        for added in self.added_triggers(&def.name).await? {
            t = t.with(&added.spec);
        }
        Ok(t)
    }

    /// Adds a trigger to a deployed workflow. It stays across redeploys
    /// until removed.
    pub async fn add_trigger(&self, name: &str, spec: Spec) -> Result<Trigger, Error> {
        let def = self.definition(name).await?;
        self.effective(&def).await?.with(&spec).validate()?;
        let stored = Stored::new(spec, now_ms());
        self.store().put(&record::trigger_key(name, &stored.id), encode(&stored), None).await?;
        Ok(Trigger::added(stored))
    }

    /// Removes a trigger added through the API (a manifest's go with a
    /// redeploy that no longer declares them).
    pub async fn remove_trigger(&self, name: &str, id: &str) -> Result<(), Error> {
        let all = self.triggers(name).await?;
        match all.iter().find(|t| t.id == id) {
            None => {
                let ids: Vec<&str> = all.iter().map(|t| t.id.as_str()).collect();
                return Err(Error::TriggerNotFound {
                    workflow: name.to_owned(),
                    id: id.to_owned(),
                    ids: ids.join(", "),
                });
            }
            Some(t) if t.source == "manifest" => {
                return Err(Error::Invalid(format!(
                    "trigger {id} of workflow {name:?} comes from its hearth.toml: remove it there and deploy again"
                )));
            }
            Some(_) => {}
        }
        self.store().delete(&record::trigger_key(name, id)).await?;
        self.store().delete(&format!("{}{name}/{id}", record::CRON)).await?;
        Ok(())
    }
}

/// The answer to a webhook request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookReply {
    pub status: u16,
    /// JSON.
    pub body: String,
}

impl WebhookReply {
    fn error(status: u16, message: String) -> WebhookReply {
        WebhookReply { status, body: serde_json::json!({ "error": message }).to_string() + "\n" }
    }
}

impl Flows {
    /// Handles `POST /WORKFLOW/PATH[?run=ID]` on the webhook host.
    pub async fn webhook(
        &self,
        method: &str,
        path: &str,
        query: Option<&str>,
        signature: Option<&str>,
        idempotency_key: Option<&str>,
        body: &[u8],
    ) -> WebhookReply {
        let mut parts = path.trim_start_matches('/').splitn(2, '/');
        let (workflow, hook) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let def = match self.definition(workflow).await {
            Ok(def) => def,
            Err(Error::NotFound(_)) | Err(Error::Invalid(_)) => {
                return WebhookReply::error(
                    404,
                    format!(
                        "no workflow {workflow:?} here; webhooks are http://hooks.HOST/WORKFLOW/PATH as the workflow's hearth.toml declares"
                    ),
                );
            }
            Err(e) => return WebhookReply::error(503, e.to_string()),
        };
        let triggers = match self.effective(&def).await {
            Ok(t) => t,
            Err(e) => return WebhookReply::error(503, e.to_string()),
        };
        let Some(webhook) = triggers.webhooks.iter().find(|w| w.path == hook) else {
            let known: Vec<&str> = triggers.webhooks.iter().map(|w| w.path.as_str()).collect();
            return WebhookReply::error(
                404,
                format!("workflow {workflow:?} has no webhook {hook:?}; it declares {known:?}"),
            );
        };
        if method != "POST" {
            return WebhookReply::error(405, format!("webhooks take POST, not {method}"));
        }
        if let Some(secret) = &webhook.secret
            && !webhook_signature::verify(secret, body, signature)
        {
            return WebhookReply::error(401, webhook_signature::REFUSED.into());
        }
        let data = String::from_utf8_lossy(body).into_owned();
        if let Some(signal) = &webhook.signal {
            let run = query
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("run="))
                .map(percent_decode)
                .unwrap_or_default();
            if run.is_empty() {
                return WebhookReply::error(400, "say which run to signal: ?run=ID".into());
            }
            return match self.signal(&run, signal, data).await {
                Ok(()) => reply(202, serde_json::json!({ "run": run, "signal": signal })),
                Err(e) => error_reply(&e),
            };
        }
        // A retried delivery with the same key starts one run.
        let id = idempotency_key
            .map(|k| format!("{workflow}-hook-{}", &crate::runtime::sha256_hex(k.as_bytes())[..16]));
        let request = StartRequest {
            workflow: workflow.to_owned(),
            input: data,
            id,
            started_by: "webhook".into(),
            parent: None,
        };
        match self.start(request).await {
            Ok(started) => reply(
                202,
                serde_json::json!({ "run": started.run.id, "created": started.created, "status": started.run.status }),
            ),
            Err(e) => error_reply(&e),
        }
    }
}

fn reply(status: u16, body: serde_json::Value) -> WebhookReply {
    WebhookReply { status, body: body.to_string() + "\n" }
}

fn error_reply(e: &Error) -> WebhookReply {
    let status = match e.kind() {
        crate::ErrorKind::NotFound => 404,
        crate::ErrorKind::Invalid => 400,
        crate::ErrorKind::Conflict => 409,
        crate::ErrorKind::TooLarge => 413,
        crate::ErrorKind::Unavailable => 503,
        crate::ErrorKind::Internal => 500,
    };
    WebhookReply::error(status, e.to_string())
}

fn percent_decode(s: &str) -> String {
    let hex_digit = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match bytes.get(i..i + 3) {
            Some([b'%', hi, lo]) => hex_digit(*hi).zip(hex_digit(*lo)).map(|(h, l)| h << 4 | l),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(byte), _) => {
                out.push(byte);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Fires cron triggers and event triggers until `shutdown`.
pub(crate) async fn run(flows: Flows, shutdown: watch::Receiver<bool>) {
    let events = tokio::spawn(events(flows.clone(), shutdown.clone()));
    let mut shutdown = shutdown;
    let started = now_ms();
    loop {
        if let Err(e) = cron_tick(&flows, started).await {
            tracing::warn!(error = %e, "Cron triggers could not be checked.");
        }
        // Each second, on the second: six-field schedules have seconds.
        let into_second = now_ms() % 1000;
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(1000 - into_second + 5)) => {}
            _ = shutdown.changed() => break,
        }
        if *shutdown.borrow() {
            break;
        }
    }
    events.abort();
}

/// `started`: when this daemon began firing; slots before it were missed
/// while hearth was down.
async fn cron_tick(flows: &Flows, started: u64) -> Result<(), Error> {
    let now = now_ms();
    for def in flows.definitions().await? {
        // The manifest's crons keep their state under their position, as
        // they always have; added ones under their id.
        let manifest = def.triggers.crons.iter().enumerate().map(|(i, c)| (i.to_string(), c.clone()));
        // One unreadable added trigger stops no other workflow's crons.
        let added = match flows.added_triggers(&def.name).await {
            Ok(added) => added,
            Err(e) => {
                tracing::warn!(workflow = %def.name, error = %e, "Cannot read a workflow's added triggers; its added crons wait.");
                Vec::new()
            }
        };
        let added = added.into_iter().filter_map(|t| match t.spec {
            Spec::Cron(c) => Some((t.id, c)),
            _ => None,
        });
        for (slot, cron) in manifest.collect::<Vec<_>>().into_iter().chain(added) {
            if let Err(e) = fire_cron(flows, &def, &slot, &cron, now, started).await {
                tracing::warn!(workflow = %def.name, schedule = %cron.schedule, error = %e, "A cron trigger could not fire.");
            }
        }
    }
    Ok(())
}

async fn fire_cron(
    flows: &Flows,
    def: &Definition,
    index: &str,
    cron: &Cron,
    now: u64,
    started: u64,
) -> Result<(), Error> {
    let schedule = Schedule::parse(&cron.schedule, &cron.timezone).map_err(Error::Manifest)?;
    let key = format!("{}{}/{index}", record::CRON, def.name);
    let store = flows.store();
    let state = match store.get(&key).await? {
        Some(kv) => Some(decode::<CronState>(&key, &kv.value)?),
        None => None,
    };
    let last = match state.and_then(|s| s.last_for(&cron.schedule, &cron.timezone)) {
        Some(last) => last,
        // A new or changed schedule starts from now: no firings for the past.
        _ => {
            let fresh =
                CronState { schedule: cron.schedule.clone(), timezone: cron.timezone.clone(), last: now };
            store.put(&key, encode(&fresh), None).await?;
            return Ok(());
        }
    };
    let Some(hearth_triggers::Due { slot: due, skipped }) =
        hearth_triggers::due(&schedule, last, now, started)
    else {
        return Ok(());
    };
    if skipped > 0 {
        tracing::info!(workflow = %def.name, schedule = %cron.schedule, skipped, "Cron firings were missed while hearth was down; firing the latest once.");
    }
    let request = StartRequest {
        workflow: def.name.clone(),
        input: cron.input.clone(),
        id: Some(format!("{}-cron-{index}-{due}", def.name)),
        started_by: "cron".into(),
        parent: None,
    };
    flows.start(request).await?;
    let fired = CronState { schedule: cron.schedule.clone(), timezone: cron.timezone.clone(), last: due };
    store.put(&key, encode(&fired), None).await?;
    Ok(())
}

/// Every workflow's event triggers, manifest and added, by workflow.
async fn event_triggers(flows: &Flows) -> HashMap<String, Vec<EventTrigger>> {
    let defs = match flows.definitions().await {
        Ok(defs) => defs,
        Err(e) => {
            tracing::warn!(error = %e, "Cannot read the workflows' event triggers.");
            return HashMap::new();
        }
    };
    let mut out = HashMap::new();
    for def in defs {
        match flows.effective(&def).await {
            Ok(t) => {
                out.insert(def.name, t.events);
            }
            Err(e) => {
                tracing::warn!(workflow = %def.name, error = %e, "Cannot read a workflow's event triggers.")
            }
        }
    }
    out
}

/// Starts a run per store change that an event trigger matches. The store
/// is this daemon's, so nothing changes while it is down: following from
/// the current revision misses nothing.
async fn events(flows: Flows, _shutdown: watch::Receiver<bool>) {
    let changes = hearth_triggers::events::follow(flows.store().clone(), "Event triggers").await;
    futures::pin_mut!(changes);
    let mut triggers = event_triggers(&flows).await;
    while let Some(event) = changes.next().await {
        on_event(&flows, &mut triggers, &event).await;
    }
}

/// Starts the runs one store change calls for. Changes to the workflows'
/// own keys (runs would start runs) and to keys that hold secrets start
/// none, whatever a trigger's prefix.
async fn on_event(
    flows: &Flows,
    triggers: &mut HashMap<String, Vec<EventTrigger>>,
    event: &hearth_store::Event,
) {
    let key = &event.kv.key;
    if key.starts_with(record::DEFS) || key.starts_with(record::TRIGGERS) {
        *triggers = event_triggers(flows).await;
        return;
    }
    if key.starts_with(record::WORKFLOWS) || hearth_triggers::private::is_secret_key(key) {
        return;
    }
    for (workflow, list) in triggers.iter() {
        for (index, t) in list.iter().enumerate() {
            if !hearth_triggers::events::takes(&t.prefix, &t.kinds, event) {
                continue;
            }
            let input = hearth_triggers::events::payload(event);
            let request = StartRequest {
                workflow: workflow.clone(),
                input,
                id: Some(format!("{workflow}-event-{index}-{}", event.revision())),
                started_by: "event".into(),
                parent: None,
            };
            if let Err(e) = flows.start(request).await {
                tracing::warn!(workflow = %workflow, key = %key, error = %e, "An event trigger could not start a run.");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_declare_triggers() {
        let t = Triggers::parse(
            r#"
            [[webhook]]
            path = "start"
            secret = "s"
            [[webhook]]
            path = "approve"
            signal = "approve"
            [[cron]]
            schedule = "*/5 * * * * *"
            [[event]]
            prefix = "machines/"
            kinds = ["put"]
            "#,
        )
        .unwrap();
        assert_eq!(t.webhooks.len(), 2);
        assert_eq!(t.crons[0].timezone, "UTC");
        assert_eq!(t.events[0].prefix, "machines/");
        assert_eq!(Triggers::parse("").unwrap(), Triggers::default());
    }

    #[test]
    fn bad_triggers_are_refused_at_deploy() {
        for (text, needle) in [
            ("[[cron]]\nschedule = \"* * *\"", "has 3 fields"),
            ("[[cron]]\nschedule = \"* * * * *\"\ntimezone = \"Nowhere\"", "unknown time zone"),
            ("[[webhook]]\npath = \"a/b\"", "not valid"),
            ("[[webhook]]\npath = \"a\"\n[[webhook]]\npath = \"a\"", "two webhooks"),
            ("[[event]]\nprefix = \"workflows/runs/\"", "not allowed"),
            ("[[event]]\nprefix = \"machines/\"\nkinds = [\"poke\"]", "not one of"),
            ("[[webhook]]\npath = \"a\"\nsecrt = \"x\"", "unknown field"),
            ("[[bell]]\nring = 1", "unknown field"),
        ] {
            let error = Triggers::parse(text).unwrap_err().to_string();
            assert!(error.contains(needle), "{text}: {error}");
        }
    }

    #[test]
    fn run_ids_in_queries_are_decoded() {
        assert_eq!(percent_decode("approval%3A1"), "approval:1");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("50%"), "50%");
    }
}
