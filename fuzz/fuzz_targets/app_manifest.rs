//! `hearth.toml`, an app's manifest (`hearth_apps::manifest::Manifest::parse`),
//! with its triggers and outbound allow-list.
//!
//! Checks: a manifest that parses keeps parsing the same after a round trip
//! through TOML, and its limits resolve against the daemon's without panic.
#![no_main]

use hearth_apps::manifest::{Limits, Manifest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(manifest) = Manifest::parse(text) else { return };
    if let Ok(limits) = manifest.limits(Limits::DEFAULT, Limits::CEILING) {
        assert!(limits.memory_bytes <= Limits::CEILING.memory_bytes);
        assert!(limits.cpu_ms <= Limits::CEILING.cpu_ms);
        assert!(limits.timeout_ms <= Limits::CEILING.timeout_ms);
    }
    let _ = manifest.triggers();
    // Config values are kept as strings, so the round trip is taken from
    // what the manifest holds, not from the input.
    let written = toml::to_string(&manifest).expect("a parsed manifest serialises");
    let again = Manifest::parse(&written)
        .unwrap_or_else(|e| panic!("a manifest that parsed does not parse once written: {e}\n{written}"));
    assert_eq!(again, manifest);
});
