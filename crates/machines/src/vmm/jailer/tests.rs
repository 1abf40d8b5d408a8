use std::ffi::OsStr;
use std::path::{Component, Path};

use serde_json::Value;

use super::*;
use crate::vmm::firecracker::{boot_calls, load_call};

fn jailer(cgroup_v2: bool) -> Jailer {
    Jailer { binary: "/opt/fc/jailer".into(), uid: 990, gid: 985, cgroup_v2 }
}

fn config() -> VmConfig {
    VmConfig {
        name: "web".into(),
        dir: "/var/lib/hearth/machines/web".into(),
        kernel: "/var/cache/hearth/kernels/vmlinux-6.1".into(),
        initrd: "/var/cache/hearth/kernels/initrd-6.1.cpio".into(),
        cmdline: "console=ttyS0 reboot=k pci=off hearth.vsock=1024".into(),
        disk: Some("/var/lib/hearth/machines/web/disk.raw".into()),
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
    let plan = plan(&jailer(true), Path::new("/opt/fc/firecracker"), &config(), &[]);
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
    let plan = plan(&jailer(false), Path::new("/opt/fc/firecracker"), &config(), &[]);
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
    let plan =
        plan(&jailer(true), Path::new("/opt/fc/firecracker"), &config, &snapshot_places(state, memory));
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
    let plan =
        plan(&jailer(true), Path::new("/opt/fc/firecracker"), &config, &snapshot_places(state, memory));
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
