//! The alert engine: rules over store events, log lines and metric
//! samples that notify receivers once per group of alerts.
//!
//! The crate is pure: no I/O, no store, no clock. So far it reads the
//! rules file and what the rules are made of: [`rules`] (the file),
//! [`pattern`] (event patterns and the self-trigger guard), [`logs`] (log
//! windows), [`silence`] and [`template`] (summaries).

use std::collections::BTreeMap;

pub mod logs;
pub mod pattern;
pub mod rules;
pub mod silence;
pub mod template;

pub use pattern::{EventInput, EventKind, Pattern};
pub use rules::Rules;
pub use silence::Silence;

/// Label names to values, sorted.
pub type Labels = BTreeMap<String, String>;

/// The fingerprint of a label set: FNV-1a (64 bits) over the sorted
/// labels, each name and value followed by a 0xff byte (which UTF-8 never
/// holds), as 16 hex digits. Stored state is keyed by it: it must never
/// change.
pub fn fingerprint(labels: &Labels) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (name, value) in labels {
        for part in [name.as_bytes(), value.as_bytes()] {
            for byte in part.iter().chain([&0xffu8]) {
                hash ^= u64::from(*byte);
                hash = hash.wrapping_mul(PRIME);
            }
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_fingerprint_is_the_same_in_every_process_and_version() {
        // Golden values: state stored by one version is read by the next.
        assert_eq!(fingerprint(&Labels::new()), "cbf29ce484222325");
        assert_eq!(fingerprint(&labels(&[("rule", "disk"), ("host", "web-1")])), "4f22035edd3a6c2a");
        // The order labels were written in does not matter; the split between
        // name and value does.
        assert_eq!(
            fingerprint(&labels(&[("host", "web-1"), ("rule", "disk")])),
            fingerprint(&labels(&[("rule", "disk"), ("host", "web-1")]))
        );
        assert_ne!(fingerprint(&labels(&[("ab", "c")])), fingerprint(&labels(&[("a", "bc")])));
    }
}
