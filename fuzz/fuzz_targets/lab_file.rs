//! Lab files (`hearth lab up FILE`): the parser of the `hearth` binary,
//! compiled here from its source file, since the binary has no library.
//!
//! Checks: a lab that parses has unique machine names, groups within the
//! limit, and its `setup` and `ready` templates render without panic.
#![no_main]

use std::collections::{HashMap, HashSet};

use libfuzzer_sys::fuzz_target;

#[allow(dead_code, unreachable_pub)]
#[path = "../../crates/hearth/src/cmd/lab/file.rs"]
mod file;

fuzz_target!(|data: &[u8]| {
    let Ok(source) = std::str::from_utf8(data) else { return };
    let lab = match file::parse("lab.toml", source, None, "fuzz") {
        Ok(lab) => lab,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let mut names = HashSet::new();
    for machine in &lab.machines {
        assert!(names.insert(machine.name.as_str()), "machine {:?} twice", machine.name);
        assert!((1..=64).contains(&machine.index), "index {} of {:?}", machine.index, machine.name);
        let ips: HashMap<String, String> = HashMap::new();
        let vars = lab.vars(machine, &ips);
        for template in [&machine.setup, &machine.ready].into_iter().flatten() {
            let _ = file::render(template, |name| vars.get(name).cloned());
        }
    }
});
