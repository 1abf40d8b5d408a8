//! Runs as the API sees them: start (idempotent by id), wait, list, show,
//! signal, cancel, migrate to another version, and logs.

use std::collections::HashSet;
use std::time::Duration;

use hearth_store::{Compare, Follower, KeyValue, Op, OpResponse, Txn};

use super::{LogLine, StartRequest, Started, Workflows};
use crate::journal::{Call, Recorded};
use crate::record::{self, Run, RunDetail, Signal, Status, decode, encode};
use crate::{Error, now_ms};

impl Workflows {
    /// Starts a run of the workflow's active version; with an id that
    /// exists, returns that run instead (starting is idempotent).
    pub async fn start(&self, request: StartRequest) -> Result<Started, Error> {
        record::validate_name(&request.workflow)?;
        let id = match &request.id {
            Some(id) => id.clone(),
            None => format!("{}-{:012x}", request.workflow, rand::random::<u64>() >> 16),
        };
        record::validate_run_id(&id)?;
        let key = record::run_key(&id);
        if let Some(kv) = self.inner.store.get(&key).await? {
            return self.existing(&request.workflow, &kv);
        }
        let def = self.definition(&request.workflow).await?;
        let version = def
            .version(def.active)
            .ok_or_else(|| Error::Invalid(format!("workflow {:?} has no active version", def.name)))?;
        let now = now_ms();
        let run = Run {
            id: id.clone(),
            workflow: def.name.clone(),
            version: version.number,
            sha256: version.sha256.clone(),
            status: Status::Running,
            input: request.input,
            output: None,
            error: None,
            wait: None,
            parent: request.parent,
            started_by: if request.started_by.is_empty() { "api".into() } else { request.started_by },
            executions: 0,
            created_at: now,
            updated_at: now,
            finished_at: None,
        };
        let txn = Txn::new()
            .when(Compare::missing(&key))
            .and_then(Op::Put { key: key.clone(), value: encode(&run), lease: None })
            .or_else(Op::Get { key: key.clone() });
        let done = self.inner.store.txn(txn).await?;
        if !done.succeeded {
            return match done.responses.first() {
                Some(OpResponse::Get { kv: Some(kv) }) => self.existing(&request.workflow, kv),
                _ => Err(Error::Contended(id)),
            };
        }
        // The executor follows run records: this one wakes it.
        Ok(Started { run, created: true })
    }

    fn existing(&self, workflow: &str, kv: &KeyValue) -> Result<Started, Error> {
        let run: Run = decode(&kv.key, &kv.value)?;
        if run.workflow != workflow {
            return Err(Error::IdTaken { id: run.id, existing: run.workflow, asked: workflow.to_owned() });
        }
        Ok(Started { run, created: false })
    }

    pub async fn get_run(&self, id: &str) -> Result<Run, Error> {
        let key = record::run_key(id);
        match self.inner.store.get(&key).await? {
            Some(kv) => decode(&key, &kv.value),
            None => Err(Error::RunNotFound(id.to_owned())),
        }
    }

    /// The run once it has ended, or as it is when `timeout` passes first.
    /// Follows the run's record in the store: no polling.
    pub async fn wait(&self, id: &str, timeout: Duration) -> Result<Run, Error> {
        let key = record::run_key(id);
        let deadline = tokio::time::Instant::now() + timeout;
        let Some(kv) = self.inner.store.get(&key).await? else {
            return Err(Error::RunNotFound(id.to_owned()));
        };
        // The prefix also matches longer ids; a change to one of them just
        // means reading this run again.
        let mut changes =
            Follower::new(self.inner.store.clone(), key.clone(), kv.mod_revision + 1, "Run wait");
        let mut run: Run = decode(&key, &kv.value)?;
        loop {
            if run.status.is_terminal() {
                return Ok(run);
            }
            if tokio::time::timeout_at(deadline, changes.next()).await.is_err() {
                return Ok(run);
            }
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            run = decode(&key, &kv.value)?;
        }
    }

    /// Runs, newest first, optionally only those with `status` or of `workflow`.
    pub async fn runs(&self, status: Option<Status>, workflow: Option<&str>) -> Result<Vec<Run>, Error> {
        let range = self.inner.store.range(record::RUNS).await?;
        let mut runs: Vec<Run> = range
            .kvs
            .iter()
            .map(|kv| decode::<Run>(&kv.key, &kv.value))
            .filter(|r| match r {
                Ok(run) => {
                    status.is_none_or(|s| run.status == s) && workflow.is_none_or(|w| run.workflow == w)
                }
                Err(_) => true,
            })
            .collect::<Result<_, _>>()?;
        runs.sort_by(|a, b| b.created_at.cmp(&a.created_at).then_with(|| a.id.cmp(&b.id)));
        Ok(runs)
    }

    /// A run with its journal and the signals no step has consumed yet.
    pub async fn show(&self, id: &str) -> Result<RunDetail, Error> {
        let run = self.get_run(id).await?;
        let journal = self.journal(id).await?;
        let consumed: HashSet<&str> = journal
            .iter()
            .filter_map(|e| match &e.outcome {
                Recorded::Signal { key, .. } => Some(key.as_str()),
                _ => None,
            })
            .collect();
        let signals = self.inner.store.range(&record::signals_prefix(id)).await?;
        let mut pending_signals = Vec::new();
        for kv in &signals.kvs {
            if !consumed.contains(kv.key.as_str()) {
                pending_signals.push(decode::<Signal>(&kv.key, &kv.value)?);
            }
        }
        Ok(RunDetail { run, journal, pending_signals })
    }

    /// Sends a signal; the run takes it at its next `wait-signal` for `name`.
    pub async fn signal(&self, id: &str, name: &str, data: String) -> Result<(), Error> {
        if name.is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
            return Err(Error::Invalid(format!(
                "signal name {name:?} is not valid: use 1 to 128 printable characters"
            )));
        }
        let run = self.get_run(id).await?;
        if run.status.is_terminal() {
            return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
        }
        let signal = Signal { name: name.to_owned(), data, sent_at: now_ms() };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let key = format!("{}{nanos:024}-{:08x}", record::signals_prefix(id), rand::random::<u32>());
        // The executor follows signals: this one wakes the run if it waits
        // for it.
        self.inner.store.put(&key, encode(&signal), None).await?;
        Ok(())
    }

    /// The first signal called `name` that no step has consumed.
    pub(crate) async fn pending_signal(
        &self,
        id: &str,
        name: &str,
        consumed: &HashSet<String>,
    ) -> Result<Option<(String, Signal)>, Error> {
        let range = self.inner.store.range(&record::signals_prefix(id)).await?;
        for kv in range.kvs {
            if consumed.contains(&kv.key) {
                continue;
            }
            let signal: Signal = decode(&kv.key, &kv.value)?;
            if signal.name == name {
                return Ok(Some((kv.key, signal)));
            }
        }
        Ok(None)
    }

    pub(super) async fn has_pending_signal(&self, id: &str, name: &str) -> Result<bool, Error> {
        let consumed: HashSet<String> = self
            .journal(id)
            .await?
            .into_iter()
            .filter_map(|e| match e.outcome {
                Recorded::Signal { key, .. } => Some(key),
                _ => None,
            })
            .collect();
        Ok(self.pending_signal(id, name, &consumed).await?.is_some())
    }

    /// Cancels a run that has not ended. Its execution, if one is under way,
    /// stops at its next step; a parent waiting on it is woken.
    pub async fn cancel(&self, id: &str) -> Result<Run, Error> {
        let key = record::run_key(id);
        for _ in 0..16 {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            let mut run: Run = decode(&key, &kv.value)?;
            if run.status.is_terminal() {
                return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
            }
            let now = now_ms();
            run.status = Status::Cancelled;
            run.wait = None;
            run.error = Some("cancelled".into());
            run.updated_at = now;
            run.finished_at = Some(now);
            // A parent waiting on this run is woken by the record.
            if self.write_run(&run, kv.mod_revision).await? {
                return Ok(run);
            }
        }
        Err(Error::Contended(id.to_owned()))
    }

    /// Moves a run that has not ended to another version of its workflow,
    /// to ship a fix to a run that waits. Its next execution replays the
    /// journal on the new code; if the new code does not make the same
    /// calls as the old one did, the run fails with the step that differs.
    pub async fn migrate(&self, id: &str, to: u32) -> Result<Run, Error> {
        let key = record::run_key(id);
        for _ in 0..16 {
            let Some(kv) = self.inner.store.get(&key).await? else {
                return Err(Error::RunNotFound(id.to_owned()));
            };
            let mut run: Run = decode(&key, &kv.value)?;
            if run.status.is_terminal() {
                return Err(Error::Ended { id: id.to_owned(), status: run.status.as_str() });
            }
            let def = self.definition(&run.workflow).await?;
            let version = def.version(to).ok_or_else(|| {
                let have: Vec<String> = def.versions.iter().map(|v| v.number.to_string()).collect();
                Error::Invalid(format!(
                    "workflow {:?} has no version {to}; it has {}",
                    def.name,
                    have.join(", ")
                ))
            })?;
            run.version = version.number;
            run.sha256 = version.sha256.clone();
            run.updated_at = now_ms();
            if self.write_run(&run, kv.mod_revision).await? {
                return Ok(run);
            }
        }
        Err(Error::Contended(id.to_owned()))
    }

    /// What the run logged (the durable `log` call, once each) and printed.
    pub async fn logs(&self, id: &str) -> Result<Vec<LogLine>, Error> {
        self.get_run(id).await?;
        let mut lines: Vec<LogLine> = self
            .journal(id)
            .await?
            .into_iter()
            .filter_map(|e| match e.call {
                Call::Log { message } => Some(LogLine { time: e.at, source: "log".into(), text: message }),
                _ => None,
            })
            .collect();
        let output = self.inner.store.range(&record::output_prefix(id)).await?;
        for kv in &output.kvs {
            lines.push(decode(&kv.key, &kv.value)?);
        }
        lines.sort_by_key(|l| l.time);
        Ok(lines)
    }
}
