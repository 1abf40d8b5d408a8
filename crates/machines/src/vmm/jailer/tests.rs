use std::ffi::OsStr;
use std::path::{Component, Path, PathBuf};

use serde_json::Value;

use super::*;
use crate::vmm::firecracker::{boot_calls, load_call};

fn jailer(cgroup_v2: bool) -> Jailer {
    Jailer {
        binary: "/opt/fc/jailer".into(),
        firecracker: "/opt/fc/firecracker".into(),
        uid: 990,
        gid: 985,
        cgroup_v2,
    }
}

fn config() -> VmConfig {
    VmConfig {
        name: "web".into(),
        dir: "/var/lib/hearth/machines/web".into(),
        kernel: "/var/cache/hearth/kernels/vmlinux-6.1".into(),
        initrd: "/var/cache/hearth/kernels/initrd-6.1.cpio".into(),
        cmdline: "console=ttyS0 reboot=k pci=off hearth.vsock=1024".into(),
        disk: Some("/var/lib/hearth/machines/web/disk.raw".into()),
        disk_base: None,
        cpus: 2,
        memory_mib: 512,
        nics: vec![("ht-web".into(), "52:54:00:00:00:01".into())],
    }
}

fn args(plan: &Plan) -> String {
    plan.args.iter().map(|a| a.to_string_lossy().into_owned()).collect::<Vec<_>>().join(" ")
}

#[test]
fn the_jailer_gets_the_machine_its_user_its_chroot_and_its_limits() {
    let plan = plan(&jailer(true), &config(), &[]);
    assert_eq!(
        args(&plan),
        "--id hearth-web --exec-file /opt/fc/firecracker --uid 990 --gid 985 \
         --chroot-base-dir /var/lib/hearth/machines/web/jail \
         --cgroup-version 2 --parent-cgroup hearth \
         --cgroup memory.max=671088640 --cgroup cpu.max=300000 100000 \
         -- --api-sock /control.sock --log-path /firecracker.log --level Warning"
    );
    // One argument each, spaces and all: the jailer splits on `=` only.
    assert!(plan.args.iter().any(|a| a == OsStr::new("cpu.max=300000 100000")));
    assert_eq!(plan.root, Path::new("/var/lib/hearth/machines/web/jail/firecracker/hearth-web/root"));
    assert_eq!(plan.base, Path::new("/var/lib/hearth/machines/web/jail"));
    assert_eq!(plan.cgroup.as_deref(), Some(Path::new("/sys/fs/cgroup/hearth/hearth-web")));
    assert_eq!((plan.uid, plan.gid), (990, 985));
    assert_eq!(plan.taps, vec!["ht-web".to_owned()]);
}

#[test]
fn on_a_cgroup_v1_host_the_jailer_makes_no_cgroup() {
    let plan = plan(&jailer(false), &config(), &[]);
    let args = args(&plan);
    assert!(args.contains("--cgroup-version 1 --"), "{args}");
    assert!(!args.contains("--cgroup "), "{args}");
    assert_eq!(plan.cgroup, None);
}

#[test]
fn each_file_goes_in_with_the_access_the_vm_needs() {
    let config = config();
    let state = Path::new("/var/lib/hearth/snapshots/s1/state");
    let memory = Path::new("/var/lib/hearth/snapshots/s1/memory");
    let plan = plan(&jailer(true), &config, &snapshot_places(state, memory));
    let places: Vec<(&str, &str, Access)> = plan
        .places
        .iter()
        .map(|p| (p.host.to_str().unwrap_or_default(), p.jailed.to_str().unwrap_or_default(), p.access))
        .collect();
    assert_eq!(
        places,
        vec![
            ("/var/cache/hearth/kernels/vmlinux-6.1", "vmlinux", Access::Read),
            ("/var/cache/hearth/kernels/initrd-6.1.cpio", "initrd", Access::Read),
            ("/var/lib/hearth/machines/web/firecracker.log", "firecracker.log", Access::ReadWrite),
            ("/var/lib/hearth/machines/web/disk.raw", "disk.raw", Access::ReadWrite),
            ("/var/lib/hearth/snapshots/s1/state", "snapshot.state", Access::Read),
            ("/var/lib/hearth/snapshots/s1/memory", "snapshot.mem", Access::Read),
        ]
    );
    // The sockets Firecracker makes in the chroot are reached from the
    // machine directory, where the rest of hearth looks for them.
    let links: Vec<(String, String)> =
        plan.links.iter().map(|(l, t)| (l.display().to_string(), t.display().to_string())).collect();
    assert_eq!(
        links,
        vec![
            (
                "/var/lib/hearth/machines/web/control.sock".to_owned(),
                "jail/firecracker/hearth-web/root/control.sock".to_owned()
            ),
            (
                "/var/lib/hearth/machines/web/agent.vsock".to_owned(),
                "jail/firecracker/hearth-web/root/agent.vsock".to_owned()
            ),
        ]
    );
}

/// `path` as the jailed Firecracker reads it (its working directory is
/// the chroot's root), on the host; None if it would leave the chroot.
fn on_host(root: &Path, path: &str) -> Option<std::path::PathBuf> {
    let mut inside = root.to_owned();
    for component in Path::new(path).components() {
        match component {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(part) => inside.push(part),
            Component::ParentDir | Component::Prefix(_) => return None,
        }
    }
    Some(inside)
}

/// Every string in a call's body that names a file.
fn paths(body: &Value) -> Vec<String> {
    const PATH_FIELDS: [&str; 6] =
        ["kernel_image_path", "initrd_path", "path_on_host", "uds_path", "snapshot_path", "backend_path"];
    let mut found = Vec::new();
    match body {
        Value::Object(fields) => {
            for (key, value) in fields {
                match value {
                    Value::String(path) if PATH_FIELDS.contains(&key.as_str()) => found.push(path.clone()),
                    other => found.extend(paths(other)),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| found.extend(paths(item))),
        _ => {}
    }
    found
}

#[test]
fn every_path_the_vm_config_names_is_in_the_chroot_and_put_there() {
    let config = config();
    let state = Path::new("/var/lib/hearth/snapshots/s1/state");
    let memory = Path::new("/var/lib/hearth/snapshots/s1/memory");
    let plan = plan(&jailer(true), &config, &snapshot_places(state, memory));
    let mut calls = boot_calls(&plan.config);
    calls.push(load_call(Path::new(SNAPSHOT_STATE), Path::new(SNAPSHOT_MEMORY), &[], &[]));
    let named: Vec<String> = calls.iter().flat_map(|call| paths(&call.body)).collect();
    assert_eq!(named.len(), 6, "{named:?}");
    // And what Firecracker is told on its command line.
    let flags: Vec<String> = plan
        .args
        .windows(2)
        .filter(|w| w[0] == OsStr::new("--api-sock") || w[0] == OsStr::new("--log-path"))
        .map(|w| w[1].to_string_lossy().into_owned())
        .collect();
    assert_eq!(flags, ["/control.sock", "/firecracker.log"]);
    // Made by Firecracker itself in the chroot: its two sockets.
    let made = [API_SOCKET, firecracker::VSOCK].map(|s| plan.root.join(s));
    let placed: Vec<_> = plan.places.iter().map(|p| plan.root.join(&p.jailed)).collect();
    for path in named.iter().chain(&flags) {
        let host = on_host(&plan.root, path).unwrap_or_else(|| panic!("{path} leaves the chroot"));
        assert!(host.starts_with(&plan.root), "{path} is outside the chroot");
        assert!(
            placed.contains(&host) || made.contains(&host),
            "{path} names {}, which nothing puts in the chroot",
            host.display()
        );
    }
    // No host path of the machine reaches Firecracker.
    for call in &calls {
        let body = call.body.to_string();
        assert!(!body.contains("/var/"), "{} {} names a host path: {body}", call.method, call.path);
    }
    // The drive and the vsock stay relative, so that a snapshot taken
    // jailed restores unjailed.
    assert!(named.contains(&firecracker::DISK.to_owned()) && named.contains(&firecracker::VSOCK.to_owned()));
}

#[test]
fn ids_fit_the_jailer_and_match_the_process_name_adoption_looks_for() {
    assert_eq!(id("web"), "hearth-web");
    let long = "a".repeat(63);
    let cut = id(&long);
    assert_eq!(cut.len(), 64);
    assert!(cut.starts_with("hearth-aaaa"), "{cut}");
    assert!(cut.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'), "{cut}");
    let other = format!("{}b", "a".repeat(62));
    assert_ne!(id(&other), cut, "two long names share an id");
    assert_eq!(id(&long), cut, "the id is stable");
}

#[test]
fn the_chroot_is_named_after_the_real_firecracker_file_as_the_jailer_names_it() {
    let jailer = Jailer { firecracker: "/opt/fc/firecracker-v1.10.1-x86_64".into(), ..jailer(true) };
    let plan = plan(&jailer, &config(), &[]);
    assert!(args(&plan).contains("--exec-file /opt/fc/firecracker-v1.10.1-x86_64 "), "{}", args(&plan));
    assert_eq!(
        plan.root,
        Path::new("/var/lib/hearth/machines/web/jail/firecracker-v1.10.1-x86_64/hearth-web/root")
    );
    // And a snapshot finds that chroot again, whatever its name.
    let dir = tempfile::tempdir().expect("tempdir");
    assert_eq!(root(dir.path(), "web"), None, "an unjailed machine has no chroot");
    let made = dir.path().join("jail/firecracker-v1.10.1-x86_64/hearth-web/root");
    std::fs::create_dir_all(&made).expect("chroot");
    assert_eq!(root(dir.path(), "web"), Some(made));
}

/// A machine directory with a chroot in it, and a file `snapshot.state`
/// the VMM "wrote" there by `plant`.
fn planted(plant: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("jail/firecracker/hearth-web/root");
    std::fs::create_dir_all(&root).expect("chroot");
    plant(&root.join(SNAPSHOT_STATE));
    (dir, root)
}

#[test]
fn a_snapshot_file_the_vmm_wrote_is_taken_out_private_to_root() {
    use std::os::unix::fs::PermissionsExt;
    let (dir, root) = planted(|path| std::fs::write(path, b"state").expect("write"));
    let to = dir.path().join("snapshots-state");
    let taken = take_out(dir.path(), &root, SNAPSHOT_STATE, &to);
    if nix::unistd::geteuid().is_root() {
        taken.expect("taken out");
        let meta = std::fs::metadata(&to).expect("moved");
        assert_eq!(
            (std::fs::read(&to).expect("read"), meta.permissions().mode() & 0o777),
            (b"state".to_vec(), 0o600)
        );
        assert!(!root.join(SNAPSHOT_STATE).exists() && !dir.path().join(".snapshot.state.taken").exists());
    } else {
        // Only root may give a file to root: the daemon runs jailers as root.
        assert!(matches!(taken, Err(Error::Io { .. })), "{taken:?}");
    }
}

#[test]
fn a_symbolic_link_the_vmm_left_for_a_snapshot_file_is_refused_and_its_target_untouched() {
    use std::os::unix::fs::PermissionsExt;
    let outside = tempfile::NamedTempFile::new().expect("a host file");
    std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o644)).expect("mode");
    let (dir, root) = planted(|path| std::os::unix::fs::symlink(outside.path(), path).expect("symlink"));
    let to = dir.path().join("snapshots-state");
    let err = take_out(dir.path(), &root, SNAPSHOT_STATE, &to).expect_err("a link is refused");
    assert!(err.to_string().contains("symbolic link"), "{err}");
    let mode = std::fs::metadata(outside.path()).expect("still there").permissions().mode() & 0o777;
    assert_eq!(mode, 0o644, "the link's target was changed");
    assert!(!to.exists() && !dir.path().join(".snapshot.state.taken").exists());
}

#[test]
fn a_hard_link_the_vmm_left_for_a_snapshot_file_is_refused() {
    let (dir, root) = planted(|path| {
        std::fs::write(path.with_file_name("disk.raw"), b"disk").expect("disk");
        std::fs::hard_link(path.with_file_name("disk.raw"), path).expect("hard link");
    });
    let to = dir.path().join("snapshots-state");
    let err = take_out(dir.path(), &root, SNAPSHOT_STATE, &to).expect_err("a hard link is refused");
    assert!(err.to_string().contains("hard link"), "{err}");
    assert!(!to.exists());
}
