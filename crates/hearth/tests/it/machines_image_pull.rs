//! An image pulled from an OCI registry becomes a machine: a real
//! `docker-registry` on loopback serves a two-layer busybox image built with
//! umoci; the daemon pulls it with progress, boots it, and runs its tools.

// The registry and test image helpers are shared with the image module's own
// tests, so both drive the same real registry the same way.
use crate::machines_support as support;

use hearth_testkit::{Daemon, failure, success};
use support::{Auth, Registry, TestImage};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

#[tokio::test(flavor = "multi_thread")]
async fn a_pulled_image_boots_with_its_layers_and_config() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:1", &[]);
    let reference = format!("{}/hearth-test:1", registry.host());

    let daemon = Daemon::start(BIN).await;
    let out = success(&daemon.cli(&["image", "pull", &reference]));
    assert!(out.contains(&reference) && out.contains("sha256:"), "{out}");
    let ls = success(&daemon.cli(&["image", "ls"]));
    assert!(ls.contains(&reference), "{ls}");
    let json: serde_json::Value =
        serde_json::from_str(&success(&daemon.cli(&["image", "ls", "--json"]))).expect("json");
    let listed =
        json["images"].as_array().expect("images").iter().find(|i| i["name"] == reference.as_str()).cloned();
    assert_eq!(listed.as_ref().map(|i| i["source"].clone()), Some("registry".into()), "{json}");

    success(&daemon.cli(&["machine", "run", "--name", "bb", &reference]));
    // Layer 2 added a file and whited out one of layer 1's.
    assert_eq!(
        success(&daemon.cli(&["machine", "exec", "bb", "--", "/bin/busybox", "cat", "/etc/added.txt"])),
        "added\n"
    );
    assert_eq!(
        success(&daemon.cli(&["machine", "exec", "bb", "--", "/bin/busybox", "cat", "/etc/kept.txt"])),
        "kept\n"
    );
    let gone = daemon.cli(&["machine", "exec", "bb", "--", "/bin/busybox", "cat", "/etc/removed.txt"]);
    assert_ne!(gone.status.code(), Some(0), "the whiteout was not honoured");
    // The image's environment reaches exec; its entrypoint ran at boot, as
    // the main process.
    assert_eq!(
        success(&daemon.cli(&["machine", "exec", "bb", "--", "/bin/sh", "-c", "echo $HEARTH"])),
        "1\n"
    );
    let m = daemon.client().machine("bb").await.expect("machine");
    assert_eq!(m.entrypoint, vec!["/bin/sh", "-c", "echo hello"]);
    let logs = success(&daemon.cli(&["machine", "logs", "--main", "bb"]));
    assert!(logs.lines().any(|l| l.trim() == "out| hello"), "the entrypoint's output is not logged:\n{logs}");

    // A command given at run replaces the image's, which keeps its working
    // directory and environment; a uid need not be in /etc/passwd.
    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "bb2",
        "--user",
        "1234:5",
        &reference,
        "--",
        "/bin/sh",
        "-c",
        "pwd; echo $HEARTH; /bin/busybox id -u",
    ]));
    let exited = hearth_testkit::wait_until(std::time::Duration::from_secs(60), async || {
        daemon.client().machine("bb2").await.ok().and_then(|m| m.main).is_some_and(|m| m.state == "exited")
    })
    .await;
    let out = success(&daemon.cli(&["machine", "logs", "--main", "bb2"]));
    assert!(exited, "{out}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["out| /etc", "out| 1", "out| 1234"], "{out}");
    success(&daemon.cli(&["machine", "rm", "-f", "bb2"]));

    // An image in use cannot be removed; once unused it can.
    let err = failure(&daemon.cli(&["image", "rm", &reference]));
    assert!(err.contains("machines bb") && err.contains("hint:"), "{err}");
    success(&daemon.cli(&["machine", "rm", "-f", "bb"]));
    success(&daemon.cli(&["image", "rm", &reference]));
    assert!(!success(&daemon.cli(&["image", "ls"])).contains(&reference));

    // A tag the registry does not have.
    let err = failure(&daemon.cli(&["image", "pull", &format!("{}/hearth-test:nope", registry.host())]));
    assert!(err.contains("hint:"), "{err}");
}
