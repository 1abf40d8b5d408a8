//! The journal: what a run asked of the host, step by step, and what it got.
//!
//! Every completed `durable` call becomes an [`Entry`] in the store before
//! the guest sees its result. A replay walks the journal with a [`Cursor`]:
//! each call the guest makes must equal the recorded one at that position
//! (else the guest is not deterministic, or its code changed), and gets the
//! recorded result; past the end, calls are live.

use serde::{Deserialize, Serialize};

/// A host call, with the arguments that identify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "call", rename_all = "kebab-case")]
pub enum Call {
    Sleep {
        millis: u64,
    },
    WaitSignal {
        name: String,
        #[serde(default)]
        timeout_millis: Option<u64>,
    },
    Http {
        method: String,
        url: String,
        /// The request body's hash: a replay must send the same body.
        body_sha256: String,
    },
    Now,
    Random,
    Log {
        message: String,
    },
    StartChild {
        workflow: String,
        input: String,
    },
    WaitChild {
        id: String,
        #[serde(default)]
        timeout_millis: Option<u64>,
    },
    ConfigGet {
        key: String,
    },
}

impl std::fmt::Display for Call {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Call::Sleep { millis } => write!(f, "sleep({})", crate::human_duration(*millis)),
            Call::WaitSignal { name, timeout_millis: None } => write!(f, "wait-signal({name:?})"),
            Call::WaitSignal { name, timeout_millis: Some(t) } => {
                write!(f, "wait-signal({name:?}, timeout {})", crate::human_duration(*t))
            }
            Call::Http { method, url, .. } => write!(f, "http-call({method} {url})"),
            Call::Now => write!(f, "now()"),
            Call::Random => write!(f, "random()"),
            Call::Log { message } => write!(f, "log({:?})", shorten(message, 60)),
            Call::StartChild { workflow, input } => {
                write!(f, "start-child({workflow}, {:?})", shorten(input, 40))
            }
            Call::WaitChild { id, .. } => write!(f, "wait-child({id})"),
            Call::ConfigGet { key } => write!(f, "config-get({key:?})"),
        }
    }
}

/// What a call returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Recorded {
    /// `sleep` ended; `log` was written.
    Done,
    /// `now`, `random`.
    Number { value: u64 },
    /// `wait-signal` got one: which (its key in the inbox) and its data.
    Signal { key: String, data: String },
    /// A wait timed out.
    TimedOut,
    /// `http-call` got an answer.
    Response {
        status: u16,
        headers: Vec<(String, String)>,
        /// Base64, so any bytes fit in JSON.
        body_base64: String,
    },
    /// `http-call` got no answer; `start-child` could not start.
    Error { message: String },
    /// `start-child` started (or found) the child.
    Child { id: String },
    /// `wait-child`: the child ended.
    ChildEnded {
        #[serde(default)]
        output: Option<String>,
        #[serde(default)]
        error: Option<String>,
    },
    /// `config-get` read this text (`None`: nothing is set there).
    Config {
        #[serde(default)]
        value: Option<String>,
    },
    /// `config-get` read a secret: its text, sealed with the daemon's
    /// config key (`hearth_config::Config::seal`), never in clear.
    Secret { sealed: String },
}

impl std::fmt::Display for Recorded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Recorded::Done => write!(f, "done"),
            Recorded::Number { value } => write!(f, "{value}"),
            Recorded::Signal { data, .. } => write!(f, "signal {:?}", shorten(data, 60)),
            Recorded::TimedOut => write!(f, "timed out"),
            Recorded::Response { status, body_base64, .. } => {
                let len = body_base64.len() / 4 * 3;
                write!(f, "HTTP {status} (~{len} bytes)")
            }
            Recorded::Error { message } => write!(f, "error: {message}"),
            Recorded::Child { id } => write!(f, "started {id}"),
            Recorded::ChildEnded { output: Some(o), .. } => write!(f, "ended: {:?}", shorten(o, 60)),
            Recorded::ChildEnded { error, .. } => {
                write!(f, "failed: {}", error.as_deref().unwrap_or("(no message)"))
            }
            Recorded::Config { value: Some(value) } => write!(f, "{:?}", shorten(value, 60)),
            Recorded::Config { value: None } => write!(f, "not set"),
            Recorded::Secret { .. } => write!(f, "a secret (sealed)"),
        }
    }
}

/// One step of a run's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    pub seq: u32,
    /// When the result was recorded, in milliseconds since the epoch.
    pub at: u64,
    #[serde(flatten)]
    pub call: Call,
    pub outcome: Recorded,
}

/// A guest that made a different call than its journal records.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Divergence {
    #[error(
        "the workflow is not deterministic, or its code changed: at step {seq} the journal records {recorded} but the code called {called}"
    )]
    Different { seq: u32, recorded: String, called: String },
    #[error(
        "the workflow is not deterministic, or its code changed: it returned after {reached} steps, but the journal records {recorded}"
    )]
    Short { reached: u32, recorded: u32 },
}

/// Where a replay is in the journal.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    entries: Vec<Entry>,
    next: usize,
}

impl Cursor {
    pub(crate) fn new(entries: Vec<Entry>) -> Cursor {
        Cursor { entries, next: 0 }
    }

    /// The position of the next call.
    pub(crate) fn seq(&self) -> u32 {
        self.next as u32
    }

    /// Whether every recorded step has been replayed.
    pub(crate) fn is_live(&self) -> bool {
        self.next >= self.entries.len()
    }

    /// The recorded result of `call` if it was recorded at this position;
    /// `None` if the journal ends here (the call is live).
    pub(crate) fn replay(&mut self, call: &Call) -> Result<Option<Recorded>, Divergence> {
        let Some(entry) = self.entries.get(self.next) else { return Ok(None) };
        if entry.call != *call {
            return Err(Divergence::Different {
                seq: entry.seq,
                recorded: entry.call.to_string(),
                called: call.to_string(),
            });
        }
        self.next += 1;
        Ok(Some(entry.outcome.clone()))
    }

    /// Records a live step (already written to the store).
    pub(crate) fn push(&mut self, entry: Entry) {
        debug_assert!(self.is_live());
        self.entries.push(entry);
        self.next = self.entries.len();
    }

    /// Checks that a run that returned replayed its whole journal.
    pub(crate) fn finish(&self) -> Result<(), Divergence> {
        if self.is_live() {
            Ok(())
        } else {
            Err(Divergence::Short { reached: self.next as u32, recorded: self.entries.len() as u32 })
        }
    }

    pub(crate) fn entries(&self) -> &[Entry] {
        &self.entries
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let cut: String = text.chars().take(max).collect();
        format!("{cut}…")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u32, call: Call, outcome: Recorded) -> Entry {
        Entry { seq, at: 0, call, outcome }
    }

    #[test]
    fn a_replay_returns_recorded_results_then_goes_live() {
        let mut cursor = Cursor::new(vec![
            entry(0, Call::Now, Recorded::Number { value: 7 }),
            entry(1, Call::Sleep { millis: 5 }, Recorded::Done),
        ]);
        assert_eq!(cursor.replay(&Call::Now).unwrap(), Some(Recorded::Number { value: 7 }));
        assert!(!cursor.is_live());
        assert_eq!(cursor.replay(&Call::Sleep { millis: 5 }).unwrap(), Some(Recorded::Done));
        assert!(cursor.is_live());
        assert_eq!(cursor.replay(&Call::Random).unwrap(), None);
        cursor.push(entry(2, Call::Random, Recorded::Number { value: 1 }));
        assert_eq!(cursor.seq(), 3);
        cursor.finish().unwrap();
    }

    #[test]
    fn a_different_call_is_a_divergence_that_names_the_step() {
        let mut cursor = Cursor::new(vec![entry(0, Call::Sleep { millis: 1000 }, Recorded::Done)]);
        let error = cursor.replay(&Call::Sleep { millis: 2000 }).unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("step 0") && text.contains("sleep(1s)") && text.contains("sleep(2s)"),
            "{text}"
        );
    }

    #[test]
    fn returning_early_is_a_divergence() {
        let mut cursor = Cursor::new(vec![
            entry(0, Call::Now, Recorded::Number { value: 7 }),
            entry(1, Call::Random, Recorded::Number { value: 8 }),
        ]);
        cursor.replay(&Call::Now).unwrap();
        assert_eq!(cursor.finish().unwrap_err(), Divergence::Short { reached: 1, recorded: 2 });
    }

    #[test]
    fn entries_are_flat_json() {
        let e =
            entry(4, Call::WaitSignal { name: "approve".into(), timeout_millis: None }, Recorded::TimedOut);
        let json = serde_json::to_value(&e).unwrap();
        assert_eq!(json["call"], "wait-signal");
        assert_eq!(json["name"], "approve");
        assert_eq!(json["outcome"]["result"], "timed-out");
        assert_eq!(serde_json::from_value::<Entry>(json).unwrap(), e);
    }

    /// Journals written before `config-get` existed must still replay: one
    /// entry of every call and result, as those versions wrote them.
    #[test]
    fn entries_written_by_earlier_versions_still_decode() {
        let old = [
            r#"{"seq":0,"at":1,"call":"sleep","millis":300,"outcome":{"result":"done"}}"#,
            r#"{"seq":1,"at":1,"call":"wait-signal","name":"go","timeout_millis":600000,"outcome":{"result":"signal","key":"k","data":"yes"}}"#,
            r#"{"seq":2,"at":1,"call":"wait-signal","name":"go","timeout_millis":null,"outcome":{"result":"timed-out"}}"#,
            r#"{"seq":3,"at":1,"call":"http","method":"POST","url":"http://x/","body_sha256":"ab","outcome":{"result":"response","status":200,"headers":[["a","b"]],"body_base64":"eQ=="}}"#,
            r#"{"seq":4,"at":1,"call":"http","method":"GET","url":"http://x/","body_sha256":"ab","outcome":{"result":"error","message":"refused"}}"#,
            r#"{"seq":5,"at":1,"call":"now","outcome":{"result":"number","value":7}}"#,
            r#"{"seq":6,"at":1,"call":"random","outcome":{"result":"number","value":8}}"#,
            r#"{"seq":7,"at":1,"call":"log","message":"hi","outcome":{"result":"done"}}"#,
            r#"{"seq":8,"at":1,"call":"start-child","workflow":"w","input":"i","outcome":{"result":"child","id":"r.8"}}"#,
            r#"{"seq":9,"at":1,"call":"wait-child","id":"r.8","timeout_millis":null,"outcome":{"result":"child-ended","output":"o","error":null}}"#,
        ];
        for text in old {
            let entry: Entry = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            let again: serde_json::Value = serde_json::to_value(&entry).unwrap();
            let want: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(again, want, "{text}");
        }
    }

    #[test]
    fn a_config_read_is_recorded_as_text_and_a_secret_only_sealed() {
        let read = entry(
            0,
            Call::ConfigGet { key: "db.port".into() },
            Recorded::Config { value: Some("5432".into()) },
        );
        let json = serde_json::to_value(&read).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"seq": 0, "at": 0, "call": "config-get", "key": "db.port", "outcome": {"result": "config", "value": "5432"}})
        );
        assert_eq!(serde_json::from_value::<Entry>(json).unwrap(), read);
        let unset = entry(1, Call::ConfigGet { key: "x".into() }, Recorded::Config { value: None });
        assert_eq!(serde_json::from_str::<Entry>(&serde_json::to_string(&unset).unwrap()).unwrap(), unset);
        assert_eq!(unset.outcome.to_string(), "not set");
        let secret = Recorded::Secret { sealed: "c2VhbGVk".into() };
        assert_eq!(secret.to_string(), "a secret (sealed)");
    }
}
