//! Image layers (`hearth_machines::image::unpack::Unpack`): a tar archive,
//! plain, gzip or zstd, applied to a fresh root per input, under a 16 MiB
//! bound on what it unpacks to.
//!
//! The root is `BASE/root`; beside it, `BASE/outside/secret` stands for the
//! host's files. Checks: nothing is created in `BASE` but the root, the
//! secret is unchanged, no file in the root is a hard link to a file outside
//! it, the root holds only directories, regular files and symbolic links
//! (device nodes and FIFOs stay placeholders), none with a set-user-ID or
//! set-group-ID bit or a `security.*`/`trusted.*` attribute, and its files
//! add up to no more than the bound.
#![no_main]

use std::collections::HashMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use hearth_machines::image::unpack::{Limits, Unpack};
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"the host's own file\n";
/// The most a layer may unpack to.
const LIMIT: u64 = 16 << 20;

struct Base {
    /// Removed when the process ends.
    _dir: tempfile::TempDir,
    path: PathBuf,
}

static BASE: LazyLock<Base> = LazyLock::new(|| {
    let dir = tempfile::Builder::new().prefix("hearth-fuzz-layer-").tempdir().expect("a temporary directory");
    let path = dir.path().to_owned();
    fs::create_dir(path.join("outside")).expect("the outside directory");
    fs::write(path.join("outside/secret"), SECRET).expect("the secret");
    fs::set_permissions(path.join("outside/secret"), fs::Permissions::from_mode(0o644)).expect("its mode");
    Base { _dir: dir, path }
});

fuzz_target!(|data: &[u8]| {
    let base = &BASE.path;
    let root = base.join("root");
    fs::create_dir(&root).expect("a fresh root");
    let mut unpack = Unpack::new(&root, Limits { layer_bytes: LIMIT, image_bytes: LIMIT });
    let _ = unpack.layer(data);
    let _ = unpack.finish();

    let mut names: Vec<String> = fs::read_dir(base)
        .expect("the base")
        .map(|e| e.expect("an entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["outside", "root"], "something was created beside the root");
    let outside: Vec<_> = fs::read_dir(base.join("outside")).expect("outside").collect();
    assert_eq!(outside.len(), 1, "something was created outside the root");
    let secret = fs::symlink_metadata(base.join("outside/secret")).expect("the secret is still there");
    assert!(secret.is_file() && secret.nlink() == 1, "the secret was linked to: {secret:?}");
    assert_eq!(secret.mode() & 0o7777, 0o644, "the secret's mode changed");
    assert_eq!(fs::read(base.join("outside/secret")).expect("the secret"), SECRET, "the secret was written");
    check_tree(&root);

    fs::remove_dir_all(&root).expect("the root is removed");
});

/// What the root holds is safe on the host, and within the bound.
fn check_tree(root: &Path) {
    let root_dev = fs::symlink_metadata(root).expect("the root").dev();
    // (device, inode) → (links, links found in the root, a path, size)
    let mut files: HashMap<(u64, u64), (u64, u64, PathBuf, u64)> = HashMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in fs::read_dir(&dir).expect("a directory in the root") {
            let path = entry.expect("an entry").path();
            let meta = fs::symlink_metadata(&path).expect("an entry's metadata");
            let shown = path.display();
            assert_eq!(meta.dev(), root_dev, "{shown} is on another file system");
            let kind = meta.file_type();
            assert!(kind.is_dir() || kind.is_file() || kind.is_symlink(), "{shown} is a {kind:?}");
            if !kind.is_symlink() {
                assert_eq!(meta.mode() & 0o6000, 0, "{shown} has a set-ID bit: {:o}", meta.mode());
            }
            for name in xattr::list(&path).expect("an entry's attributes") {
                let name = name.to_string_lossy();
                assert!(
                    !name.starts_with("security.") && !name.starts_with("trusted."),
                    "{shown} has the attribute {name}"
                );
            }
            if kind.is_dir() {
                stack.push(path);
            } else {
                let seen =
                    files.entry((meta.dev(), meta.ino())).or_insert((meta.nlink(), 0, path.clone(), meta.len()));
                seen.1 += 1;
            }
        }
    }
    let mut total = 0;
    for (nlink, found, path, len) in files.into_values() {
        assert_eq!(nlink, found, "{} has links outside the root", path.display());
        total += len;
    }
    assert!(total <= LIMIT, "the root holds {total} bytes, over the limit of {LIMIT}");
}
