//! Disk sizes: `machine run --disk-size` gives the machine a root disk of
//! that size, the guest's root file system grows to fill it at boot, and
//! the size outlives a stop and start and a snapshot and restore. Sizes
//! smaller than the image, or not sizes at all, are refused and leave
//! nothing behind.

use hearth_testkit::{Daemon, failure, success};

const BIN: &str = env!("CARGO_BIN_EXE_hearth");

/// The size of the machine's root file system in MiB, as `df` in it says.
fn root_mib(daemon: &Daemon, machine: &str) -> u64 {
    let out = success(&daemon.cli(&["machine", "exec", machine, "--", "df", "-m", "--output=size", "/"]));
    out.lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("df printed no size: {out:?}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_larger_disk_grows_the_root_file_system_and_keeps_its_size() {
    let daemon = Daemon::start(BIN).await;
    let image = daemon.ensure_debian_image().await;
    let image_mib = daemon.client().image(&image).await.expect("image").size_bytes >> 20;
    assert!(image_mib < 1024, "the test image is {image_mib} MiB; this test wants one under 1 GiB");

    // Too small, or not a size: refused, with what to do, and nothing made.
    let err = failure(&daemon.cli(&["machine", "run", "--name", "small", "--disk-size", "64M", &image]));
    assert!(err.contains("64 MiB disk is smaller than image"), "{err}");
    assert!(err.contains(&format!("hint: give --disk-size {image_mib}M or more")), "{err}");
    let err = failure(&daemon.cli(&["machine", "run", "--name", "small", "--disk-size", "lots", &image]));
    assert!(err.contains("\"lots\" is not a size like 4G or 512M"), "{err}");
    assert!(daemon.client().machines().await.expect("list").machines.is_empty());

    // The default stays the image's size.
    success(&daemon.cli(&["machine", "run", "--name", "plain", "--memory", "256M", &image]));
    let plain = root_mib(&daemon, "plain");
    assert!(plain <= image_mib, "{plain} MiB on a {image_mib} MiB image");
    success(&daemon.cli(&["machine", "rm", "-f", "plain"]));

    success(&daemon.cli(&[
        "machine",
        "run",
        "--name",
        "big",
        "--memory",
        "256M",
        "--disk-size",
        "2G",
        &image,
    ]));
    let grown = root_mib(&daemon, "big");
    assert!(grown > 1900 && grown <= 2048, "the root file system is {grown} MiB on a 2 GiB disk");
    let inspect = success(&daemon.cli(&["machine", "inspect", "big"]));
    assert!(inspect.contains("disk        2048 MiB"), "{inspect}");
    assert_eq!(daemon.client().machine("big").await.expect("machine").disk_mib, Some(2048));
    let logs = success(&daemon.cli(&["machine", "logs", "big"]));
    assert!(logs.contains("grew the root file system"), "{logs}");
    // The room is real: ext4 gives a file larger than the image its blocks.
    success(&daemon.cli(&["machine", "exec", "big", "--", "fallocate", "-l", "1200M", "/root/big"]));
    success(&daemon.cli(&["machine", "exec", "big", "--", "rm", "/root/big"]));

    // Stop and start keep the disk, grown.
    success(&daemon.cli(&["machine", "stop", "big"]));
    success(&daemon.cli(&["machine", "start", "big"]));
    assert_eq!(root_mib(&daemon, "big"), grown);

    // A restored snapshot has the same disk.
    success(&daemon.cli(&["machine", "snapshot", "big", "big-snap"]));
    success(&daemon.cli(&["machine", "restore", "big-snap", "--name", "big2"]));
    assert_eq!(daemon.client().machine("big2").await.expect("machine").disk_mib, Some(2048));
    assert_eq!(root_mib(&daemon, "big2"), grown);

    for name in ["big", "big2"] {
        success(&daemon.cli(&["machine", "rm", "-f", name]));
    }
    success(&daemon.cli(&["snapshot", "rm", "big-snap"]));
    assert!(daemon.vm_pids().is_empty());
}
