//! What [`crate::TimeSeries::run`] asks for samples, and the arithmetic
//! collectors share.

use std::collections::HashMap;
use std::hash::Hash;

use crate::Sample;

/// A source of samples, asked once per interval.
#[async_trait::async_trait]
pub trait Collector: Send + Sync {
    /// The samples as of now. A collector that cannot read what it
    /// samples logs why and returns what it has (or nothing).
    async fn collect(&self) -> Vec<Sample>;
}

/// The increase of cumulative counters from one interval to the next, by
/// key. Call [`Deltas::delta`] for each key an interval has, then
/// [`Deltas::finish`]; a key not seen in an interval is forgotten.
#[derive(Debug)]
pub struct Deltas<K> {
    last: HashMap<K, u64>,
    seen: HashMap<K, u64>,
}

impl<K> Default for Deltas<K> {
    fn default() -> Self {
        Deltas { last: HashMap::new(), seen: HashMap::new() }
    }
}

impl<K: Hash + Eq> Deltas<K> {
    /// How much `key`'s counter grew since the last interval; `None` the
    /// first time the key is seen. A counter that went down was reset (its
    /// process restarted, say), and its value is all growth.
    pub fn delta(&mut self, key: K, value: u64) -> Option<u64> {
        let last = self.last.get(&key).copied();
        self.seen.insert(key, value);
        last.map(|last| if value < last { value } else { value - last })
    }

    /// Ends the interval: what was seen is what the next one compares with.
    pub fn finish(&mut self) {
        self.last = std::mem::take(&mut self.seen);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delta_is_the_growth_since_the_last_interval() {
        let mut deltas = Deltas::default();
        assert_eq!(deltas.delta("a", 10), None, "no earlier value");
        deltas.finish();
        assert_eq!(deltas.delta("a", 25), Some(15));
        deltas.finish();
        assert_eq!(deltas.delta("a", 5), Some(5), "a reset counter");
        deltas.finish();
        deltas.finish();
        assert_eq!(deltas.delta("a", 9), None, "forgotten after an interval without it");
    }
}
