//! Sizing a file tree and turning it into an ext4 file with `mkfs.ext4 -d`,
//! then writing into it with `debugfs` what the host tree must not hold
//! (device nodes, set-ID bits, `security.*` attributes: see [`Fixups`]).

use std::collections::HashSet;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use sha2::{Digest as _, Sha256};

use super::unpack::{Fixups, Node};
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

/// Makes `file` an ext4 file system of `bytes` holding a copy of `tree`,
/// with `fixups` applied on top.
pub(super) fn make(tree: &Path, file: &Path, bytes: u64, inodes: u64, fixups: &Fixups) -> Result<(), Error> {
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
    apply_fixups(file, fixups)
}

/// Writes the fixups into the ext4 file with one `debugfs -w` script: a
/// device node replaces its placeholder, set-ID bits and attributes are set
/// on the inode. Values go through files, since attributes are binary.
pub(super) fn apply_fixups(file: &Path, fixups: &Fixups) -> Result<(), Error> {
    if fixups.is_empty() {
        return Ok(());
    }
    // Beside the ext4 file, in the store's 0700 staging directory.
    let values = Scratch(file.with_extension("fixups"));
    fs::create_dir(values.path()).map_err(io(values.path()))?;
    let mut script = String::new();
    for (i, (path, fixup)) in fixups.iter().enumerate() {
        let Some(quoted) = quote(path) else {
            tracing::warn!(path = %path.display(), "Skipped an image fixup: its name cannot be written in a debugfs command.");
            continue;
        };
        if let Some(node) = fixup.node {
            let parent = path.parent().and_then(quote).unwrap_or_else(|| "\"/\"".to_owned());
            // `quote` checked the name; a base name is never empty here.
            let base = path.file_name().and_then(|b| b.to_str()).unwrap_or_default();
            let (spec, type_bits, mode) = match node {
                Node::Char { major, minor, mode } => (format!("c {major} {minor}"), 0o020000, mode),
                Node::Block { major, minor, mode } => (format!("b {major} {minor}"), 0o060000, mode),
                Node::Fifo { mode } => ("p".to_owned(), 0o010000, mode),
            };
            // debugfs links a new node's name in the current directory.
            script.push_str(&format!("rm {quoted}\ncd {parent}\nmknod \"{base}\" {spec}\ncd \"/\"\n"));
            script.push_str(&format!("sif {quoted} mode 0{:o}\n", type_bits | (mode & 0o7777)));
            script.push_str(&format!("sif {quoted} uid {}\nsif {quoted} gid {}\n", fixup.uid, fixup.gid));
        }
        if let Some(mode) = fixup.mode {
            script.push_str(&format!("sif {quoted} mode 0{mode:o}\n"));
        }
        for (j, (name, value)) in fixup.xattrs.iter().enumerate() {
            let Some(name) = name.to_str().filter(|n| n.bytes().all(|b| b.is_ascii_graphic() && b != b'"'))
            else {
                continue;
            };
            let value_file = values.path().join(format!("{i}-{j}"));
            fs::write(&value_file, value).map_err(io(&value_file))?;
            let value_file = quote(&value_file).expect("a temporary path is plain");
            script.push_str(&format!("ea_set -f {value_file} {quoted} {name}\n"));
        }
    }
    let script_file = values.path().join("script");
    fs::write(&script_file, &script).map_err(io(&script_file))?;
    let mut command = Command::new("debugfs");
    command.arg("-w").arg("-f").arg(&script_file).arg(file);
    let output = command.stdin(std::process::Stdio::null()).output().map_err(|source| Error::Spawn {
        program: "debugfs".to_owned(),
        package: "e2fsprogs",
        source,
    })?;
    // debugfs exits 0 whatever its commands did; its errors are the stderr
    // lines other than its version banner.
    let errors: Vec<&str> = std::str::from_utf8(&output.stderr)
        .unwrap_or("")
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("debugfs "))
        .collect();
    if !output.status.success() || !errors.is_empty() {
        return Err(Error::Command {
            command: format!("debugfs -w -f {} {}", script_file.display(), file.display()),
            output: errors.join("; "),
        });
    }
    Ok(())
}

/// A directory removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// `"path"` as debugfs reads an argument, absolute in the image; `None` for
/// names it cannot take (a quote or a line break in them, or not UTF-8).
fn quote(path: &Path) -> Option<String> {
    let text = path.to_str()?;
    if text.contains(['"', '\n', '\r', '\0']) {
        return None;
    }
    let text = text.trim_start_matches('/');
    Some(format!("\"/{text}\""))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::unpack::{Limits, Unpack};

    fn entry(builder: &mut tar::Builder<Vec<u8>>, kind: tar::EntryType, path: &str, mode: u32, data: &[u8]) {
        let mut header = tar::Header::new_ustar();
        header.set_entry_type(kind);
        header.set_mode(mode);
        header.set_size(data.len() as u64);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        if kind == tar::EntryType::Char {
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
        }
        builder.append_data(&mut header, path, data).unwrap();
    }

    fn debugfs(image: &Path, request: &str) -> String {
        let out = Command::new("debugfs").arg("-R").arg(request).arg(image).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Issue 13, item 7: what the host tree must not hold still reaches the
    /// guest's root file system.
    #[test]
    fn fixups_put_set_id_bits_nodes_and_capabilities_in_the_image() {
        let mut builder = tar::Builder::new(Vec::new());
        entry(&mut builder, tar::EntryType::Directory, "usr", 0o755, b"");
        entry(&mut builder, tar::EntryType::Regular, "usr/sudo", 0o4755, b"sudo");
        entry(&mut builder, tar::EntryType::Directory, "mail", 0o2775, b"");
        entry(&mut builder, tar::EntryType::Directory, "dev", 0o755, b"");
        entry(&mut builder, tar::EntryType::Char, "dev/null", 0o666, b"");
        entry(&mut builder, tar::EntryType::Fifo, "dev/my pipe", 0o620, b"");
        let pax = b"40 SCHILY.xattr.security.capability=cap\n";
        entry(&mut builder, tar::EntryType::XHeader, "PaxHeaders/ping", 0o644, pax);
        entry(&mut builder, tar::EntryType::Regular, "usr/ping", 0o755, b"ping");
        let layer = builder.into_inner().unwrap();

        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("rootfs");
        fs::create_dir(&tree).unwrap();
        let mut unpack = Unpack::new(&tree, Limits::default());
        unpack.layer(&layer[..]).unwrap();
        let fixups = unpack.finish();
        let image = dir.path().join("rootfs.ext4");
        make(&tree, &image, 64 << 20, 4096, &fixups).unwrap();
        assert!(!dir.path().join("rootfs.fixups").exists(), "the scratch directory is removed");

        let sudo = debugfs(&image, "stat /usr/sudo");
        assert!(sudo.contains("Type: regular") && sudo.contains("Mode:  04755"), "{sudo}");
        let mail = debugfs(&image, "stat /mail");
        assert!(mail.contains("Type: directory") && mail.contains("Mode:  02775"), "{mail}");
        let null = debugfs(&image, "stat /dev/null");
        assert!(null.contains("Type: character special") && null.contains("Mode:  0666"), "{null}");
        assert!(null.contains("Device major/minor number: 01:03"), "{null}");
        let pipe = debugfs(&image, "stat \"/dev/my pipe\"");
        assert!(pipe.contains("Type: FIFO") && pipe.contains("Mode:  0620"), "{pipe}");
        let ping = debugfs(&image, "ea_get /usr/ping security.capability");
        assert!(ping.contains("cap"), "{ping}");
        let check = Command::new("e2fsck").args(["-fn"]).arg(&image).output().unwrap();
        assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    }
}
