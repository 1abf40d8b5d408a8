//! The image store: names and digests, list/get/remove, images no name
//! points to, concurrent pulls, and what a crash leaves behind. Images come
//! from a real registry on loopback.

use crate::support;

use std::process::Command;

use crate::support::{Auth, Registry, TestImage};
use hearth_machines::image::{Error, ImageStore};

#[test]
fn list_get_and_remove_by_name_and_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:test", &[]);
    image.push(&registry, "hearth-test:latest", &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let host = registry.host();
    let test = store.pull(&format!("{host}/hearth-test:test"), None, &mut |_| {}).unwrap();
    let latest = store.pull(&format!("{host}/hearth-test"), None, &mut |_| {}).unwrap();
    assert_eq!(test.digest, latest.digest, "one image under two names");
    assert_eq!(latest.name, format!("{host}/hearth-test:latest"));
    assert_eq!(test.rootfs, latest.rootfs);

    let names: Vec<_> = store.list().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, [format!("{host}/hearth-test:latest"), format!("{host}/hearth-test:test")]);

    let hex = test.digest.strip_prefix("sha256:").unwrap();
    let get = |s: &str| store.get(s).unwrap().map(|i| (i.name, i.digest));
    let found = Some((latest.name.clone(), test.digest.clone()));
    assert_eq!(get(&format!("{host}/hearth-test")), found, "no tag means latest");
    assert_eq!(get(&format!("{host}/hearth-test:latest")), found);
    assert_eq!(get(&test.digest), found, "by digest, named by its first name");
    assert_eq!(get(&hex[..12]), found, "by a 12-digit prefix");
    assert_eq!(get(&format!("sha256:{}", &hex[..20])), found);
    assert_eq!(get(&format!("{host}/hearth-test@{}", test.digest)), found);
    assert_eq!(get(&hex[..11]), None, "11 digits are a repository name, not a prefix");
    assert_eq!(get(&format!("{host}/hearth-test:nope")), None);
    assert_eq!(get("sha256:000000000000"), None);
    let error = store.get("sha256:abc").unwrap_err();
    assert!(error.to_string().contains("12 to 64 lowercase hex digits"), "{error}");
    let error = store.get("Not A Reference").unwrap_err();
    assert!(matches!(error, Error::BadReference { .. }), "{error:?}");

    // Removing one of two names keeps the image.
    let removed = store.remove(&format!("{host}/hearth-test:test")).unwrap();
    assert_eq!(removed.name, format!("{host}/hearth-test:test"));
    assert!(test.rootfs.exists());
    assert_eq!(store.list().unwrap().len(), 1);
    let error = store.remove(&format!("{host}/hearth-test:test")).unwrap_err();
    assert!(matches!(error, Error::UnknownImage(_)), "{error:?}");
    assert_eq!(error.code(), "not_found");

    // Removing by digest removes the image, its names, and its blobs.
    let removed = store.remove(&hex[..12]).unwrap();
    assert_eq!(removed.digest, test.digest);
    assert!(!test.rootfs.exists());
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.get(&format!("{host}/hearth-test")).unwrap(), None);
    assert_eq!(std::fs::read_dir(dir.path().join("blobs/sha256")).unwrap().count(), 0, "blobs are collected");
    assert_eq!(std::fs::read_dir(dir.path().join("images")).unwrap().count(), 0);
}

#[test]
fn removing_an_unknown_image_says_how_to_find_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let error = store.remove("nothing").unwrap_err();
    assert_eq!(
        error.to_string(),
        "no image is named `nothing` or has that digest; `hearth image ls` lists the images, `hearth image pull` fetches one"
    );
    let error = store.remove("").unwrap_err();
    assert!(matches!(error, Error::BadReference { .. }), "{error:?}");
}

#[test]
fn a_moved_tag_leaves_the_old_image_listed_by_digest() {
    let registry = Registry::start(Auth::Anonymous);
    let image = TestImage::build();
    image.push(&registry, "hearth-test:test", &[]);
    let dir = tempfile::tempdir().unwrap();
    let store = ImageStore::open(dir.path()).unwrap();
    let reference = format!("{}/hearth-test:test", registry.host());
    let old = store.pull(&reference, None, &mut |_| {}).unwrap();
    // The same files in a Docker v2 manifest: another digest for the tag.
    image.push(&registry, "hearth-test:test", &["--format", "v2s2"]);
    let new = store.pull(&reference, None, &mut |_| {}).unwrap();
    assert_ne!(old.digest, new.digest);

    let listed: Vec<_> = store.list().unwrap().into_iter().map(|i| (i.name, i.digest)).collect();
    let unnamed = format!("{}/hearth-test@{}", registry.host(), old.digest);
    assert_eq!(listed, [(reference.clone(), new.digest.clone()), (unnamed.clone(), old.digest.clone())]);
    assert_eq!(store.get(&reference).unwrap().unwrap().digest, new.digest);
    assert_eq!(store.get(&unnamed).unwrap().unwrap().digest, old.digest);

    store.remove(&unnamed).unwrap();
    assert!(!old.rootfs.exists() && new.rootfs.exists());
    assert_eq!(store.list().unwrap().len(), 1);
}

#[test]
fn concurrent_pulls_of_one_image_make_it_once() {
    let registry = Registry::start(Auth::Anonymous);
    TestImage::build().push(&registry, "hearth-test:test", &[]);
    let dir = tempfile::tempdir().unwrap();
    let reference = format!("{}/hearth-test:test", registry.host());
    let digests: Vec<String> = std::thread::scope(|s| {
        let pulls: Vec<_> = (0..3)
            .map(|_| {
                s.spawn(|| {
                    // Separate handles, as separate processes would have.
                    let store = ImageStore::open(dir.path()).unwrap();
                    store.pull(&reference, None, &mut |_| {}).unwrap().digest
                })
            })
            .collect();
        pulls.into_iter().map(|p| p.join().unwrap()).collect()
    });
    assert!(digests.iter().all(|d| *d == digests[0]), "{digests:?}");
    let store = ImageStore::open(dir.path()).unwrap();
    assert_eq!(store.list().unwrap().len(), 1);
    assert_eq!(std::fs::read_dir(dir.path().join("images")).unwrap().count(), 1);
    assert_eq!(std::fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn open_clears_what_an_interrupted_operation_left() {
    let dir = tempfile::tempdir().unwrap();
    ImageStore::open(dir.path()).unwrap();
    let tmp = dir.path().join("tmp");
    // A crashed pull: its staging tree and its (unheld) lock, an hour old.
    std::fs::create_dir_all(tmp.join("pull-1/rootfs/etc")).unwrap();
    std::fs::write(tmp.join("pull-1.lock"), "").unwrap();
    std::fs::write(tmp.join("blob-1"), "partial").unwrap();
    // A pull in progress elsewhere: its lock is held.
    std::fs::create_dir_all(tmp.join("pull-2")).unwrap();
    let held = std::fs::File::create(tmp.join("pull-2.lock")).unwrap();
    held.lock().unwrap();
    for name in ["pull-1", "pull-1.lock", "blob-1", "pull-2", "pull-2.lock"] {
        support::run(Command::new("touch").args(["-h", "-d", "1 hour ago"]).arg(tmp.join(name)));
    }
    // A download that just started, younger than any crash.
    std::fs::write(tmp.join("blob-2"), "partial").unwrap();

    ImageStore::open(dir.path()).unwrap();
    let mut left: Vec<_> =
        std::fs::read_dir(&tmp).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    left.sort();
    assert_eq!(left, ["blob-2", "pull-2", "pull-2.lock"]);
}

/// Issue 13, item 7: layers are unpacked as root under `tmp/`, so it is
/// private even when the cache directory is shared.
#[test]
fn the_staging_directory_is_private_in_a_shared_cache() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755)).unwrap();
    ImageStore::open(dir.path()).unwrap();
    assert_eq!(std::fs::metadata(&tmp).unwrap().permissions().mode() & 0o7777, 0o700);
}
