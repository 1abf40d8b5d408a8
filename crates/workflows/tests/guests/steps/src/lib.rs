//! The test workflow. Its input picks what it does, as `MODE` or
//! `MODE:ARG`:
//!
//! - `full:URL` logs, sleeps 300 ms, waits for the signal `go` (10 min),
//!   POSTs the signal's data to `URL/effect` (an activity), and returns
//!   `done:DATA:STATUS`.
//! - `three:URL` makes three activities, `URL/step/1` to `/3`, and returns
//!   their bodies joined by `+`.
//! - `sleep:MS` sleeps and returns `slept`.
//! - `timeout:MS` waits for the signal `go` for MS, returns `timed out` or
//!   the data.
//! - `child:INPUT` starts a child run of `steps` with INPUT, waits for it,
//!   returns `child said RESULT`.
//! - `logs:N` makes N durable log calls (long in all, short between calls).
//! - `config:KEY` reads config KEY, waits for the signal `go` (10 min),
//!   reads KEY again, and returns `FIRST|SECOND`.
//! - `read:KEY,KEY...` reads each config KEY and returns them a line each
//!   (`(none)` where nothing is set).
//! - `spin` loops forever; `trap` panics; `fail` returns an error;
//!   `print` writes to stdout and returns.
//! - anything else echoes itself back.

wit_bindgen::generate!({ world: "hearth:workflow/workflow", path: "../../../../../wit/hearth-workflow" });

use hearth::workflow::durable::{self, HttpRequest};

struct Steps;

fn post(url: String, body: &str) -> Result<(u16, String), String> {
    let request = HttpRequest { method: "POST".into(), url, headers: vec![], body: body.as_bytes().to_vec() };
    let response = durable::http_call(&request)?;
    Ok((response.status, String::from_utf8_lossy(&response.body).into_owned()))
}

fn shown(value: Option<String>) -> String {
    value.unwrap_or_else(|| "(none)".into())
}

impl Guest for Steps {
    fn run(input: String) -> Result<String, String> {
        let (mode, arg) = input.split_once(':').unwrap_or((input.as_str(), ""));
        match mode {
            "full" => {
                durable::log(&format!("starting {}", durable::run_id()));
                durable::sleep(300);
                let data = durable::wait_signal("go", Some(600_000)).ok_or("no go signal in 10 minutes")?;
                let (status, _) = post(format!("{arg}/effect"), &data)?;
                durable::log("effect applied");
                Ok(format!("done:{data}:{status}"))
            }
            "three" => {
                let mut out = Vec::new();
                for step in 1..=3 {
                    let (_, body) = post(format!("{arg}/step/{step}"), &durable::run_id())?;
                    out.push(body);
                }
                Ok(out.join("+"))
            }
            "sleep" => {
                durable::sleep(arg.parse().map_err(|_| "sleep:MS")?);
                Ok("slept".into())
            }
            "timeout" => {
                let ms = arg.parse().map_err(|_| "timeout:MS")?;
                Ok(durable::wait_signal("go", Some(ms)).unwrap_or_else(|| "timed out".into()))
            }
            "child" => {
                let id = durable::start_child("steps", arg)?;
                match durable::wait_child(&id, None) {
                    Some(Ok(result)) => Ok(format!("child said {result}")),
                    Some(Err(e)) => Err(format!("child failed: {e}")),
                    None => Err("no answer".into()),
                }
            }
            "spin" => {
                let mut n: u64 = durable::now();
                loop {
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if n == 42 {
                        return Ok(n.to_string());
                    }
                }
            }
            "logs" => {
                let n: u32 = arg.parse().map_err(|_| "logs:N")?;
                for i in 0..n {
                    durable::log(&format!("line {i}"));
                }
                Ok(format!("logged {n}"))
            }
            "config" => {
                let first = shown(durable::config_get(arg));
                durable::wait_signal("go", Some(600_000)).ok_or("no go signal in 10 minutes")?;
                Ok(format!("{first}|{}", shown(durable::config_get(arg))))
            }
            "read" => Ok(arg.split(',').map(|k| shown(durable::config_get(k))).collect::<Vec<_>>().join("\n")),
            "trap" => panic!("the test asked for a trap"),
            "fail" => Err("the test asked for a failure".into()),
            "print" => {
                println!("hello from stdout");
                durable::log("hello from log");
                Ok("printed".into())
            }
            _ => Ok(input),
        }
    }
}

export!(Steps);
