//! File transfers: uploads written beside their target and renamed into
//! place once durable; downloads streamed in chunks.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::describe;
use crate::protocol::{MAX_CHUNK, Response};
use crate::server::State;

/// Uploads in progress on one connection.
#[derive(Debug, Default)]
pub(crate) struct Uploads {
    uploads: HashMap<u32, Upload>,
}

#[derive(Debug)]
enum Upload {
    Writing {
        target: PathBuf,
        temp: PathBuf,
        file: File,
    },
    /// Failed and reported: later chunks are dropped without another error.
    Failed,
}

impl Uploads {
    /// Starts an upload into a temporary file beside `path`.
    pub(crate) fn begin(&mut self, id: u32, path: &str, mode: u32) -> Result<(), String> {
        if let Some(old) = self.uploads.remove(&id) {
            discard(old);
            self.uploads.insert(id, Upload::Failed);
            return Err(format!("upload {id} is already in progress; both are abandoned"));
        }
        match open_temp(id, path, mode) {
            Ok(upload) => {
                self.uploads.insert(id, upload);
                Ok(())
            }
            Err(message) => {
                self.uploads.insert(id, Upload::Failed);
                Err(message)
            }
        }
    }

    /// Appends a chunk. `Ok(())` also for uploads that already failed.
    pub(crate) fn write(&mut self, id: u32, data: &[u8]) -> Result<(), String> {
        let Some(upload) = self.uploads.get_mut(&id) else {
            self.uploads.insert(id, Upload::Failed);
            return Err(format!("no upload {id} is in progress"));
        };
        let Upload::Writing { target, file, .. } = upload else { return Ok(()) };
        if let Err(e) = file.write_all(data) {
            let message = format!("cannot write {target:?}: {}", describe(&e));
            self.fail(id);
            return Err(message);
        }
        Ok(())
    }

    /// Makes the upload durable and renames it into place: `Ok(true)`.
    /// `Ok(false)` for an upload that already failed and was reported.
    pub(crate) fn finish(&mut self, id: u32) -> Result<bool, String> {
        match self.uploads.remove(&id) {
            None => Err(format!("no upload {id} is in progress")),
            Some(Upload::Failed) => Ok(false),
            Some(Upload::Writing { target, temp, file }) => {
                let result = commit(&target, &temp, file);
                if result.is_err() {
                    let _ = fs::remove_file(&temp);
                }
                result.map(|()| true).map_err(|e| format!("cannot write {target:?}: {}", describe(&e)))
            }
        }
    }

    /// Abandons every upload, removing their temporary files.
    pub(crate) fn abort_all(&mut self) {
        self.uploads.drain().for_each(|(_, upload)| discard(upload));
    }

    fn fail(&mut self, id: u32) {
        if let Some(upload) = self.uploads.insert(id, Upload::Failed) {
            discard(upload);
        }
    }
}

impl Drop for Uploads {
    fn drop(&mut self) {
        self.abort_all();
    }
}

fn discard(upload: Upload) {
    if let Upload::Writing { temp, .. } = upload {
        let _ = fs::remove_file(temp);
    }
}

fn open_temp(id: u32, path: &str, mode: u32) -> Result<Upload, String> {
    let target = absolute(path)?;
    let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
        return Err(format!("cannot write {path:?}: it names no file"));
    };
    fs::create_dir_all(dir).map_err(|e| {
        let why = match e.kind() {
            io::ErrorKind::AlreadyExists => "a file that is not a directory is in the way".to_string(),
            _ => describe(&e),
        };
        format!("cannot create the directory {dir:?}: {why}")
    })?;
    let temp = dir.join(format!(".{}.hearth-upload-{id}", name.to_string_lossy()));
    let mode = mode & 0o7777;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&temp)
        .and_then(|file| {
            // The umask may have removed bits from the mode passed to open.
            file.set_permissions(Permissions::from_mode(mode))?;
            Ok(file)
        })
        .map_err(|e| format!("cannot write {path:?}: {}", describe(&e)))?;
    Ok(Upload::Writing { target, temp, file })
}

fn commit(target: &Path, temp: &Path, file: File) -> io::Result<()> {
    file.sync_all()?;
    drop(file);
    fs::rename(temp, target)?;
    // Make the rename itself durable.
    if let Some(dir) = target.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn absolute(path: &str) -> Result<PathBuf, String> {
    let path = Path::new(path);
    if path.is_absolute() { Ok(path.to_path_buf()) } else { Err(format!("{path:?} is not an absolute path")) }
}

/// Streams a regular file to the host from a thread of its own.
pub(crate) fn start_download(state: &Arc<State>, epoch: u64, id: u32, path: String) -> Result<(), String> {
    let target = absolute(&path)?;
    let file = File::open(&target).map_err(|e| format!("cannot read {path:?}: {}", describe(&e)))?;
    let meta = file.metadata().map_err(|e| format!("cannot read {path:?}: {}", describe(&e)))?;
    if !meta.is_file() {
        return Err(format!("cannot read {path:?}: it is not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o7777;
    let state = state.clone();
    std::thread::Builder::new()
        .name(format!("download-{id}"))
        .spawn(move || download(&state, epoch, id, &path, file, mode))
        .map_err(|e| format!("cannot start a download: {e}"))?;
    Ok(())
}

fn download(state: &State, epoch: u64, id: u32, path: &str, mut file: File, mode: u32) {
    let mut buf = vec![0; MAX_CHUNK];
    let mut size = 0u64;
    loop {
        // A reset (`Hello`) abandons the download.
        if state.epoch.load(Ordering::SeqCst) != epoch {
            return;
        }
        match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                size += n as u64;
                state.send(Some(epoch), Response::FileChunk { id, data: buf[..n].to_vec() });
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let message = format!("cannot read {path:?}: {}", describe(&e));
                state.send(Some(epoch), Response::Error { id: Some(id), message });
                return;
            }
        }
    }
    state.send(Some(epoch), Response::FileEnd { id, mode, size });
}

/// Replaces `path` with `bytes` (created with `mode`) by renaming a synced
/// temporary file beside it over it: a reader sees the old file or the new
/// one, never a mix, and a symlink at `path` is replaced, not followed.
/// The caller syncs the directory when the rename must be durable.
pub(crate) fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    replace_file_owned(path, bytes, mode, None)
}

/// [`replace_file`], the new file owned by `owner` (uid, gid) before it
/// takes the old one's place.
pub(crate) fn replace_file_owned(
    path: &Path,
    bytes: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
    let temp = dir.join(format!(".{name}.hearth-new"));
    // One left by a crash may have another mode (or be a planted link).
    let _ = fs::remove_file(&temp);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temp)
        .and_then(|mut file| {
            if let Some((uid, gid)) = owner {
                std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
            }
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temp, path));
    if written.is_err() {
        let _ = fs::remove_file(&temp);
    }
    written
}
