//! Sizing a file tree and turning it into an ext4 file with `mkfs.ext4 -d`.

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::{Error, io, sha256_digest};

const MIB: u64 = 1 << 20;
const BLOCK: u64 = 4096;
/// Free space on top of the content, so a machine can install a few things
/// before its overlay has to grow the disk.
const HEADROOM: u64 = 256 * MIB;
/// ext4's inode size.
const INODE_BYTES: u64 = 256;
/// mkfs's default: one inode per 16 KiB.
const BYTES_PER_INODE: u64 = 16 << 10;

/// What a tree holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Tree {
    /// Bytes it occupies in 4 KiB blocks.
    pub(super) bytes: u64,
    /// Files, directories, links and nodes, hard links counted once.
    pub(super) inodes: u64,
    /// A digest of names, kinds, modes, owners, link targets and contents
    /// (not times): equal trees get equal digests. Only when asked for.
    pub(super) digest: Option<String>,
}

/// Walks `root` in name order.
pub(super) fn scan(root: &Path, hash: bool) -> Result<Tree, Error> {
    let mut tree = Tree { bytes: BLOCK, inodes: 1, digest: None };
    let mut hasher = hash.then(Sha256::new);
    let mut seen = HashSet::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut todo = vec![root.to_owned()];
    while let Some(dir) = todo.pop() {
        let mut children: Vec<_> = fs::read_dir(&dir)
            .map_err(io(&dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io(&dir))?;
        children.sort();
        // Subdirectories are pushed in reverse so they are visited in name
        // order, after this directory's entries: a fixed order for the hash.
        for path in children.iter().rev() {
            let meta = fs::symlink_metadata(path).map_err(io(path))?;
            if meta.is_dir() {
                todo.push(path.clone());
            }
        }
        for path in &children {
            let meta = fs::symlink_metadata(path).map_err(io(path))?;
            let kind = meta.file_type();
            let first_link = meta.nlink() < 2 || kind.is_dir() || seen.insert((meta.dev(), meta.ino()));
            if first_link {
                tree.inodes += 1;
                tree.bytes += if kind.is_file() || kind.is_dir() {
                    meta.len().div_ceil(BLOCK).max(1) * BLOCK
                } else if kind.is_symlink() && meta.len() > 59 {
                    BLOCK // Longer targets do not fit in the inode.
                } else {
                    0
                };
            }
            let Some(hasher) = &mut hasher else { continue };
            let relative = path.strip_prefix(root).expect("walked from root");
            hasher.update(relative.as_os_str().as_bytes());
            hasher.update(format!("\0{:o} {} {}\0", meta.mode(), meta.uid(), meta.gid()).as_bytes());
            if kind.is_file() {
                let mut file = fs::File::open(path).map_err(io(path))?;
                let mut content = Sha256::new();
                loop {
                    let n = file.read(&mut buf).map_err(io(path))?;
                    if n == 0 {
                        break;
                    }
                    content.update(&buf[..n]);
                }
                hasher.update(content.finalize());
            } else if kind.is_symlink() {
                hasher.update(fs::read_link(path).map_err(io(path))?.as_os_str().as_bytes());
            } else if kind.is_char_device() || kind.is_block_device() {
                hasher.update(meta.rdev().to_le_bytes());
            }
            hasher.update(b"\n");
        }
    }
    tree.digest = hasher.map(|h| sha256_digest(&h.finalize()));
    Ok(tree)
}

/// The file system size for a tree: its content plus a fifth, the inode
/// tables, and [`HEADROOM`], in whole MiB.
pub(super) fn filesystem_size(tree: &Tree) -> (u64, u64) {
    let inodes = inode_count(tree);
    let bytes = tree.bytes + tree.bytes / 5 + inodes * INODE_BYTES + HEADROOM;
    let bytes = bytes.div_ceil(MIB) * MIB;
    (bytes, inodes.max(bytes / BYTES_PER_INODE))
}

/// Room for the tree's inodes and as many again, so small-file-heavy
/// images can still grow.
fn inode_count(tree: &Tree) -> u64 {
    tree.inodes * 2 + 16384
}

/// Makes `file` an ext4 file system of `bytes` holding a copy of `tree`.
pub(super) fn make(tree: &Path, file: &Path, bytes: u64, inodes: u64) -> Result<(), Error> {
    let f = fs::File::create(file).map_err(io(file))?;
    f.set_len(bytes).map_err(io(file))?;
    drop(f);
    let mut command = Command::new("mkfs.ext4");
    command
        .args(["-q", "-F", "-b", "4096", "-m", "1", "-L", "hearth-root"])
        .arg("-N")
        .arg(inodes.to_string())
        .arg("-d")
        .arg(tree)
        .arg(file)
        .arg(format!("{}k", bytes / 1024));
    run(&mut command, "e2fsprogs")?;
    Ok(())
}

/// Runs a command to completion, turning failure into an error that shows
/// what it printed.
pub(super) fn run(command: &mut Command, package: &'static str) -> Result<String, Error> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.stdin(std::process::Stdio::null()).output().map_err(|source| Error::Spawn {
        program: program.clone(),
        package,
        source,
    })?;
    if output.status.success() {
        return Ok(String::from_utf8_lossy(&output.stdout).into_owned());
    }
    let shown: Vec<String> = std::iter::once(program)
        .chain(command.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect();
    let mut text = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if text.is_empty() {
        text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    }
    if text.is_empty() {
        text = format!("it exited with {}", output.status);
    }
    Err(Error::Command { command: shown.join(" "), output: text })
}
