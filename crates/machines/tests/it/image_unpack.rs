//! Applying layers: whiteouts, opaque directories, replacements, links,
//! ownership, compression, and entries that try to leave the root. Each
//! layer is a tar archive built here.

use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::Path;

use hearth_machines::image::Error;
use hearth_machines::image::unpack::unpack_layer;

/// One entry of a test layer.
enum E<'a> {
    Dir(&'a str),
    File(&'a str, &'a str),
    /// A file with mode, uid and gid.
    Owned(&'a str, u32, u64, u64),
    Symlink(&'a str, &'a str),
    Hardlink(&'a str, &'a str),
    CharDevice(&'a str, u32, u32),
    /// A file whose name is written as is, bypassing the tar crate's checks.
    RawName(&'a [u8]),
}

fn layer(entries: &[E<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        header.set_mtime(1_700_000_000);
        header.set_uid(0);
        header.set_gid(0);
        let (path, data): (&str, &[u8]) = match entry {
            E::Dir(path) => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_mode(0o755);
                (path, b"")
            }
            E::File(path, content) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                (path, content.as_bytes())
            }
            E::Owned(path, mode, uid, gid) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(*mode);
                header.set_uid(*uid);
                header.set_gid(*gid);
                (path, b"owned")
            }
            E::Symlink(path, target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                header.set_mode(0o777);
                header.set_link_name(target).unwrap();
                (path, b"")
            }
            E::Hardlink(path, target) => {
                header.set_entry_type(tar::EntryType::Link);
                header.set_mode(0o644);
                header.set_link_name(target).unwrap();
                (path, b"")
            }
            E::CharDevice(path, major, minor) => {
                header.set_entry_type(tar::EntryType::Char);
                header.set_mode(0o666);
                header.set_device_major(*major).unwrap();
                header.set_device_minor(*minor).unwrap();
                (path, b"")
            }
            E::RawName(name) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_mode(0o644);
                header.as_old_mut().name[..name.len()].copy_from_slice(name);
                header.set_size(4);
                header.set_cksum();
                builder.append(&header, &b"evil"[..]).unwrap();
                continue;
            }
        };
        header.set_size(data.len() as u64);
        builder.append_data(&mut header, path, data).unwrap();
    }
    builder.into_inner().unwrap()
}

fn apply(root: &Path, entries: &[E<'_>]) -> Result<(), Error> {
    unpack_layer(root, &layer(entries)[..]).map(|_| ())
}

/// Everything under `root` as sorted `path` lines (`path/` for directories,
/// `path -> target` for symbolic links).
fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            if meta.file_type().is_symlink() {
                out.push(format!("{name} -> {}", fs::read_link(&path).unwrap().display()));
            } else if meta.is_dir() {
                out.push(format!("{name}/"));
                todo.push(path);
            } else {
                out.push(name);
            }
        }
    }
    out.sort();
    out
}

#[test]
fn whiteout_removes_a_lower_file_or_directory() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(
        root,
        &[E::Dir("etc"), E::File("etc/a", "a"), E::File("etc/b", "b"), E::Dir("var"), E::File("var/x", "x")],
    )
    .unwrap();
    apply(root, &[E::File("etc/.wh.a", ""), E::File(".wh.var", ""), E::File(".wh.missing", "")]).unwrap();
    assert_eq!(tree(root), ["etc/", "etc/b"]);
}

#[test]
fn opaque_directory_hides_lower_entries_but_keeps_its_own_layer() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(
        root,
        &[
            E::Dir("d"),
            E::File("d/old", "o"),
            E::Dir("d/sub"),
            E::File("d/sub/old", "o"),
            E::File("keep", "k"),
        ],
    )
    .unwrap();
    // The marker comes between this layer's entries, as tools may order it.
    apply(
        root,
        &[
            E::Dir("d"),
            E::File("d/new1", "1"),
            E::File("d/sub/new", "n"),
            E::File("d/.wh..wh..opq", ""),
            E::File("d/new2", "2"),
        ],
    )
    .unwrap();
    assert_eq!(tree(root), ["d/", "d/new1", "d/new2", "d/sub/", "d/sub/new", "keep"]);
}

#[test]
fn entries_replace_what_is_below_unless_both_are_directories() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(
        root,
        &[
            E::File("a", "file"),
            E::Dir("b"),
            E::File("b/inner", "i"),
            E::Dir("c"),
            E::File("c/x", "x"),
            E::Symlink("l", "a"),
        ],
    )
    .unwrap();
    apply(
        root,
        &[
            E::Dir("a"),
            E::File("a/child", "c"),
            E::File("b", "now a file"),
            E::Dir("c"),
            E::File("c/y", "y"),
            E::File("l", "not a link"),
        ],
    )
    .unwrap();
    assert_eq!(tree(root), ["a/", "a/child", "b", "c/", "c/x", "c/y", "l"]);
    assert_eq!(fs::read_to_string(root.join("b")).unwrap(), "now a file");
    assert_eq!(fs::read_to_string(root.join("l")).unwrap(), "not a link");
}

#[test]
fn hard_links_share_the_inode_within_and_across_layers() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(root, &[E::Dir("bin"), E::File("bin/tool", "#!/bin/true")]).unwrap();
    apply(
        root,
        &[
            E::Hardlink("bin/alias", "bin/tool"),
            E::File("bin/new", "n"),
            E::Hardlink("bin/new2", "./bin/new"),
        ],
    )
    .unwrap();
    let ino = |p: &str| fs::metadata(root.join(p)).unwrap().ino();
    assert_eq!(ino("bin/alias"), ino("bin/tool"));
    assert_eq!(ino("bin/new2"), ino("bin/new"));
    assert_eq!(fs::metadata(root.join("bin/tool")).unwrap().nlink(), 2);
}

#[test]
fn ownership_modes_and_device_nodes_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(root, &[E::Owned("suid", 0o4755, 1000, 1001), E::Dir("dev"), E::CharDevice("dev/null", 1, 3)])
        .unwrap();
    let meta = fs::metadata(root.join("suid")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755, "the set-uid bit survives the chown");
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
        let null = fs::metadata(root.join("dev/null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), nix::sys::stat::makedev(1, 3));
    }
    assert_eq!(
        fs::metadata(root.join("dev")).unwrap().mtime(),
        1_700_000_000,
        "directory times are set last"
    );
}

#[test]
fn entries_climbing_out_with_dotdot_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    let error = apply(&root, &[E::RawName(b"a/../../evil")]).unwrap_err();
    assert!(matches!(error, Error::UnsafeEntry { .. }), "{error:?}");
    assert_eq!(
        error.to_string(),
        "the layer entry `a/../../evil` climbs out of the root with `..`; the image is malformed or malicious"
    );
    assert!(!outer.path().join("evil").exists());
    // `..` that stays inside is only a detour.
    apply(&root, &[E::RawName(b"a/../inside")]).unwrap();
    assert_eq!(tree(&root), ["inside"]);
}

#[test]
fn symbolic_links_on_the_way_resolve_inside_the_root() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir(outer.path().join("outside")).unwrap();
    apply(
        &root,
        &[
            E::Symlink("abs", "/outside"),
            E::Symlink("rel", "../../outside"),
            E::Symlink("var-run", "/run"),
            E::Dir("run"),
        ],
    )
    .unwrap();
    apply(&root, &[E::File("abs/one", "1"), E::File("rel/two", "2"), E::File("var-run/pid", "3")]).unwrap();
    assert!(fs::read_dir(outer.path().join("outside")).unwrap().next().is_none(), "nothing escaped");
    assert_eq!(fs::read_to_string(root.join("outside/one")).unwrap(), "1");
    assert_eq!(fs::read_to_string(root.join("outside/two")).unwrap(), "2");
    assert_eq!(fs::read_to_string(root.join("run/pid")).unwrap(), "3");
    // A whiteout through a link also stays inside.
    fs::write(outer.path().join("outside/victim"), "v").unwrap();
    apply(&root, &[E::File("abs/.wh.victim", "")]).unwrap();
    assert!(outer.path().join("outside/victim").exists());
    // The last component is replaced, never followed.
    apply(&root, &[E::File("abs", "replaced")]).unwrap();
    assert_eq!(fs::read_to_string(root.join("abs")).unwrap(), "replaced");
}

#[test]
fn hard_links_to_outside_or_to_nothing_are_refused() {
    let outer = tempfile::tempdir().unwrap();
    let root = outer.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::write(outer.path().join("secret"), "s").unwrap();
    for (target, reason) in
        [("../secret", "links to a file outside the root"), ("missing", "links to a missing file")]
    {
        let error = apply(&root, &[E::Hardlink("h", target)]).unwrap_err();
        assert!(error.to_string().contains(reason), "{error}");
    }
    // Through an absolute symbolic link, the target is the image's own.
    apply(&root, &[E::Symlink("up", "/"), E::File("secret", "mine")]).unwrap();
    apply(&root, &[E::Hardlink("h", "up/secret")]).unwrap();
    assert_eq!(fs::read_to_string(root.join("h")).unwrap(), "mine");
}

#[test]
fn gzip_and_zstd_layers_are_recognised_by_their_first_bytes() {
    use std::io::Write;
    let entries = [E::Dir("etc"), E::File("etc/hostname", "box\n")];
    let plain = layer(&entries);

    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&plain).unwrap();
    let gz = gz.finish().unwrap();
    // Two zstd frames, as parallel compressors write them.
    let (a, b) = plain.split_at(700);
    let fastest = ruzstd::encoding::CompressionLevel::Fastest;
    let zstd = [ruzstd::encoding::compress_to_vec(a, fastest), ruzstd::encoding::compress_to_vec(b, fastest)]
        .concat();

    for (kind, bytes) in [("plain", plain.clone()), ("gzip", gz), ("zstd", zstd)] {
        let root = tempfile::tempdir().unwrap();
        unpack_layer(root.path(), &bytes[..]).unwrap_or_else(|e| panic!("{kind}: {e}"));
        assert_eq!(fs::read_to_string(root.path().join("etc/hostname")).unwrap(), "box\n", "{kind}");
    }
    let root = tempfile::tempdir().unwrap();
    let error = unpack_layer(root.path(), &b"\x1f\x8bnot really gzip"[..]).unwrap_err();
    assert!(matches!(error, Error::BadArchive(_)), "{error:?}");
}
