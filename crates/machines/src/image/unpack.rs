//! Applying layer tarballs to a root directory, as container runtimes do.
//!
//! Layers apply in order on the same directory. In a layer, `.wh.NAME`
//! deletes `NAME` from the layers below, and `.wh..wh..opq` in a directory
//! hides everything the layers below put there. A new entry replaces what is
//! at its path unless both are directories, which merge.
//!
//! Nothing may land outside the root: entry names that climb out with `..`
//! and hard links to outside are refused, and symbolic links met on the way
//! to an entry are resolved *inside* the root, as if chrooted, so an image's
//! absolute `/var/run -> /run` works and a hostile `x -> /etc` leads to the
//! image's own `/etc`. The last component of an entry is never followed.
//!
//! **What could hurt the host stays out of the host's file system**: the
//! tree is unpacked as root, so device nodes, set-user-ID and set-group-ID
//! bits and `security.*`/`trusted.*` extended attributes are not made on the
//! host. They are recorded as [`Fixups`] (a device node leaves an empty
//! placeholder file) and written into the ext4 image after `mkfs.ext4 -d`
//! (see `ext4::apply_fixups`), so the guest still sees them. What one layer
//! unpacks to is bounded ([`Limits`]), so a gzip or zstd bomb cannot fill the
//! disk.

use std::cell::Cell;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::rc::Rc;

use nix::sys::stat::{UtimensatFlags, utimensat};
use nix::sys::time::TimeSpec;
use tar::EntryType;

use super::{Error, io};

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// Symbolic links followed while resolving one path, as Linux's limit.
const MAX_LINK_HOPS: usize = 40;

/// Set-user-ID and set-group-ID: kept out of the host's file system.
const SET_ID_BITS: u32 = 0o6000;
const GIB: u64 = 1 << 30;

/// What [`Unpack::layer`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Stats {
    /// Files, directories, links and nodes created.
    pub entries: u64,
    /// Paths removed by whiteouts.
    pub whiteouts: u64,
    /// Entries with something only the ext4 image may hold: a device node,
    /// a set-ID bit or a `security.*`/`trusted.*` attribute.
    pub fixups: u64,
}

/// How much unpacking may write, so a compressed bomb cannot fill the disk.
/// Both the decompressed archive and the file contents it expands to (sparse
/// entries) count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Per layer; 16 GiB by default.
    pub layer_bytes: u64,
    /// For all of an image's layers together; 32 GiB by default.
    pub image_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { layer_bytes: 16 * GIB, image_bytes: 32 * GIB }
    }
}

/// What the ext4 image must get that the host tree does not have, by host
/// path under the root.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Fixups {
    by_path: BTreeMap<PathBuf, Fixup>,
}

/// One path's metadata for the image only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fixup {
    /// The host inode it belongs to: a path whose inode changed since was
    /// replaced, and the fixup no longer applies.
    ino: u64,
    /// The mode to set in the image, file type included, when the host
    /// file lacks its set-ID bits.
    pub mode: Option<u32>,
    /// The device node or FIFO the host has an empty placeholder file for.
    pub node: Option<Node>,
    pub uid: u32,
    pub gid: u32,
    /// `security.*` and `trusted.*` attributes.
    pub xattrs: Vec<(OsString, Vec<u8>)>,
}

/// A device node or FIFO, with its permission bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Char { major: u32, minor: u32, mode: u32 },
    Block { major: u32, minor: u32, mode: u32 },
    Fifo { mode: u32 },
}

impl Fixups {
    /// The fixups and the host paths they belong to, relative to the root.
    pub fn iter(&self) -> impl Iterator<Item = (&Path, &Fixup)> {
        self.by_path.iter().map(|(p, f)| (p.as_path(), f))
    }

    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Drops `path` and everything under it.
    fn forget(&mut self, path: &Path) {
        let doomed: Vec<PathBuf> = self
            .by_path
            .range(path.to_owned()..)
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(path))
            .cloned()
            .collect();
        for p in doomed {
            self.by_path.remove(&p);
        }
    }
}

/// Applies an image's layers in order on one root directory.
#[derive(Debug)]
pub struct Unpack {
    root: PathBuf,
    limits: Limits,
    /// Bytes the layers so far counted against [`Limits::image_bytes`].
    used: u64,
    fixups: Fixups,
}

impl Unpack {
    pub fn new(root: &Path, limits: Limits) -> Unpack {
        Unpack { root: root.to_owned(), limits, used: 0, fixups: Fixups::default() }
    }

    /// Applies one layer (a tar archive, plain or gzip- or zstd-compressed,
    /// told apart by its first bytes) on top of what is there.
    pub fn layer<'a>(&mut self, layer: impl Read + 'a) -> Result<Stats, Error> {
        let mut layer = BufReader::with_capacity(256 << 10, layer);
        let magic = layer.fill_buf().map_err(Error::BadArchive)?;
        let reader: Box<dyn Read + 'a> = if magic.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::bufread::MultiGzDecoder::new(layer))
        } else if magic.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Box::new(Zstd { source: Some(layer), frame: None })
        } else {
            Box::new(layer)
        };
        let image_left = self.limits.image_bytes.saturating_sub(self.used);
        let budget = if image_left < self.limits.layer_bytes {
            Budget { limit: image_left, scope: LimitScope::Image(self.limits.image_bytes) }
        } else {
            Budget { limit: self.limits.layer_bytes, scope: LimitScope::Layer }
        };
        let archive_bytes = Rc::new(Cell::new(0));
        let reader = Counted { inner: reader, count: archive_bytes.clone(), limit: budget.limit };
        let mut unpacker = Unpacker {
            root: self.root.clone(),
            unpacked: HashSet::new(),
            dirs: Vec::new(),
            stats: Stats::default(),
            fixups: &mut self.fixups,
            budget,
            archive_bytes,
            content_bytes: 0,
        };
        let result = unpacker.run(reader);
        self.used += unpacker.archive_bytes.get().max(unpacker.content_bytes);
        result
    }

    /// The fixups that still apply: those whose path was not replaced.
    pub fn finish(self) -> Fixups {
        let mut fixups = self.fixups;
        fixups.by_path.retain(|path, fixup| {
            fs::symlink_metadata(self.root.join(path)).is_ok_and(|m| m.ino() == fixup.ino)
        });
        fixups
    }
}

/// Applies one layer on top of `root` with the default [`Limits`]. What only
/// the ext4 image may hold is left out; [`Unpack`] keeps it.
pub fn unpack_layer<'a>(root: &Path, layer: impl Read + 'a) -> Result<Stats, Error> {
    Unpack::new(root, Limits::default()).layer(layer)
}

#[derive(Debug, Clone, Copy)]
enum LimitScope {
    Layer,
    /// The image limit, with what the earlier layers left of it.
    Image(u64),
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    limit: u64,
    scope: LimitScope,
}

impl Budget {
    fn exceeded(&self) -> Error {
        match self.scope {
            LimitScope::Layer => Error::TooLarge { what: "the layer", limit: self.limit },
            LimitScope::Image(limit) => Error::TooLarge { what: "the image's layers together", limit },
        }
    }
}

/// A reader that fails once more than `limit` bytes came through it.
struct Counted<R> {
    inner: R,
    count: Rc<Cell<u64>>,
    limit: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        if self.count.get() > self.limit {
            return Err(io::Error::other("over the unpacking limit"));
        }
        Ok(n)
    }
}

struct Unpacker<'f> {
    root: PathBuf,
    /// Host paths this layer created, and their ancestors: what an opaque
    /// marker must keep.
    unpacked: HashSet<PathBuf>,
    /// Directories and their mtimes, set last since creating entries in a
    /// directory changes its mtime.
    dirs: Vec<(PathBuf, u64)>,
    stats: Stats,
    fixups: &'f mut Fixups,
    budget: Budget,
    /// Decompressed bytes read, shared with the [`Counted`] reader.
    archive_bytes: Rc<Cell<u64>>,
    /// File content written, which sparse entries make more than the archive.
    content_bytes: u64,
}

impl Unpacker<'_> {
    fn run(&mut self, reader: impl Read) -> Result<Stats, Error> {
        let mut archive = tar::Archive::new(reader);
        let result = archive.entries().map_err(Error::BadArchive).and_then(|entries| {
            for entry in entries {
                let mut entry = entry.map_err(Error::BadArchive)?;
                self.entry(&mut entry)?;
            }
            Ok(())
        });
        if let Err(error) = result {
            // The counting reader's failure surfaces as a bad archive.
            if self.archive_bytes.get() > self.budget.limit || self.content_bytes > self.budget.limit {
                return Err(self.budget.exceeded());
            }
            return Err(error);
        }
        for (dir, mtime) in std::mem::take(&mut self.dirs) {
            set_mtime(&dir, mtime);
        }
        Ok(self.stats.clone())
    }

    fn entry(&mut self, entry: &mut tar::Entry<'_, impl Read>) -> Result<(), Error> {
        let name = entry.path().map_err(Error::BadArchive)?.into_owned();
        let shown = name.display().to_string();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader | EntryType::XHeader | EntryType::GNULongName | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let Some(components) = normalize(&name) else {
            return Err(Error::UnsafeEntry {
                entry: shown,
                reason: "climbs out of the root with `..`".to_owned(),
            });
        };
        let Some((base, parents)) = components.split_last() else {
            return Ok(()); // The root itself: its metadata is ours to keep.
        };
        let base_str = base.to_string_lossy();
        if let Some(hidden) = base_str.strip_prefix(WHITEOUT_PREFIX) {
            let dir = self.resolve(parents, false, &shown)?;
            if base_str == OPAQUE_MARKER {
                if let Some(dir) = dir {
                    self.stats.whiteouts += self.make_opaque(&dir)?;
                }
            } else if !hidden.starts_with(WHITEOUT_PREFIX)
                && let Some(dir) = dir
            {
                // Other `.wh..wh.` names are aufs bookkeeping, not whiteouts.
                let target = dir.join(hidden);
                if fs::symlink_metadata(&target).is_ok() {
                    self.remove(&target)?;
                    self.stats.whiteouts += 1;
                }
            }
            return Ok(());
        }
        let Some(parent) = self.resolve(parents, true, &shown)? else {
            unreachable!("resolve creates missing directories when asked to");
        };
        let target = parent.join(base);
        let header = entry.header();
        let mode = header.mode().map_err(Error::BadArchive)? & 0o7777;
        let uid = header.uid().map_err(Error::BadArchive)?;
        let gid = header.gid().map_err(Error::BadArchive)?;
        let mtime = header.mtime().unwrap_or(0);

        let existing = fs::symlink_metadata(&target).ok();
        let merge_dir = kind == EntryType::Directory && existing.as_ref().is_some_and(|m| m.is_dir());
        if existing.is_some() && !merge_dir {
            self.remove(&target)?;
        }
        // A merged directory keeps the fixups below it, not its own.
        self.fixups.by_path.remove(self.relative(&target));
        let mut node = None;
        match kind {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io(&target))?;
                self.copy(entry, &mut file, &target)?;
            }
            EntryType::Directory => {
                if !merge_dir {
                    fs::create_dir(&target).map_err(io(&target))?;
                }
            }
            EntryType::Symlink => {
                let link =
                    entry.link_name().map_err(Error::BadArchive)?.ok_or_else(|| Error::UnsafeEntry {
                        entry: shown.clone(),
                        reason: "is a symbolic link without a target".to_owned(),
                    })?;
                std::os::unix::fs::symlink(&link, &target).map_err(io(&target))?;
            }
            EntryType::Link => {
                let link =
                    entry.link_name().map_err(Error::BadArchive)?.ok_or_else(|| Error::UnsafeEntry {
                        entry: shown.clone(),
                        reason: "is a hard link without a target".to_owned(),
                    })?;
                let source = self.link_source(&link, &shown)?;
                fs::hard_link(&source, &target).map_err(io(&target))?;
                if let Some(fixup) = self.fixups.by_path.get(self.relative(&source)).cloned() {
                    self.fixups.by_path.insert(self.relative(&target).to_owned(), fixup);
                }
                self.record(&target);
                self.stats.entries += 1;
                return Ok(()); // The inode's metadata is the source's.
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                // Never a real node on the host: an empty placeholder that
                // the ext4 image's node replaces.
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                node = Some(match kind {
                    EntryType::Char => Node::Char { major, minor, mode },
                    EntryType::Block => Node::Block { major, minor, mode },
                    _ => Node::Fifo { mode },
                });
                fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(io(&target))?;
                tracing::debug!(entry = %shown, ?node, "Recorded a device node for the image only.");
            }
            other => {
                tracing::debug!(entry = %shown, kind = ?other, "Skipped a layer entry of an unknown kind.");
                return Ok(());
            }
        }
        self.record(&target);
        self.stats.entries += 1;

        let xattrs: Vec<(OsString, Vec<u8>)> = match entry.pax_extensions() {
            Ok(Some(pax)) => pax
                .filter_map(Result::ok)
                .filter_map(|e| {
                    let key = e.key_bytes().strip_prefix(b"SCHILY.xattr.")?;
                    Some((OsStr::from_bytes(key).to_owned(), e.value_bytes().to_owned()))
                })
                .collect(),
            _ => Vec::new(),
        };
        let (image_only, host_xattrs): (Vec<_>, Vec<_>) =
            xattrs.into_iter().partition(|(name, _)| image_only_xattr(name));
        let host_mode = if node.is_some() { 0o600 } else { mode & !SET_ID_BITS };
        set_metadata(&target, kind, host_mode, uid, gid, &host_xattrs)?;
        let set_id = node.is_none() && kind != EntryType::Symlink && mode & SET_ID_BITS != 0;
        if node.is_some() || set_id || !image_only.is_empty() {
            let ino = fs::symlink_metadata(&target).map_err(io(&target))?.ino();
            let fixup = Fixup {
                ino,
                mode: set_id.then_some(mode | if kind == EntryType::Directory { 0o040000 } else { 0o100000 }),
                node,
                uid: u32::try_from(uid).unwrap_or(0),
                gid: u32::try_from(gid).unwrap_or(0),
                xattrs: image_only,
            };
            self.fixups.by_path.insert(self.relative(&target).to_owned(), fixup);
            self.stats.fixups += 1;
        }
        if kind == EntryType::Directory {
            self.dirs.push((target, mtime));
        } else {
            set_mtime(&target, mtime);
        }
        Ok(())
    }

    /// The host path of directory `components`, following symbolic links
    /// inside the root. Missing directories are made when `create` is set,
    /// and otherwise make the answer `None`.
    fn resolve(&self, components: &[OsString], create: bool, entry: &str) -> Result<Option<PathBuf>, Error> {
        let mut resolved: Vec<OsString> = Vec::new();
        let mut todo: VecDeque<OsString> = components.iter().cloned().collect();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            if c == ".." {
                resolved.pop(); // `..` of the root is the root, as in a chroot.
                continue;
            }
            if c.is_empty() || c == "." {
                continue;
            }
            let path = self.host_path(&resolved).join(&c);
            match fs::symlink_metadata(&path) {
                Ok(m) if m.file_type().is_symlink() => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Error::UnsafeEntry {
                            entry: entry.to_owned(),
                            reason: "goes through a loop of symbolic links".to_owned(),
                        });
                    }
                    let link = fs::read_link(&path).map_err(io(&path))?;
                    if link.is_absolute() {
                        resolved.clear();
                    }
                    for part in link.components().rev() {
                        match part {
                            Component::Normal(p) => todo.push_front(p.to_owned()),
                            Component::ParentDir => todo.push_front("..".into()),
                            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                        }
                    }
                }
                Ok(m) if m.is_dir() => resolved.push(c),
                Ok(_) => {
                    return Err(Error::UnsafeEntry {
                        entry: entry.to_owned(),
                        reason: format!("needs a directory where the image has a file ({})", path.display()),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !create {
                        return Ok(None);
                    }
                    fs::create_dir(&path).map_err(io(&path))?;
                    resolved.push(c);
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(Some(self.host_path(&resolved)))
    }

    fn host_path(&self, components: &[OsString]) -> PathBuf {
        let mut path = self.root.clone();
        path.extend(components);
        path
    }

    /// Where a hard link's target is on the host; it must already exist in
    /// the root and not be a directory.
    fn link_source(&self, link: &Path, entry: &str) -> Result<PathBuf, Error> {
        let unsafe_link =
            |reason: &str| Error::UnsafeEntry { entry: entry.to_owned(), reason: reason.to_owned() };
        let components = normalize(link).ok_or_else(|| unsafe_link("links to a file outside the root"))?;
        let (base, parents) = components.split_last().ok_or_else(|| unsafe_link("links to the root"))?;
        let dir =
            self.resolve(parents, false, entry)?.ok_or_else(|| unsafe_link("links to a missing file"))?;
        let source = dir.join(base);
        match fs::symlink_metadata(&source) {
            Ok(m) if m.is_dir() => Err(unsafe_link("is a hard link to a directory")),
            Ok(_) => Ok(source),
            Err(_) => Err(unsafe_link("links to a missing file")),
        }
    }

    /// Records `path` and its ancestors as made by this layer.
    fn record(&mut self, path: &Path) {
        let mut p = path.to_owned();
        while p != self.root && self.unpacked.insert(p.clone()) {
            if !p.pop() {
                break;
            }
        }
    }

    /// Removes what is at `path`, and the fixups that went with it.
    fn remove(&mut self, path: &Path) -> Result<(), Error> {
        remove_any(path)?;
        self.fixups.forget(self.relative(path));
        Ok(())
    }

    /// `path` under the root, as fixups are keyed.
    fn relative<'p>(&self, path: &'p Path) -> &'p Path {
        path.strip_prefix(&self.root).unwrap_or(path)
    }

    /// Copies an entry's content, telling a bad archive from a full disk,
    /// within the budget (a sparse entry expands past its archive bytes).
    fn copy(&mut self, entry: &mut impl Read, file: &mut fs::File, path: &Path) -> Result<(), Error> {
        use std::io::Write;
        let mut buf = [0u8; 64 << 10];
        loop {
            let n = match entry.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::BadArchive(e)),
            };
            self.content_bytes += n as u64;
            if self.content_bytes > self.budget.limit {
                return Err(self.budget.exceeded());
            }
            file.write_all(&buf[..n]).map_err(io(path))?;
        }
    }

    /// Removes everything under `dir` that this layer did not make.
    fn make_opaque(&mut self, dir: &Path) -> Result<u64, Error> {
        let mut removed = 0;
        let mut todo = vec![dir.to_owned()];
        while let Some(dir) = todo.pop() {
            for child in fs::read_dir(&dir).map_err(io(&dir))? {
                let child = child.map_err(io(&dir))?.path();
                if !self.unpacked.contains(&child) {
                    remove_any(&child)?;
                    self.fixups.forget(self.relative(&child));
                    removed += 1;
                } else if fs::symlink_metadata(&child).is_ok_and(|m| m.is_dir()) {
                    todo.push(child);
                }
            }
        }
        Ok(removed)
    }
}

/// The entry name's components with `.` and a leading `/` dropped and `..`
/// applied, or `None` if it climbs above the root.
fn normalize(name: &Path) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in name.components() {
        match c {
            Component::Normal(p) => out.push(p.to_owned()),
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Some(out)
}

fn remove_any(path: &Path) -> Result<(), Error> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    };
    result.map_err(io(path))
}

/// Ownership, then mode (a chown clears set-id bits), then xattrs.
fn set_metadata(
    path: &Path,
    kind: EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    xattrs: &[(OsString, Vec<u8>)],
) -> Result<(), Error> {
    let (uid, gid) = (u32::try_from(uid).ok(), u32::try_from(gid).ok());
    match std::os::unix::fs::lchown(path, uid, gid) {
        Ok(()) => {}
        // Not root: the files stay ours, which is the best we can do.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {}
        Err(e) => return Err(io(path)(e)),
    }
    if kind != EntryType::Symlink {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io(path))?;
    }
    for (name, value) in xattrs {
        if let Err(error) = xattr::set(path, name, value) {
            tracing::debug!(path = %path.display(), name = ?name, %error, "Could not set an extended attribute.");
        }
    }
    Ok(())
}

/// Attributes the kernel gives power to (file capabilities, SELinux
/// labels, overlayfs' own): set in the image, never on the host.
fn image_only_xattr(name: &OsStr) -> bool {
    let name = name.as_bytes();
    name.starts_with(b"security.") || name.starts_with(b"trusted.")
}

fn set_mtime(path: &Path, mtime: u64) {
    let mtime = TimeSpec::new(i64::try_from(mtime).unwrap_or(0), 0);
    // Times are cosmetic here; a failure is not worth failing the pull for.
    let _ = utimensat(nix::fcntl::AT_FDCWD, path, &mtime, &mtime, UtimensatFlags::NoFollowSymlink);
}

/// A zstd stream of one or more frames (ruzstd decodes one frame at a time).
struct Zstd<R: BufRead> {
    source: Option<R>,
    frame: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> Read for Zstd<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(frame) = &mut self.frame {
                let n = frame.read(buf)?;
                if n > 0 || buf.is_empty() {
                    return Ok(n);
                }
                let frame = self.frame.take().expect("checked above");
                self.source = Some(frame.into_inner());
            }
            let Some(mut source) = self.source.take() else { return Ok(0) };
            if source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.frame = Some(ruzstd::decoding::StreamingDecoder::new(source).map_err(io::Error::other)?);
        }
    }
}
