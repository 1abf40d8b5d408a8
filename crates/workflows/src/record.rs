//! Workflows, runs and their journals as records in the store.
//!
//! ```text
//! workflows/defs/NAME               Definition: versions, the active one, triggers
//! workflows/runs/ID                 Run: status, input, output, what it waits for
//! workflows/journal/ID/SEQ          Entry: one completed host call and its result
//! workflows/signals/ID/KEY          Signal: sent to a run, consumed by a journal entry
//! workflows/output/ID/SEQ           the guest's stdout/stderr, per execution
//! workflows/cron/NAME/INDEX|ID      the last time a cron trigger fired
//! workflows/triggers/NAME/ID        a trigger added through the API
//! workflows/blobs/SHA256[/CHUNK]    a component's bytes, when hosts share the store
//! ```

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::journal::Entry;

/// Everything the workflows service keeps in the store is under this prefix.
pub(crate) const WORKFLOWS: &str = "workflows/";
pub(crate) const DEFS: &str = "workflows/defs/";
pub(crate) const RUNS: &str = "workflows/runs/";
pub(crate) const JOURNAL: &str = "workflows/journal/";
pub(crate) const SIGNALS: &str = "workflows/signals/";
pub(crate) const OUTPUT: &str = "workflows/output/";
pub(crate) const CRON: &str = "workflows/cron/";
pub(crate) const TRIGGERS: &str = "workflows/triggers/";
/// `blobs/SHA256` and its chunks: the bytes of deployed components, shared
/// when several hosts share the store ([`hearth_wasm::blobs`]).
pub(crate) const BLOBS: &str = "workflows/blobs/";
/// `claims/RUN`: `EXECUTOR/LEASE` of the execution under way, attached to
/// that lease.
pub(crate) const CLAIMS: &str = "workflows/claims/";

pub(crate) fn claim_key(id: &str) -> String {
    format!("{CLAIMS}{id}")
}

/// The run a key under `prefix` (`runs/`, `signals/`, `claims/`) is about.
pub(crate) fn run_of<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
    let rest = key.strip_prefix(prefix)?;
    Some(rest.split_once('/').map_or(rest, |(id, _)| id))
}

pub(crate) fn def_key(name: &str) -> String {
    format!("{DEFS}{name}")
}
pub(crate) fn run_key(id: &str) -> String {
    format!("{RUNS}{id}")
}
pub(crate) fn journal_prefix(id: &str) -> String {
    format!("{JOURNAL}{id}/")
}
pub(crate) fn journal_key(id: &str, seq: u32) -> String {
    format!("{JOURNAL}{id}/{seq:010}")
}
pub(crate) fn signals_prefix(id: &str) -> String {
    format!("{SIGNALS}{id}/")
}
pub(crate) fn output_prefix(id: &str) -> String {
    format!("{OUTPUT}{id}/")
}
pub(crate) fn triggers_prefix(name: &str) -> String {
    format!("{TRIGGERS}{name}/")
}
pub(crate) fn trigger_key(name: &str, id: &str) -> String {
    format!("{TRIGGERS}{name}/{id}")
}

/// A deployed workflow and its versions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Definition {
    pub name: String,
    pub versions: Vec<Version>,
    /// The version new runs start on.
    pub active: u32,
    /// What starts runs of it, from its manifest.
    #[serde(default)]
    pub triggers: crate::triggers::Triggers,
    pub created_at: u64,
    pub updated_at: u64,
}

impl Definition {
    pub fn version(&self, number: u32) -> Option<&Version> {
        self.versions.iter().find(|v| v.number == number)
    }
}

/// One uploaded component.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub number: u32,
    pub sha256: String,
    pub size: u64,
    pub created_at: u64,
    /// The `hearth.toml` it was deployed with, if any.
    #[serde(default)]
    pub manifest: Option<String>,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Started and not waiting: running now, or about to (after a restart).
    Running,
    /// Dropped from memory until a timer, a signal or a child wakes it.
    Waiting,
    Completed,
    Failed,
    Cancelled,
}

impl Status {
    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Completed | Status::Failed | Status::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Running => "running",
            Status::Waiting => "waiting",
            Status::Completed => "completed",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(text: &str) -> Result<Status, Error> {
        Ok(match text {
            "running" => Status::Running,
            "waiting" => Status::Waiting,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            other => {
                return Err(Error::Invalid(format!(
                    "unknown status {other:?}: use running, waiting, completed, failed or cancelled"
                )));
            }
        })
    }
}

/// One run of a workflow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub workflow: String,
    /// The version it started on; it stays on it to the end.
    pub version: u32,
    pub sha256: String,
    pub status: Status,
    pub input: String,
    #[serde(default)]
    pub output: Option<String>,
    #[serde(default)]
    pub error: Option<String>,
    /// What it waits for, while `Waiting`.
    #[serde(default)]
    pub wait: Option<Wait>,
    /// The run that started it, for a child.
    #[serde(default)]
    pub parent: Option<String>,
    /// What started it: `cli`, `api`, `webhook`, `cron`, `event`, `child`.
    #[serde(default)]
    pub started_by: String,
    /// Times an instance ran it (the first run plus one per wake-up).
    #[serde(default)]
    pub executions: u32,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default)]
    pub finished_at: Option<u64>,
}

/// What a waiting run waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Wait {
    /// The journal position of the call that waits.
    pub seq: u32,
    #[serde(flatten)]
    pub kind: WaitKind,
    /// When it stops waiting (the timer fires, or the wait times out).
    #[serde(default)]
    pub deadline: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "lowercase")]
pub enum WaitKind {
    Timer,
    Signal { name: String },
    Child { id: String },
}

impl std::fmt::Display for Wait {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            WaitKind::Timer => write!(f, "timer")?,
            WaitKind::Signal { name } => write!(f, "signal {name:?}")?,
            WaitKind::Child { id } => write!(f, "child {id}")?,
        }
        if let Some(deadline) = self.deadline {
            let left = deadline.saturating_sub(crate::now_ms());
            write!(f, " (until {})", crate::human_duration(left))?;
        }
        Ok(())
    }
}

/// A signal sent to a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub name: String,
    pub data: String,
    pub sent_at: u64,
}

/// A run with its journal, for `workflow show`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub journal: Vec<Entry>,
    /// Signals sent to it that no step has consumed yet.
    pub pending_signals: Vec<Signal>,
}

/// Decodes a record, naming the key if it cannot.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, Error> {
    serde_json::from_slice(bytes).map_err(|e| Error::Corrupt(key.to_owned(), e))
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("records serialise")
}

/// A run id: what `--id` accepts, also used in store keys.
pub(crate) fn validate_run_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && !id.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "run id {id:?} is not valid: use 1 to 128 letters, digits, dashes, underscores, dots and colons"
        )))
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), Error> {
    hearth_store::names::check_label("workflow", name, 63).map_err(Error::Invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_keys_sort_in_step_order() {
        let mut keys: Vec<String> = [10, 2, 1, 100].iter().map(|s| journal_key("r", *s)).collect();
        keys.sort();
        assert_eq!(
            keys,
            vec![journal_key("r", 1), journal_key("r", 2), journal_key("r", 10), journal_key("r", 100)]
        );
    }

    #[test]
    fn run_ids_are_checked() {
        for good in ["approval-1", "order:42", "A_b.c"] {
            validate_run_id(good).unwrap();
        }
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_run_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn waits_round_trip() {
        let wait = Wait { seq: 3, kind: WaitKind::Signal { name: "approve".into() }, deadline: Some(5) };
        let json = serde_json::to_string(&wait).unwrap();
        assert_eq!(serde_json::from_str::<Wait>(&json).unwrap(), wait);
    }
}
