//! Debian images: finding the host's mirror, the defaults a built tree gets,
//! and (ignored by default, it takes minutes) a real debootstrap build.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use hearth_machines::image::{
    DEFAULT_MIRROR, Error, ImageSource, ImageStore, Progress, debian_mirror, prepare_debian_tree,
};

/// Writes `files` (relative to an apt dir) and checks the mirror found.
fn check(files: &[(&str, &str)], expect: &str) {
    let apt = tempfile::tempdir().unwrap();
    fs::create_dir(apt.path().join("sources.list.d")).unwrap();
    for (name, content) in files {
        fs::write(apt.path().join(name), content).unwrap();
    }
    assert_eq!(debian_mirror(apt.path()), expect, "for {files:?}");
}

const BOOKWORM_SOURCES: &str = "\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";

#[test]
fn mirror_comes_from_the_hosts_apt_sources() {
    check(&[], DEFAULT_MIRROR);
    check(&[("sources.list.d/debian.sources", BOOKWORM_SOURCES)], "http://deb.debian.org/debian");
    // Security first, a local mirror second.
    check(
        &[(
            "sources.list.d/debian.sources",
            "Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: trixie-security\n\n\
             Types: deb deb-src\nURIs: https://mirror.example.org/pub/debian/\nSuites: trixie\n",
        )],
        "https://mirror.example.org/pub/debian",
    );
    check(
        &[("sources.list.d/x.sources", "Enabled: no\nTypes: deb\nURIs: http://off.example/debian\n")],
        DEFAULT_MIRROR,
    );
    check(
        &[("sources.list.d/x.sources", "Types: deb-src\nURIs: http://src.example/debian\n")],
        DEFAULT_MIRROR,
    );
    // One-line format, with options, comments and an apt cache proxy.
    check(
        &[(
            "sources.list",
            "# deb http://commented.example/debian bookworm main\n\
             deb [signed-by=/usr/share/keyrings/k.gpg arch=amd64] http://10.0.0.1:3142/deb.debian.org/debian bookworm main\n",
        )],
        "http://10.0.0.1:3142/deb.debian.org/debian",
    );
    check(
        &[("sources.list", "deb http://security.debian.org/debian-security bookworm-security main\n")],
        DEFAULT_MIRROR,
    );
    // Ubuntu's archive cannot debootstrap Debian; nor can a CD-ROM.
    check(
        &[(
            "sources.list",
            "deb http://archive.ubuntu.com/ubuntu noble main\ndeb cdrom:[Debian]/ bookworm main\n",
        )],
        DEFAULT_MIRROR,
    );
    // sources.list comes before sources.list.d; disabled files are ignored.
    check(
        &[
            ("sources.list", "deb http://first.example/debian bookworm main\n"),
            ("sources.list.d/a.sources", "Types: deb\nURIs: http://second.example/debian\n"),
        ],
        "http://first.example/debian",
    );
    check(
        &[("sources.list.d/a.sources.disabled", "Types: deb\nURIs: http://x.example/debian\n")],
        DEFAULT_MIRROR,
    );
}

#[test]
fn a_built_tree_gets_fresh_machine_defaults() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    // What debootstrap leaves: the build host's name and resolver (here a
    // link, as with systemd-resolved), a machine id, downloaded packages.
    for dir in ["etc", "var/cache/apt/archives/partial", "var/lib/dbus", "proc"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    fs::write(root.join("etc/hostname"), "build-host\n").unwrap();
    std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", root.join("etc/resolv.conf"))
        .unwrap();
    fs::write(root.join("etc/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    fs::write(root.join("var/lib/dbus/machine-id"), "0123456789abcdef0123456789abcdef\n").unwrap();
    fs::write(root.join("var/cache/apt/archives/bash_5.2_amd64.deb"), "deb").unwrap();
    fs::write(root.join("var/cache/apt/pkgcache.bin"), "cache").unwrap();
    fs::write(root.join("var/cache/apt/archives/lock"), "").unwrap();
    // openssh-server's host keys, made when it was installed.
    fs::create_dir_all(root.join("etc/ssh")).unwrap();
    for file in ["ssh_host_ed25519_key", "ssh_host_ed25519_key.pub", "sshd_config"] {
        fs::write(root.join("etc/ssh").join(file), "x").unwrap();
    }

    prepare_debian_tree(root).unwrap();

    assert_eq!(
        fs::read_to_string(root.join("etc/machine-id")).unwrap(),
        "",
        "systemd makes one at first boot"
    );
    assert!(!root.join("var/lib/dbus/machine-id").exists());
    assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "localhost\n");
    let resolv = root.join("etc/resolv.conf");
    assert!(fs::symlink_metadata(&resolv).unwrap().is_file(), "the link is replaced by a file");
    assert!(fs::read_to_string(&resolv).unwrap().starts_with("# hearth writes"));
    assert!(fs::read_to_string(root.join("etc/hosts")).unwrap().contains("127.0.0.1\tlocalhost"));
    assert!(!root.join("var/cache/apt/archives/bash_5.2_amd64.deb").exists());
    assert!(!root.join("var/cache/apt/pkgcache.bin").exists());
    assert!(root.join("var/cache/apt/archives/lock").exists(), "only packages and caches go");
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key").exists(), "each machine makes its own");
    assert!(!root.join("etc/ssh/ssh_host_ed25519_key.pub").exists());
    assert!(root.join("etc/ssh/sshd_config").exists());
    for (dir, mode) in [("dev", 0o755), ("sys", 0o555), ("run", 0o755), ("tmp", 0o1777)] {
        assert_eq!(fs::metadata(root.join(dir)).unwrap().permissions().mode() & 0o7777, mode, "{dir}");
    }
    // Idempotent: a second pass changes nothing and does not fail.
    prepare_debian_tree(root).unwrap();
    assert_eq!(fs::read_to_string(root.join("etc/hostname")).unwrap(), "localhost\n");
}

#[test]
fn bad_suite_or_package_names_are_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    for (suite, packages, bad) in [
        ("bookworm; rm -rf /", vec![], "bookworm; rm -rf /"),
        ("Bookworm", vec![], "Bookworm"),
        ("bookworm", vec!["curl".to_owned(), "--foreign".to_owned()], "--foreign"),
        ("bookworm", vec!["a,b".to_owned()], "a,b"),
    ] {
        let error = store.build_debian(suite, &packages, None, &mut |_| {}).unwrap_err();
        assert!(matches!(error, Error::BadDebianName(..)), "{error:?}");
        assert!(error.to_string().starts_with(&format!("`{bad}` is not a valid Debian")), "{error}");
    }
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

/// Builds `debian:bookworm` for real: minutes, and about 40 MB from the
/// Debian mirror, so it is ignored by default. Run it with
/// `cargo test -p hearth-machines --test it -- --ignored image_debian::debootstrap`.
#[test]
#[ignore = "runs debootstrap: minutes and ~40 MB of downloads"]
fn debootstrap_builds_bookworm() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let started = std::time::Instant::now();
    let mut steps = Vec::new();
    let image = store
        .build_debian("bookworm", &["iproute2".to_owned()], None, &mut |p| {
            if let Progress::Building { step } = &p {
                steps.push(step.clone());
            }
        })
        .unwrap();
    let elapsed = started.elapsed();
    let used = std::process::Command::new("du").arg("-k").arg(&image.rootfs).output().unwrap();
    eprintln!(
        "built {} ({}) in {:.0?}: {} MiB file, {} used; {} steps",
        image.name,
        image.digest,
        elapsed,
        image.size_bytes >> 20,
        String::from_utf8_lossy(&used.stdout).split_whitespace().next().unwrap_or("?").to_owned() + " KiB",
        steps.len()
    );
    assert_eq!(image.name, "debian:bookworm");
    assert!(
        matches!(&image.source, ImageSource::Debootstrap { suite, packages, .. } if suite == "bookworm" && packages == &["iproute2"])
    );
    assert!(steps.iter().any(|s| s.contains("Base system installed successfully")), "{steps:?}");
    let debugfs = |request: &str| {
        let out =
            std::process::Command::new("debugfs").arg("-R").arg(request).arg(&image.rootfs).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(debugfs("cat /usr/lib/os-release").contains("bookworm"));
    assert_eq!(debugfs("cat /etc/machine-id"), "");
    assert!(debugfs("stat /usr/bin/ip").contains("Type: regular"), "the extra package is installed");
    assert!(debugfs("ls -l /var/cache/apt/archives").lines().all(|l| !l.contains(".deb")));
    assert_eq!(store.get("debian:bookworm").unwrap().unwrap().digest, image.digest);
    assert!(Path::new(&image.rootfs).exists());
}
