//! The benchmark's workflows. Input `three|URL`: three activities, POSTs to
//! `URL/step/1..3`, their bodies joined by `+`. Input `resume`: waits for the
//! signal `go` and returns its data.

wit_bindgen::generate!({ world: "hearth:workflow/workflow", path: "../../../wit/hearth-workflow" });

use hearth::workflow::durable::{self, HttpRequest};

struct Bench;

impl Guest for Bench {
    fn run(input: String) -> Result<String, String> {
        if input == "resume" {
            return Ok(durable::wait_signal("go", None).unwrap_or_default());
        }
        let url = input.strip_prefix("three|").ok_or("input: three|URL or resume")?;
        let mut bodies = Vec::with_capacity(3);
        for step in 1..=3 {
            let request = HttpRequest {
                method: "POST".into(),
                url: format!("{url}/step/{step}"),
                headers: vec![],
                body: durable::run_id().into_bytes(),
            };
            let response = durable::http_call(&request)?;
            bodies.push(String::from_utf8_lossy(&response.body).into_owned());
        }
        Ok(bodies.join("+"))
    }
}

export!(Bench);
