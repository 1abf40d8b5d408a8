//! Writes initramfs archives: the `newc` cpio format the kernel unpacks
//! into its root file system before running `/init`.
//!
//! hearth builds the initramfs itself (agent as `/init`, the virtio modules,
//! a modules list), so no `cpio` or `mkinitramfs` is needed on the host and
//! the archive is reproducible: every entry has mtime 0 and owner root.

use std::io::{self, Write};

/// An archive being written. Directories must be added before their contents.
#[derive(Debug)]
pub struct Writer<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

const MODE_DIR: u32 = 0o040000;
const MODE_FILE: u32 = 0o100000;
const MODE_SYMLINK: u32 = 0o120000;

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Self {
        Self { out, ino: 1, written: 0 }
    }

    /// Adds a directory, e.g. `lib/modules` (no leading slash).
    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.entry(path, MODE_DIR | (perm & 0o7777), 2, &[])
    }

    /// Adds a regular file with the given contents.
    pub fn file(&mut self, path: &str, perm: u32, data: &[u8]) -> io::Result<()> {
        self.entry(path, MODE_FILE | (perm & 0o7777), 1, data)
    }

    /// Adds a symbolic link pointing at `target`.
    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.entry(path, MODE_SYMLINK | 0o777, 1, target.as_bytes())
    }

    /// Writes the trailer and returns the underlying writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.ino = 0;
        self.entry("TRAILER!!!", 0, 1, &[])?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn entry(&mut self, path: &str, mode: u32, nlink: u32, data: &[u8]) -> io::Result<()> {
        let path = path.trim_start_matches('/');
        if path.is_empty() || path.as_bytes().contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad archive path {path:?}")));
        }
        let size = u32::try_from(data.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path} is over 4 GiB")))?;
        let name_len = u32::try_from(path.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path too long"))?;
        let ino = self.ino;
        if ino != 0 {
            self.ino += 1;
        }
        // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
        // devminor, rdevmajor, rdevminor, namesize, check
        let header = format!(
            "070701{ino:08x}{mode:08x}{:08x}{:08x}{nlink:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_len:08x}{:08x}",
            0, 0, 0, 0, 0, 0, 0, 0
        );
        self.write(header.as_bytes())?;
        self.write(path.as_bytes())?;
        self.write(&[0])?;
        self.pad()?;
        self.write(data)?;
        self.pad()
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.write(&[0u8; 3][..4 - rem])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_newc_headers_padded_to_four_bytes() {
        let mut w = Writer::new(Vec::new());
        w.dir("etc", 0o755).expect("dir");
        w.file("etc/hostname", 0o644, b"n1\n").expect("file");
        let bytes = w.finish().expect("finish");
        assert_eq!(bytes.len() % 4, 0);
        assert!(bytes.starts_with(b"070701"));
        // mode of the first entry: directory 0755.
        assert_eq!(&bytes[14..22], b"000041ed");
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("etc/hostname\0"));
        assert!(text.contains("n1\n"));
        assert!(text.contains("TRAILER!!!\0"));
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut w = Writer::new(Vec::new());
        assert!(w.file("/", 0o644, b"").is_err());
        assert!(w.file("a\0b", 0o644, b"").is_err());
    }

    /// The host's `cpio` (`make setup` installs it) must list exactly what
    /// we wrote.
    #[test]
    fn host_cpio_reads_the_archive() {
        let status = std::process::Command::new("cpio")
            .arg("--version")
            .output()
            .expect("cpio is not installed; `make setup` installs it");
        assert!(status.status.success());
        let mut w = Writer::new(Vec::new());
        w.dir("bin", 0o755).expect("dir");
        w.file("bin/x", 0o755, b"#!/bin/sh\n").expect("file");
        w.symlink("init", "bin/x").expect("symlink");
        let bytes = w.finish().expect("finish");
        let mut child = std::process::Command::new("cpio")
            .args(["-t", "--quiet"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn cpio");
        child.stdin.take().expect("stdin").write_all(&bytes).expect("write");
        let out = child.wait_with_output().expect("wait");
        assert_eq!(String::from_utf8_lossy(&out.stdout), "bin\nbin/x\ninit\n");
    }
}
