//! Counting the tests that cannot run on this host.
//!
//! A test that needs something this host lacks fails, unless the lack is a
//! known one (a kernel without `sch_netem`, no `/dev/kvm`): then it calls
//! [`skip`] and returns. The skip is printed, and recorded in the file that
//! `HEARTH_SKIP_LOG` names, from which `make test` prints a summary at the
//! end (`skipped: N, because ...`), so that a skip never passes unseen as a
//! pass. With `HEARTH_NO_SKIP` set, a skip is a failure: for a host that
//! should be able to run everything.
//!
//! This file uses nothing but std, so that test crates that do not depend
//! on testkit (the net crate's, which testkit's own dependencies build on)
//! include it with `#[path]` rather than linking the whole API.

use std::io::Write as _;

/// Names the file skips are appended to, one `REASON<TAB>TEST` line each.
pub const SKIP_LOG_ENV: &str = "HEARTH_SKIP_LOG";

/// When set, every skip fails its test instead.
pub const NO_SKIP_ENV: &str = "HEARTH_NO_SKIP";

/// Records that the calling test cannot run here because of `reason`, a
/// capability the host is known to lack, said the same way every time so
/// that the summary groups the tests it stopped. The caller then returns.
///
/// Call it only for a lack that is known and expected on some hosts; any
/// other problem should fail the test.
pub fn skip(reason: &str) {
    let test = std::thread::current().name().unwrap_or("an unnamed test").to_owned();
    assert!(
        std::env::var_os(NO_SKIP_ENV).is_none(),
        "{test} cannot run on this host ({reason}), and {NO_SKIP_ENV} is set"
    );
    eprintln!("SKIPPED {test}: {reason}");
    let Some(path) = std::env::var_os(SKIP_LOG_ENV) else { return };
    let line = format!("{}\t{test}\n", reason.replace(['\t', '\n'], " "));
    // One short write in append mode, so that tests in parallel (threads
    // and test binaries) never interleave their lines.
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| file.write_all(line.as_bytes()));
    if let Err(error) = written {
        panic!("cannot record the skip of {test} in {}: {error}", path.to_string_lossy());
    }
}
