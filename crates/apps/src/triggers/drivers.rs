//! What calls an app without a client: cron firings (what a firing does,
//! for `hearth-triggers`' cron driver) and store events (a follower of the
//! store's changes, with a queue of calls per app), each a POST to a route
//! through the same `ingress::run` a request takes.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use hearth_triggers::driver::{self, CronJob, CronTarget, Guarantee};
use hearth_triggers::spec;
use tokio::sync::watch;

use super::store::trigger_prefix;
use super::{CRON_STATE, Cron, Spec, TRIGGERS, Trigger};
use crate::record::{self, Route};
use crate::service::Apps;
use crate::{Error, chain};

impl Apps {
    /// A line from hearth in the app's log, under the version it serves.
    pub(super) fn note(&self, name: &str, text: String) {
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

/// Fires cron and event triggers until `shutdown`, once the apps are loaded.
pub(crate) async fn run(apps: Apps, shutdown: watch::Receiver<bool>) {
    let mut shutdown = shutdown;
    tokio::select! {
        () = apps.ready() => {}
        _ = shutdown.changed() => return,
    }
    let events = tokio::spawn(events_while_leading(apps.clone()));
    let store = apps.store().clone();
    driver::run(Crons { apps, running: Running::default() }, store, shutdown).await;
    events.abort();
}

/// Follows events for the triggers, always, or only while this host leads
/// (`Options::events_leading`). A new leader follows from its term's start:
/// a change between the last leader's end and then calls no trigger, as a
/// change while a lone daemon is down calls none.
async fn events_while_leading(apps: Apps) {
    let Some(mut leading) = apps.inner.options.events_leading.clone() else {
        return follow_events(apps).await;
    };
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let following = tokio::spawn(follow_events(apps.clone()));
        let ended = leading.wait_for(|l| !*l).await.is_err();
        following.abort();
        if ended {
            return;
        }
    }
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
