//! Pulling images from a real registry on loopback (Debian's
//! `docker-registry`), with an image each test builds with umoci and pushes
//! with skopeo, and checking the ext4 file that comes out with debugfs.

use crate::support;

use crate::support::{Auth, Events, PASSWORD, Registry, TestImage, USER, ext4_cat, ext4_stat};
use hearth_machines::image::{Credentials, Error, ImageSource, ImageStore, Progress};

#[test]
fn pull_unpacks_layers_in_order_and_caches_by_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:test", &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let reference = format!("{}/hearth-test:test", registry.host());

    let mut events = Events::default();
    let pulled = store.pull(&reference, None, &mut events.sink()).unwrap();
    assert_eq!(pulled.name, reference);
    assert!(pulled.digest.starts_with("sha256:") && pulled.digest.len() == 71, "{}", pulled.digest);
    assert_eq!(
        pulled.source,
        ImageSource::Registry { reference: format!("{}/hearth-test:test", registry.host()) }
    );
    assert_eq!(pulled.config.entrypoint, ["/bin/sh"]);
    assert_eq!(pulled.config.cmd, ["-c", "echo hello"]);
    assert!(pulled.config.env.iter().any(|e| e == "HEARTH=1"), "{:?}", pulled.config.env);
    assert_eq!(pulled.config.working_dir.as_deref(), Some("/etc"));
    assert_eq!(pulled.size_bytes, std::fs::metadata(&pulled.rootfs).unwrap().len());
    // Content (~1 MiB) * 1.2 + 256 MiB of headroom, in whole MiB.
    assert!((256 << 20..300 << 20).contains(&pulled.size_bytes), "{}", pulled.size_bytes);
    // Config and two layers downloaded; then both layers unpacked in order.
    let blobs: std::collections::HashSet<_> = events
        .0
        .iter()
        .filter_map(|p| match p {
            Progress::Downloading { digest, .. } => Some(digest.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(blobs.len(), 3, "{:?}", events.0);
    let unpacking: Vec<_> = events.0.iter().filter(|p| matches!(p, Progress::Unpacking { .. })).collect();
    assert_eq!(
        unpacking,
        [&Progress::Unpacking { layer: 1, layers: 2 }, &Progress::Unpacking { layer: 2, layers: 2 }]
    );
    assert!(matches!(events.0.first(), Some(Progress::Resolving { .. })));
    assert_eq!(events.0.last(), Some(&Progress::Done));

    // The ext4 file holds the merged layers.
    let rootfs = &pulled.rootfs;
    assert_eq!(ext4_cat(rootfs, "/etc/added.txt").as_deref(), Some("added\n"));
    assert_eq!(ext4_cat(rootfs, "/etc/kept.txt").as_deref(), Some("kept\n"));
    assert_eq!(ext4_stat(rootfs, "/etc/removed.txt"), None, "the whiteout in layer 2 removes it");
    let busybox = ext4_stat(rootfs, "/bin/busybox").expect("busybox is there");
    assert!(busybox.contains("Type: regular") && busybox.contains("Mode:  0755"), "{busybox}");
    let sh = ext4_stat(rootfs, "/bin/sh").expect("sh is there");
    assert!(sh.contains("Type: symlink") && sh.contains("\"busybox\""), "{sh}");
    let tmp = ext4_stat(rootfs, "/tmp").expect("mount points are made");
    assert!(tmp.contains("Mode:  01777"), "{tmp}");
    let root = ext4_stat(rootfs, "/").unwrap();
    assert!(root.contains("Mode:  0755"), "{root}");

    // Pulling again asks for the manifest only: no blob is downloaded.
    let gets = registry.blob_gets();
    let mut again = Events::default();
    let cached = store.pull(&reference, None, &mut again.sink()).unwrap();
    assert_eq!(cached, pulled);
    assert_eq!(again.downloads(), 0, "{:?}", again.0);
    assert_eq!(registry.blob_gets(), gets);

    // Pinned to the digest, the store answers without asking the registry.
    let pinned = format!("{}/hearth-test@{}", registry.host(), pulled.digest);
    let by_digest = store.pull(&pinned, None, &mut |_| {}).unwrap();
    assert_eq!(by_digest.digest, pulled.digest);
    assert_eq!(by_digest.name, pinned);

    // A fresh store pulls by digest from the registry, to the same image.
    let other = tempfile::tempdir().unwrap();
    let other = ImageStore::open(other.path()).unwrap();
    let mut fresh = Events::default();
    let from_registry = other.pull(&pinned, None, &mut fresh.sink()).unwrap();
    assert_eq!(from_registry.digest, pulled.digest);
    assert!(fresh.downloads() > 0);
    assert_eq!(ext4_cat(&from_registry.rootfs, "/etc/added.txt").as_deref(), Some("added\n"));

    // Nothing is left in the staging area.
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn pull_reads_zstd_layers_and_docker_v2_manifests() {
    // Two registries: given one, skopeo reuses the blobs it pushed before
    // instead of compressing anew.
    let registry = Registry::start(Auth::Anonymous);
    let docker = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push_from(
        &image.uncompressed(),
        &registry,
        "hearth-test:zstd",
        &["--dest-compress-format", "zstd"],
    );
    image.push(&docker, "hearth-test:v2s2", &["--format", "v2s2"]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();

    let manifest = support::run(std::process::Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{}/hearth-test:zstd", registry.host()),
    ]));
    assert!(manifest.contains("tar+zstd"), "skopeo compressed with zstd: {manifest}");

    let zstd = store.pull(&format!("{}/hearth-test:zstd", registry.host()), None, &mut |_| {}).unwrap();
    assert_eq!(ext4_cat(&zstd.rootfs, "/etc/added.txt").as_deref(), Some("added\n"));
    assert_eq!(ext4_stat(&zstd.rootfs, "/etc/removed.txt"), None);

    let v2 = store.pull(&format!("{}/hearth-test:v2s2", docker.host()), None, &mut |_| {}).unwrap();
    assert_ne!(v2.digest, zstd.digest, "different manifests are different images");
    assert_eq!(v2.config.entrypoint, ["/bin/sh"]);
    assert_eq!(ext4_cat(&v2.rootfs, "/etc/added.txt").as_deref(), Some("added\n"));
    assert_eq!(ext4_stat(&v2.rootfs, "/etc/removed.txt"), None);
}

/// Issue 13, item 7: a layer that unpacks past the limit fails the pull
/// with an error naming the layer and the limit.
#[test]
fn a_layer_over_the_unpacking_limit_fails_the_pull() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:big", &[]);
    let dir = tempfile::tempdir().unwrap();
    let limits = hearth_machines::image::unpack::Limits { layer_bytes: 64 << 10, image_bytes: 1 << 30 };
    let store = ImageStore::open(dir.path()).unwrap().with_limits(limits);
    let reference = format!("{}/hearth-test:big", registry.host());
    let error = store.pull(&reference, None, &mut |_| {}).unwrap_err();
    assert_eq!(error.code(), "image_too_large");
    let message = hearth_machines::chain(&error);
    assert!(
        message.contains("cannot unpack layer sha256:") && message.contains("more than 64 KiB"),
        "{message}"
    );
    assert_eq!(std::fs::read_dir(dir.path().join("images")).unwrap().count(), 0);
}

#[test]
fn unknown_tag_or_repository_is_not_found() {
    let registry = Registry::start(Auth::Anonymous);
    TestImage::build().push(&registry, "hearth-test:test", &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    for reference in ["hearth-test:nope", "no-such-repo:test"] {
        let reference = format!("{}/{reference}", registry.host());
        let error = store.pull(&reference, None, &mut |_| {}).unwrap_err();
        assert!(matches!(error, Error::NotFound { .. }), "{error:?}");
        let message = error.to_string();
        assert!(message.contains(&reference) && message.contains("was not found"), "{message}");
        assert!(message.contains("check the repository name and tag"), "{message}");
        assert_eq!(error.code(), "not_found");
    }
    assert!(store.list().unwrap().is_empty(), "a failed pull leaves no image");
}

#[test]
fn registry_not_running_is_a_connect_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let port = support::free_port();
    let error = store.pull(&format!("127.0.0.1:{port}/hearth-test:test"), None, &mut |_| {}).unwrap_err();
    assert!(matches!(error, Error::Unreachable { .. }), "{error:?}");
    let message = error.to_string();
    assert_eq!(
        message,
        format!(
            "cannot connect to the registry at http://127.0.0.1:{port}; check that it is running and reachable"
        )
    );
    assert!(std::error::Error::source(&error).is_some(), "the cause is kept as the source");
}

#[test]
fn basic_auth_rejects_wrong_credentials_and_accepts_right_ones() {
    let registry = Registry::start(Auth::Htpasswd);
    TestImage::build().push(&registry, "hearth-test:test", &[]);
    check_credentials(&registry, "requires a user name and password", "rejected the credentials of `hearth`");
}

#[test]
fn bearer_token_auth_rejects_wrong_credentials_and_accepts_right_ones() {
    let registry = Registry::start(Auth::Token);
    TestImage::build().push(&registry, "hearth-test:test", &[]);
    let pushed = registry.token_requests();
    check_credentials(&registry, "refused an anonymous token", "rejected the credentials of `hearth`");
    // Anonymous, wrong, right: each asked the token service once.
    assert_eq!(registry.token_requests() - pushed, 3);
}

/// Anonymous and wrong pulls fail with `Unauthorized` and the given
/// reasons; the right credentials pull the image.
fn check_credentials(registry: &Registry, anonymous: &str, wrong: &str) {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let reference = format!("{}/hearth-test:test", registry.host());

    let error = store.pull(&reference, None, &mut |_| {}).unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    assert!(error.to_string().contains(anonymous), "{error}");

    let bad = Credentials { username: USER.to_owned(), password: "wrong".to_owned() };
    let error = store.pull(&reference, Some(&bad), &mut |_| {}).unwrap_err();
    assert!(matches!(error, Error::Unauthorized { .. }), "{error:?}");
    let message = error.to_string();
    assert!(message.contains(wrong) && message.contains("check the user name and password"), "{message}");
    assert!(!message.contains("wrong"), "the password is never shown: {message}");
    assert_eq!(error.code(), "registry_unauthorized");

    let good = Credentials { username: USER.to_owned(), password: PASSWORD.to_owned() };
    let image = store.pull(&reference, Some(&good), &mut |_| {}).unwrap();
    assert_eq!(ext4_cat(&image.rootfs, "/etc/added.txt").as_deref(), Some("added\n"));
}
