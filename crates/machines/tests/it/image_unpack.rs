//! Applying layers: whiteouts, opaque directories, replacements, links,
//! ownership, compression, and entries that try to leave the root. Each
//! layer is a tar archive built here.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use hearth_machines::image::Error;
use hearth_machines::image::unpack::{Limits, Node, Unpack, unpack_layer};

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
fn ownership_and_modes_are_kept() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    apply(root, &[E::Owned("tool", 0o1750, 1000, 1001), E::Dir("dev")]).unwrap();
    let meta = fs::metadata(root.join("tool")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o1750);
    if fs::metadata("/proc/self").unwrap().uid() == 0 {
        assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    }
    assert_eq!(
        fs::metadata(root.join("dev")).unwrap().mtime(),
        1_700_000_000,
        "directory times are set last"
    );
}

/// Issue 13, item 7: unpacking runs as root, so a layer must not make
/// set-ID files, device nodes or `security.*` attributes on the host; the
/// image gets them through the fixups instead.
#[test]
fn set_id_bits_device_nodes_and_security_xattrs_stay_off_the_host() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut bytes = layer(&[
        E::Owned("suid", 0o4755, 0, 0),
        E::Dir("dev"),
        E::CharDevice("dev/mem", 1, 1),
        E::Dir("mail"),
    ]);
    // `mail/` again as set-group-ID, and a file with a file capability.
    bytes.truncate(bytes.len() - 1024); // Drop the end-of-archive blocks.
    let mut builder = tar::Builder::new(bytes);
    let mut header = header(tar::EntryType::Directory, 0o2775, 0);
    builder.append_data(&mut header, "mail", &b""[..]).unwrap();
    append_with_xattrs(
        &mut builder,
        "ping",
        &[("security.capability", b"\x01\x00\x00\x02 cap"), ("trusted.overlay.opaque", b"y")],
    );
    let bytes = builder.into_inner().unwrap();

    let mut unpack = Unpack::new(root, Limits::default());
    let stats = unpack.layer(&bytes[..]).unwrap();
    assert_eq!(stats.fixups, 4, "{stats:?}");
    let fixups = unpack.finish();

    let suid = fs::symlink_metadata(root.join("suid")).unwrap();
    assert_eq!(suid.permissions().mode() & 0o7777, 0o755, "no set-user-ID file on the host");
    let mail = fs::symlink_metadata(root.join("mail")).unwrap();
    assert_eq!(mail.permissions().mode() & 0o7777, 0o775, "no set-group-ID directory on the host");
    let mem = fs::symlink_metadata(root.join("dev/mem")).unwrap();
    assert!(mem.file_type().is_file() && mem.len() == 0, "a placeholder, not a device node: {mem:?}");
    assert_eq!(mem.permissions().mode() & 0o7777, 0o600);
    assert_eq!(xattr::get(root.join("ping"), "security.capability").ok().flatten(), None);
    assert_eq!(xattr::get(root.join("ping"), "trusted.overlay.opaque").ok().flatten(), None);

    // What the image will get instead.
    let by_path: std::collections::BTreeMap<String, _> =
        fixups.iter().map(|(p, f)| (p.display().to_string(), f.clone())).collect();
    assert_eq!(by_path.keys().collect::<Vec<_>>(), ["dev/mem", "mail", "ping", "suid"]);
    assert_eq!(by_path["suid"].mode, Some(0o104755));
    assert_eq!(by_path["mail"].mode, Some(0o042775));
    assert_eq!(by_path["dev/mem"].node, Some(Node::Char { major: 1, minor: 1, mode: 0o666 }));
    assert_eq!(
        by_path["ping"].xattrs,
        [
            ("security.capability".into(), b"\x01\x00\x00\x02 cap".to_vec()),
            ("trusted.overlay.opaque".into(), b"y".to_vec())
        ]
    );
}

#[test]
fn fixups_of_replaced_or_removed_entries_are_dropped() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    let mut unpack = Unpack::new(root, Limits::default());
    let first = layer(&[
        E::Owned("gone", 0o4755, 0, 0),
        E::Owned("replaced", 0o4755, 0, 0),
        E::Dir("dev"),
        E::CharDevice("dev/a", 1, 3),
        E::Owned("kept", 0o2755, 0, 0),
        E::Hardlink("kept-link", "kept"),
    ]);
    unpack.layer(&first[..]).unwrap();
    let second = layer(&[E::File(".wh.gone", ""), E::File("replaced", "plain"), E::File(".wh.dev", "")]);
    unpack.layer(&second[..]).unwrap();
    let fixups = unpack.finish();
    let paths: Vec<String> = fixups.iter().map(|(p, _)| p.display().to_string()).collect();
    assert_eq!(paths, ["kept", "kept-link"]);
}

#[test]
fn a_gzip_bomb_stops_at_the_layer_limit() {
    let root = tempfile::tempdir().unwrap();
    let limits = Limits { layer_bytes: 4 << 20, image_bytes: 64 << 20 };
    let bomb = gzip(&zeros_layer("zeros", 64 << 20));
    assert!(bomb.len() < 1 << 20, "the bomb is small: {} bytes", bomb.len());
    let error = Unpack::new(root.path(), limits).layer(&bomb[..]).unwrap_err();
    assert!(matches!(error, Error::TooLarge { what: "the layer", limit } if limit == 4 << 20), "{error:?}");
    assert!(error.to_string().contains("4 MiB"), "{error}");
    let written = fs::metadata(root.path().join("zeros")).map(|m| m.len()).unwrap_or(0);
    assert!(written <= 4 << 20, "{written} bytes written");
}

#[test]
fn layers_together_stop_at_the_image_limit() {
    let root = tempfile::tempdir().unwrap();
    let limits = Limits { layer_bytes: 4 << 20, image_bytes: 6 << 20 };
    let mut unpack = Unpack::new(root.path(), limits);
    unpack.layer(&gzip(&zeros_layer("one", 3 << 20))[..]).unwrap();
    let error = unpack.layer(&gzip(&zeros_layer("two", 3 << 20))[..]).unwrap_err();
    assert!(matches!(error, Error::TooLarge { limit, .. } if limit == 6 << 20), "{error:?}");
    assert!(error.to_string().starts_with("the image's layers together"), "{error}");
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_entry_type(kind);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(1_700_000_000);
    header
}

/// A layer of one file of `size` zero bytes.
fn zeros_layer(name: &str, size: u64) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = header(tar::EntryType::Regular, 0o644, size);
    builder.append_data(&mut header, name, std::io::repeat(0).take(size)).unwrap();
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Appends a regular file preceded by a PAX header with `SCHILY.xattr.`
/// records, which the tar crate cannot write itself.
fn append_with_xattrs(builder: &mut tar::Builder<Vec<u8>>, path: &str, xattrs: &[(&str, &[u8])]) {
    let mut pax = Vec::new();
    for (name, value) in xattrs {
        let body_len = " SCHILY.xattr.".len() + name.len() + 1 + value.len() + 1;
        let mut len = body_len + 1;
        while len != body_len + len.to_string().len() {
            len = body_len + len.to_string().len();
        }
        pax.extend_from_slice(format!("{len} SCHILY.xattr.{name}=").as_bytes());
        pax.extend_from_slice(value);
        pax.push(b'\n');
    }
    let mut pax_header = header(tar::EntryType::XHeader, 0o644, pax.len() as u64);
    builder.append_data(&mut pax_header, "PaxHeaders/x", &pax[..]).unwrap();
    let mut header = header(tar::EntryType::Regular, 0o755, 4);
    builder.append_data(&mut header, path, &b"ping"[..]).unwrap();
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
