//! `steps` after a careless change: for `full` it now asks for the time
//! before it sleeps. A run that started on `steps` and is moved to this
//! code must be caught at its first replay, not silently carry on.

wit_bindgen::generate!({ world: "hearth:workflow/workflow", path: "../../../../../wit/hearth-workflow" });

use hearth::workflow::durable;

struct Drifted;

impl Guest for Drifted {
    fn run(input: String) -> Result<String, String> {
        let started = durable::now();
        durable::log(&format!("starting {}", durable::run_id()));
        durable::sleep(300);
        let data = durable::wait_signal("go", Some(600_000)).unwrap_or_default();
        Ok(format!("{input}:{data}:{started}"))
    }
}

export!(Drifted);
