//! Two of three: asks for approval, waits (for days, at no cost) for votes
//! sent as `vote` signals, and decides when two approvers agree or the
//! time runs out. Optionally tells an HTTP endpoint the decision.
//!
//! Input: `{"request": "a new laptop", "approvers": ["ann", "bob", "cid"],
//! "timeout": "7d", "notify": "http://..."}` (`notify` optional; timeout in
//! s, m, h or d). A vote: `{"who": "ann", "approve": true}`.

wit_bindgen::generate!({ world: "hearth:workflow/workflow", path: "../../../wit/hearth-workflow" });

use hearth::workflow::durable::{self, HttpRequest};
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
struct Input {
    request: String,
    approvers: Vec<String>,
    #[serde(default = "week")]
    timeout: String,
    #[serde(default)]
    notify: Option<String>,
}

fn week() -> String {
    "7d".into()
}

#[derive(Deserialize)]
struct Vote {
    who: String,
    approve: bool,
}

#[derive(Serialize)]
struct Decision {
    request: String,
    decision: &'static str,
    approved_by: Vec<String>,
    rejected_by: Vec<String>,
}

fn millis(text: &str) -> Result<u64, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = number.parse().map_err(|_| format!("timeout {text:?}: use a number and s, m, h or d"))?;
    let scale = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("timeout {text:?}: use a number and s, m, h or d")),
    };
    Ok(n * scale)
}

struct Approval;

impl Guest for Approval {
    fn run(input: String) -> Result<String, String> {
        let input: Input = serde_json::from_str(&input).map_err(|e| format!("the input is not valid: {e}"))?;
        let needed = input.approvers.len() / 2 + 1;
        let deadline = durable::now() + millis(&input.timeout)?;
        durable::log(&format!(
            "asking {} to approve {:?}; {needed} must agree within {}",
            input.approvers.join(", "),
            input.request,
            input.timeout
        ));
        let (mut approved_by, mut rejected_by) = (Vec::new(), Vec::new());
        let decision = loop {
            if approved_by.len() >= needed {
                break "approved";
            }
            if rejected_by.len() > input.approvers.len() - needed {
                break "rejected";
            }
            let left = deadline.saturating_sub(durable::now());
            let Some(data) = durable::wait_signal("vote", Some(left)) else { break "timed out" };
            let vote: Vote = match serde_json::from_str(&data) {
                Ok(vote) => vote,
                Err(e) => {
                    durable::log(&format!("ignoring a vote that is not {{\"who\", \"approve\"}}: {e}"));
                    continue;
                }
            };
            let voted = approved_by.contains(&vote.who) || rejected_by.contains(&vote.who);
            if !input.approvers.contains(&vote.who) || voted {
                durable::log(&format!("ignoring a vote from {} (not an approver, or voted already)", vote.who));
                continue;
            }
            durable::log(&format!("{} {}", vote.who, if vote.approve { "approves" } else { "rejects" }));
            if vote.approve { approved_by.push(vote.who) } else { rejected_by.push(vote.who) }
        };
        let result = serde_json::to_string(&Decision { request: input.request, decision, approved_by, rejected_by })
            .map_err(|e| e.to_string())?;
        durable::log(&format!("decision: {decision}"));
        if let Some(url) = input.notify {
            let request = HttpRequest {
                method: "POST".into(),
                url,
                headers: vec![("content-type".into(), "application/json".into())],
                body: result.clone().into_bytes(),
            };
            match durable::http_call(&request) {
                Ok(response) => durable::log(&format!("notified: HTTP {}", response.status)),
                Err(e) => durable::log(&format!("could not notify: {e}")),
            }
        }
        Ok(result)
    }
}

export!(Approval);
