//! The image store on disk, and the operations on it.
//!
//! ```text
//! ROOT/
//!   blobs/sha256/HEX        verified registry blobs (configs, layers)
//!   images/HEX/image.json   one directory per image, named by its digest:
//!   images/HEX/rootfs.ext4    its record and its root file system
//!   names.json              {"names": {"debian:bookworm": "sha256:…"}}
//!   locks/HEX.lock          held while an image is made or removed
//!   locks/names.lock        held while names.json is rewritten
//!   locks/blobs.lock        shared by pulls, taken alone to delete blobs
//!   tmp/                    staging trees and downloads (0700)
//! ```
//!
//! Pulled layers are unpacked as root into `tmp/pull-*/rootfs`, so `tmp/`
//! and each staging directory are 0700 whatever the cache directory's mode
//! (it may be shared): nobody else reaches the tree while it exists, and
//! what only the image may hold never lands there at all (see [`unpack`]).
//!
//! **An image directory exists only when complete**: it is assembled in
//! `tmp/` and renamed into `images/` in one step, and removed by renaming it
//! back out first, so a crash never leaves a half image that is listed.
//! `names.json` and blobs are likewise written to a temporary file and
//! renamed. Staging entries in `tmp/` carry a lock; `open` deletes those
//! whose lock nobody holds (left by a crash).

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::debian::{check_name, debian_mirror, debootstrap, ensure_mount_points, prepare_debian_tree};
use super::registry::{Client, Descriptor, RawConfig, Resolved};
use super::{
    Credentials, Error, Image, ImageConfig, ImageSource, Progress, digest_hex, ext4, io, parse_reference,
    unpack,
};

/// What `image.json` holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// The name it was first made under.
    name: String,
    digest: String,
    /// For a pull through an index, the index's digest, so a pull pinned to
    /// it is answered from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    index_digest: Option<String>,
    size_bytes: u64,
    config: ImageConfig,
    created_unix: u64,
    source: ImageSource,
    /// The blobs it was made from, which stay cached while it exists.
    #[serde(default)]
    blobs: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Names {
    names: BTreeMap<String, String>,
}

/// Machine images on disk. Cheap to clone; every method is blocking.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
    limits: unpack::Limits,
}

/// How old an unlocked staging entry must be before `open` deletes it, so
/// that one being created right now is left alone.
const STALE_AFTER: Duration = Duration::from_secs(60);

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, e.g. `DATA_DIR/images`,
    /// and clears what a crash left in its `tmp/`.
    pub fn open(root: &Path) -> Result<ImageStore, Error> {
        let store = ImageStore { root: root.to_owned(), limits: unpack::Limits::default() };
        for dir in [store.blobs_dir(), store.images_dir(), store.locks_dir(), store.tmp_dir()] {
            fs::create_dir_all(&dir).map_err(io(&dir))?;
        }
        let tmp = store.tmp_dir();
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o700)).map_err(io(&tmp))?;
        store.clear_stale_staging()?;
        Ok(store)
    }

    /// The same store with other bounds on what a pull may unpack.
    pub fn with_limits(mut self, limits: unpack::Limits) -> ImageStore {
        self.limits = limits;
        self
    }

    /// The directory the store lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Pulls `reference` from its registry (see [`parse_reference`]) and
    /// makes it an image, unless the store has it already.
    pub fn pull(
        &self,
        reference: &str,
        credentials: Option<&Credentials>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Image, Error> {
        let reference = parse_reference(reference)?;
        let name = reference.to_string();
        progress(Progress::Resolving { reference: name.clone() });
        // Pinned to a digest the store has: no need to ask the registry.
        if let Some(digest) = &reference.digest
            && let Some(record) = self
                .records()?
                .into_iter()
                .find(|r| &r.digest == digest || r.index_digest.as_ref() == Some(digest))
        {
            self.set_name(&name, &record.digest)?;
            progress(Progress::Done);
            return Ok(self.image(record, name));
        }

        let mut client = Client::new(&reference, credentials);
        let resolved = client.resolve()?;
        let _lock = self.lock(hex(&resolved.digest))?;
        if let Some(record) = self.record(&resolved.digest)? {
            self.set_name(&name, &record.digest)?;
            progress(Progress::Done);
            return Ok(self.image(record, name));
        }
        // Blobs must outlive this pull's use of them; see `collect_blobs`.
        let _blobs = self.lock_shared("blobs")?;
        let (config, layers) = self.download(&mut client, &resolved, &name, progress)?;
        let staging = Staging::new(&self.tmp_dir(), "pull")?;
        let tree = staging.tree()?;
        let mut unpack = unpack::Unpack::new(&tree, self.limits);
        for (i, (path, layer)) in layers.iter().zip(&resolved.layers).enumerate() {
            progress(Progress::Unpacking { layer: i + 1, layers: layers.len() });
            let file = File::open(path).map_err(io(path))?;
            unpack
                .layer(file)
                .map_err(|e| Error::Layer { digest: layer.digest.clone(), source: Box::new(e) })?;
        }
        let fixups = unpack.finish();
        ensure_mount_points(&tree)?;
        let record = Record {
            name: name.clone(),
            digest: resolved.digest.clone(),
            index_digest: resolved.index_digest.clone(),
            size_bytes: 0,
            config,
            created_unix: now(),
            source: ImageSource::Registry { reference: reference.canonical() },
            blobs: std::iter::once(&resolved.config)
                .chain(&resolved.layers)
                .map(|d| d.digest.clone())
                .collect(),
        };
        let tree_info = ext4::scan(&tree, false)?;
        let record = self.commit(&staging, &tree, &tree_info, &fixups, record, progress)?;
        self.set_name(&name, &record.digest)?;
        progress(Progress::Done);
        Ok(self.image(record, name))
    }

    /// Gets the image's config and layers into the blob cache: the config
    /// as hearth keeps it, and the layers' paths in order.
    fn download(
        &self,
        client: &mut Client<'_>,
        resolved: &Resolved,
        name: &str,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(ImageConfig, Vec<PathBuf>), Error> {
        let path = self.blob(client, &resolved.config, progress)?;
        let bytes = fs::read(&path).map_err(io(&path))?;
        let raw: RawConfig = serde_json::from_slice(&bytes).map_err(|e| Error::BadImage {
            reference: name.to_owned(),
            reason: format!("its config is not valid JSON ({e})"),
        })?;
        if !raw.architecture.is_empty() && (raw.os != "linux" || raw.architecture != "amd64") {
            return Err(Error::NoPlatform {
                reference: name.to_owned(),
                available: format!("{}/{}", raw.os, raw.architecture),
            });
        }
        let mut layers = Vec::with_capacity(resolved.layers.len());
        for layer in &resolved.layers {
            layers.push(self.blob(client, layer, progress)?);
        }
        let c = raw.config.unwrap_or_default();
        let config = ImageConfig {
            entrypoint: c.entrypoint.unwrap_or_default(),
            cmd: c.cmd.unwrap_or_default(),
            env: c.env.unwrap_or_default(),
            working_dir: c.working_dir.filter(|w| !w.is_empty()),
            user: c.user.filter(|u| !u.is_empty()),
        };
        Ok((config, layers))
    }

    /// Builds `debian:SUITE` with `debootstrap --variant=minbase`, plus
    /// `packages`, from the host's Debian mirror (see [`debian_mirror`]).
    ///
    /// Its digest is that of the finished file tree (names, kinds, modes,
    /// owners, link targets and contents; not times), so it names exactly
    /// what is inside: a build that comes out identical to one in the store
    /// is that image, and different packages always make a different image.
    /// A digest of the ext4 file would not do (mkfs writes a random UUID and
    /// times), nor one of suite and packages (the archive moves on).
    pub fn build_debian(
        &self,
        suite: &str,
        packages: &[String],
        name: Option<&str>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Image, Error> {
        check_name(suite, "suite")?;
        for package in packages {
            check_name(package, "package")?;
        }
        let mut packages = packages.to_vec();
        packages.sort();
        packages.dedup();
        // Named `debian:SUITE` unless the caller names it (e.g. a build with
        // extra packages that should not replace the plain one).
        let name = parse_reference(name.unwrap_or(&format!("debian:{suite}")))?.to_string();
        let mirror = debian_mirror(Path::new("/etc/apt"));
        progress(Progress::Building { step: format!("Running debootstrap for {suite} from {mirror}") });
        let staging = Staging::new(&self.tmp_dir(), "build")?;
        let tree = staging.tree()?;
        debootstrap(suite, &packages, &mirror, &tree, progress)?;
        prepare_debian_tree(&tree)?;
        progress(Progress::Building { step: "Hashing the file tree".to_owned() });
        let tree_info = ext4::scan(&tree, true)?;
        let digest = tree_info.digest.clone().expect("scan was asked to hash");
        let _lock = self.lock(hex(&digest))?;
        let record = match self.record(&digest)? {
            Some(record) => record,
            None => {
                let record = Record {
                    name: name.clone(),
                    digest,
                    index_digest: None,
                    size_bytes: 0,
                    config: ImageConfig::default(),
                    created_unix: now(),
                    source: ImageSource::Debootstrap { suite: suite.to_owned(), packages, mirror },
                    blobs: Vec::new(),
                };
                self.commit(&staging, &tree, &tree_info, &unpack::Fixups::default(), record, progress)?
            }
        };
        self.set_name(&name, &record.digest)?;
        progress(Progress::Done);
        Ok(self.image(record, name))
    }

    /// Every image: one entry per name, then each image no name points to
    /// (named `REPOSITORY@DIGEST`), sorted by name.
    pub fn list(&self) -> Result<Vec<Image>, Error> {
        let records: BTreeMap<String, Record> =
            self.records()?.into_iter().map(|r| (r.digest.clone(), r)).collect();
        let names = self.names()?.names;
        let mut named = HashSet::new();
        let mut images = Vec::new();
        for (name, digest) in names {
            if let Some(record) = records.get(&digest) {
                named.insert(digest);
                images.push(self.image(record.clone(), name));
            }
        }
        for (digest, record) in records {
            if !named.contains(&digest) {
                let name = unnamed(&record);
                images.push(self.image(record, name));
            }
        }
        images.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(images)
    }

    /// The image named `name_or_digest` (`debian:bookworm`; `debian` means
    /// `debian:latest`), or with that digest (`sha256:HEX`, or a unique
    /// prefix of at least 12 hex digits).
    pub fn get(&self, name_or_digest: &str) -> Result<Option<Image>, Error> {
        Ok(self.find(name_or_digest)?.map(|(image, _)| image))
    }

    /// Removes a name, and the image when no other name points to it; or,
    /// given a digest, the image and all its names. Returns what was removed.
    ///
    /// Machines whose disks are overlays on the image must be gone first;
    /// that is the caller's to check.
    pub fn remove(&self, name_or_digest: &str) -> Result<Image, Error> {
        let Some((image, by_name)) = self.find(name_or_digest)? else {
            return Err(Error::UnknownImage(name_or_digest.to_owned()));
        };
        let digest = image.digest.clone();
        let mut orphaned = false;
        self.update_names(|names| {
            if by_name {
                names.remove(&image.name);
            } else {
                names.retain(|_, d| *d != digest);
            }
            orphaned = !names.values().any(|d| *d == digest);
        })?;
        if orphaned {
            let _lock = self.lock(hex(&digest))?;
            let dir = self.images_dir().join(hex(&digest));
            let doomed = self.tmp_dir().join(format!("removed-{}", unique()));
            fs::rename(&dir, &doomed).map_err(io(&dir))?;
            fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
            self.collect_blobs()?;
        }
        Ok(image)
    }

    /// Finds an image, saying whether it was found by a name in the index.
    fn find(&self, input: &str) -> Result<Option<(Image, bool)>, Error> {
        if let Some(prefix) = digest_prefix(input) {
            let matches: Vec<Record> =
                self.records()?.into_iter().filter(|r| hex(&r.digest).starts_with(prefix)).collect();
            match matches.len() {
                0 if input.starts_with("sha256:") => return Ok(None),
                0 => {} // Perhaps a repository named with hex digits.
                1 => {
                    let record = matches.into_iter().next().expect("one match");
                    let name = self.name_of(&record)?;
                    return Ok(Some((self.image(record, name), false)));
                }
                count => return Err(Error::AmbiguousDigest { prefix: input.to_owned(), count }),
            }
        }
        if input.starts_with("sha256:") {
            return Err(Error::BadReference {
                input: input.to_owned(),
                reason: "a digest is `sha256:` and 12 to 64 lowercase hex digits".to_owned(),
            });
        }
        let reference = parse_reference(input)?;
        let name = reference.to_string();
        if let Some(digest) = self.names()?.names.get(&name)
            && let Some(record) = self.record(digest)?
        {
            return Ok(Some((self.image(record, name), true)));
        }
        if let Some(digest) = &reference.digest
            && let Some(record) = self
                .records()?
                .into_iter()
                .find(|r| &r.digest == digest || r.index_digest.as_ref() == Some(digest))
        {
            let name = self.name_of(&record)?;
            return Ok(Some((self.image(record, name), false)));
        }
        Ok(None)
    }

    /// The first name pointing to the image, or its unnamed form.
    fn name_of(&self, record: &Record) -> Result<String, Error> {
        let names = self.names()?.names;
        Ok(names
            .into_iter()
            .find(|(_, d)| *d == record.digest)
            .map(|(n, _)| n)
            .unwrap_or_else(|| unnamed(record)))
    }

    /// Turns the staged tree into `images/HEX`: the ext4 file and the record.
    fn commit(
        &self,
        staging: &Staging,
        tree: &Path,
        tree_info: &ext4::Tree,
        fixups: &unpack::Fixups,
        mut record: Record,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Record, Error> {
        let (bytes, inodes) = ext4::filesystem_size(tree_info);
        progress(Progress::MakingFilesystem { bytes });
        let dir = staging.dir.join("image");
        fs::create_dir(&dir).map_err(io(&dir))?;
        let rootfs = dir.join("rootfs.ext4");
        ext4::make(tree, &rootfs, bytes, inodes, fixups)?;
        File::open(&rootfs).and_then(|f| f.sync_all()).map_err(io(&rootfs))?;
        record.size_bytes = fs::metadata(&rootfs).map_err(io(&rootfs))?.len();
        let json = dir.join("image.json");
        write_synced(&json, &serde_json::to_vec_pretty(&record).expect("records serialize"))?;
        let target = self.images_dir().join(hex(&record.digest));
        fs::rename(&dir, &target).map_err(io(&target))?;
        sync_dir(&self.images_dir())?;
        Ok(record)
    }

    /// The blob's path in the cache, downloading it first if missing.
    fn blob(
        &self,
        client: &mut Client<'_>,
        blob: &Descriptor,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<PathBuf, Error> {
        let path = self.blobs_dir().join(hex(&blob.digest));
        if path.is_file() {
            return Ok(path);
        }
        let partial = TempFile(self.tmp_dir().join(format!("blob-{}", unique())));
        let file = File::create(&partial.0).map_err(io(&partial.0))?;
        let mut out = BufWriter::with_capacity(1 << 20, file);
        client.blob(blob, &mut out, progress)?;
        let file = out.into_inner().map_err(|e| io(&partial.0)(e.into_error()))?;
        file.sync_all().map_err(io(&partial.0))?;
        fs::rename(&partial.0, &path).map_err(io(&path))?;
        Ok(path)
    }

    /// Deletes cached blobs no image was made from, unless a pull is under
    /// way (it may be about to use them); a later removal catches up.
    fn collect_blobs(&self) -> Result<(), Error> {
        let lock_path = self.locks_dir().join("blobs.lock");
        let lock = File::create(&lock_path).map_err(io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Ok(());
        }
        let used: HashSet<String> = self
            .records()?
            .into_iter()
            .flat_map(|r| r.blobs)
            .filter_map(|d| digest_hex(&d).map(str::to_owned))
            .collect();
        let dir = self.blobs_dir();
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.filter_map(Result::ok) {
            if !used.contains(entry.file_name().to_string_lossy().as_ref()) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io(&path))?;
            }
        }
        Ok(())
    }

    fn image(&self, record: Record, name: String) -> Image {
        Image {
            rootfs: self.images_dir().join(hex(&record.digest)).join("rootfs.ext4"),
            name,
            digest: record.digest,
            size_bytes: record.size_bytes,
            config: record.config,
            created_unix: record.created_unix,
            source: record.source,
        }
    }

    fn record(&self, digest: &str) -> Result<Option<Record>, Error> {
        let path = self.images_dir().join(hex(digest)).join("image.json");
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| Error::Corrupt { path, reason: e.to_string() }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// Every image's record; damaged ones are logged and left out, so one
    /// bad file does not hide the rest.
    fn records(&self) -> Result<Vec<Record>, Error> {
        let dir = self.images_dir();
        let mut records = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.filter_map(Result::ok) {
            let name = entry.file_name().to_string_lossy().into_owned();
            match self.record(&format!("sha256:{name}")) {
                Ok(Some(record)) => records.push(record),
                Ok(None) => {}
                Err(error) => tracing::warn!(error = %error, "Skipped a damaged image."),
            }
        }
        Ok(records)
    }

    fn names(&self) -> Result<Names, Error> {
        let path = self.root.join("names.json");
        match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| Error::Corrupt { path, reason: e.to_string() })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Names::default()),
            Err(e) => Err(io(&path)(e)),
        }
    }

    fn set_name(&self, name: &str, digest: &str) -> Result<(), Error> {
        self.update_names(|names| {
            names.insert(name.to_owned(), digest.to_owned());
        })
    }

    /// Rewrites `names.json` under its lock: read, change, replace.
    fn update_names(&self, change: impl FnOnce(&mut BTreeMap<String, String>)) -> Result<(), Error> {
        let _lock = self.lock("names")?;
        let mut names = self.names()?;
        change(&mut names.names);
        let path = self.root.join("names.json");
        let partial = TempFile(self.tmp_dir().join(format!("names-{}", unique())));
        write_synced(&partial.0, &serde_json::to_vec_pretty(&names).expect("names serialize"))?;
        fs::rename(&partial.0, &path).map_err(io(&path))?;
        sync_dir(&self.root)
    }

    /// Blocks until this process holds `locks/NAME.lock` alone.
    fn lock(&self, name: &str) -> Result<File, Error> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = File::create(&path).map_err(io(&path))?;
        file.lock().map_err(io(&path))?;
        Ok(file)
    }

    fn lock_shared(&self, name: &str) -> Result<File, Error> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = File::create(&path).map_err(io(&path))?;
        file.lock_shared().map_err(io(&path))?;
        Ok(file)
    }

    fn clear_stale_staging(&self) -> Result<(), Error> {
        let dir = self.tmp_dir();
        for entry in fs::read_dir(&dir).map_err(io(&dir))?.filter_map(Result::ok) {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            let recent = entry
                .metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().is_ok_and(|age| age < STALE_AFTER));
            if recent {
                continue;
            }
            let lock_path = match name.strip_suffix(".lock") {
                Some(_) => path.clone(),
                None => dir.join(format!("{name}.lock")),
            };
            let held = File::open(&lock_path).is_ok_and(|f| f.try_lock().is_err());
            if !held {
                tracing::info!(path = %path.display(), "Removing what an interrupted image operation left.");
                let _ = if path.is_dir() { fs::remove_dir_all(&path) } else { fs::remove_file(&path) };
            }
        }
        Ok(())
    }

    fn blobs_dir(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }
    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }
    fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }
}

/// A directory in `tmp/` for one operation, with a lock that says it is in
/// use; removed on drop, whatever happened.
#[derive(Debug)]
struct Staging {
    dir: PathBuf,
    lock_path: PathBuf,
    _lock: File,
}

impl Staging {
    fn new(tmp: &Path, label: &str) -> Result<Staging, Error> {
        let name = format!("{label}-{}", unique());
        let lock_path = tmp.join(format!("{name}.lock"));
        let lock = File::create_new(&lock_path).map_err(io(&lock_path))?;
        lock.lock().map_err(io(&lock_path))?;
        let dir = tmp.join(name);
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io(&dir))?;
        Ok(Staging { dir, lock_path, _lock: lock })
    }

    /// `rootfs/`, the tree to fill; its mode becomes the guest's `/`.
    fn tree(&self) -> Result<PathBuf, Error> {
        let tree = self.dir.join("rootfs");
        fs::create_dir(&tree).map_err(io(&tree))?;
        fs::set_permissions(&tree, fs::Permissions::from_mode(0o755)).map_err(io(&tree))?;
        Ok(tree)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.dir)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.dir.display(), %error, "Could not remove a staging directory.");
        }
        let _ = fs::remove_file(&self.lock_path);
    }
}

/// A file removed on drop unless renamed away first.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// The hex part of a digest (or the digest itself if it has no algorithm).
fn hex(digest: &str) -> &str {
    digest.strip_prefix("sha256:").unwrap_or(digest)
}

/// `sha256:HEX` or bare `HEX`, with 12 to 64 lowercase hex digits.
fn digest_prefix(input: &str) -> Option<&str> {
    let prefix = input.strip_prefix("sha256:").unwrap_or(input);
    (prefix.len() >= 12
        && prefix.len() <= 64
        && prefix.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
    .then_some(prefix)
}

/// `REPOSITORY@DIGEST`, for an image no name points to.
fn unnamed(record: &Record) -> String {
    let repository = parse_reference(&record.name)
        .map(|r| r.familiar_repository())
        .unwrap_or_else(|_| record.name.split(':').next().unwrap_or_default().to_owned());
    format!("{repository}@{}", record.digest)
}

/// Unique within this host: process id, time and a counter.
fn unique() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
    format!("{}-{nanos}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut file = File::create(path).map_err(io(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io(path))
}

fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}
