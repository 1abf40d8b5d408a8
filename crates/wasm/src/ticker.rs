//! The epoch ticker: wasmtime interrupts a guest when the engine's epoch
//! passes the deadline its store was given, so advancing the epoch at a fixed
//! rate turns "N ticks" into a CPU budget.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use wasmtime::Engine;

use crate::Error;

/// How often the epoch advances: the granularity of CPU budgets.
pub const TICK: Duration = Duration::from_millis(10);

/// Advances an engine's epoch every [`TICK`] on a thread of its own, until
/// dropped.
#[derive(Debug)]
pub struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    /// Starts ticking `engine`, on a thread called `name` (so that it can be
    /// told apart in `top -H`).
    pub fn start(engine: Engine, name: &str) -> Result<Ticker, Error> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .map_err(Error::Ticker)?;
        Ok(Ticker { stop })
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
