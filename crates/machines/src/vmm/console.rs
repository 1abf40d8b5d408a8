//! The console log: what a guest prints on its serial console, kept to a
//! bounded size on the host.
//!
//! The VMM writes `console.log` itself, opened with `O_APPEND` (QEMU's
//! `-chardev file,append=on`, Firecracker's stdout), so the log survives a
//! daemon restart like the VM does. The daemon bounds it once it is over
//! [`MAX_BYTES`], keeping one old file, `console.log.1`, in one of two
//! ways:
//!
//! - [`rotate_by_reopen`], for a VMM that can be pointed at a new file
//!   (QEMU's `chardev-change`): the file is renamed to `console.log.1`,
//!   where the VMM goes on writing until it has the new `console.log`.
//!   Nothing the guest prints is lost.
//! - [`rotate_if_full`], for one that cannot (Firecracker, whose console
//!   is its standard output): copy and truncate, as logrotate's
//!   `copytruncate` does. What the guest prints between the copy and the
//!   truncation is lost.
//!
//! Either way a new inode of `console.log.1` marks each rotation, and
//! while no daemon runs the file is not rotated.
//!
//! Readers never take the whole file: [`read_end`] reads back from the end
//! in blocks, and [`Follower`] picks up a rotation by the new inode of
//! `console.log.1`.

use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The size `console.log` is rotated past: 4 MiB, so a machine's console
/// takes at most about twice that on the host.
pub const MAX_BYTES: u64 = 4 << 20;
/// The most [`read_end`] answers: both files at their largest.
pub const READ_LIMIT: u64 = 2 * MAX_BYTES;
const BLOCK: u64 = 64 << 10;

/// `console.log.1`, beside `console`.
pub fn rotated(console: &Path) -> PathBuf {
    beside(console, ".1")
}

/// Rotates `console` if it is over `max` bytes: it goes to `console.log.1`
/// (only its last `max` bytes if it grew past twice that, as it can while
/// no daemon runs) and is truncated. Answers whether it rotated.
pub fn rotate_if_full(console: &Path, max: u64) -> io::Result<bool> {
    let mut file = match File::open(console) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    if len <= max {
        return Ok(false);
    }
    let keep = if len <= 2 * max { len } else { max };
    copy_end(&mut file, len, keep, &rotated(console))?;
    fs::OpenOptions::new().write(true).open(console)?.set_len(0)?;
    Ok(true)
}

/// Rotates `log` for a VMM that can switch to a new file, losing nothing.
///
/// A new file, `LOG.new`, is handed to `reopen`, which points the VMM at
/// it; only then is `log` renamed to `LOG.1` and `LOG.new` to `log`. So the
/// VMM never writes to a file being moved, and a [`Follower`] reads all of
/// the old `log` before it becomes `LOG.1`. If `reopen` fails, `LOG.new`
/// is removed and nothing else changes. Afterwards `LOG.1` is cut to its
/// last `max` bytes if it is over twice that (as it is when it grew while
/// no daemon ran).
///
/// It rotates when `log` is over `max`, or when `LOG.1` is over twice
/// that: then the VMM still writes there, as after a daemon that stopped
/// between switching and renaming. A `LOG.new` left by such a stop is
/// renamed into place first, whether or not the VMM was switched to it (if
/// it was not, the VMM writes to `LOG.1` until that rule catches it).
/// Answers whether it rotated.
pub fn rotate_by_reopen<E: From<io::Error>>(
    log: &Path,
    max: u64,
    reopen: impl FnOnce(&File) -> Result<(), E>,
) -> Result<bool, E> {
    let (old, new) = (rotated(log), beside(log, ".new"));
    if new.exists() {
        put_in_place(log, &old, &new)?;
        return Ok(true);
    }
    if size(log)? <= max && size(&old)? <= 2 * max {
        return Ok(false);
    }
    let file = open_log(&new, true)?;
    if let Err(error) = reopen(&file) {
        let _ = fs::remove_file(&new);
        return Err(error);
    }
    put_in_place(log, &old, &new)?;
    let len = size(&old)?;
    if len > 2 * max {
        keep_end(&old, len, max)?;
    }
    Ok(true)
}

/// `log` becomes `old` and `new` becomes `log`.
fn put_in_place(log: &Path, old: &Path, new: &Path) -> io::Result<()> {
    match fs::rename(log, old) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    fs::rename(new, log)
}

/// The size of `path`, 0 if it does not exist.
fn size(path: &Path) -> io::Result<u64> {
    match fs::metadata(path) {
        Ok(meta) => Ok(meta.len()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(e),
    }
}

/// `path` with `suffix` added to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    path.with_file_name(name)
}

/// A log for a VMM to append to, made if missing (with `new`, it must be)
/// and private to the daemon's user and group.
pub fn open_log(path: &Path, new: bool) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new().append(true).create(true).create_new(new).mode(0o640).open(path)
}

/// Replaces `path` (`len` bytes long, written by nobody now) with its last
/// `keep` bytes.
fn keep_end(path: &Path, len: u64, keep: u64) -> io::Result<()> {
    copy_end(&mut File::open(path)?, len, keep, path)
}

/// Writes the last `keep` bytes of `file` (`len` bytes long) to `dest`:
/// beside it first, then renamed into place, so `dest` gets a new inode.
fn copy_end(file: &mut File, len: u64, keep: u64, dest: &Path) -> io::Result<()> {
    let temp = beside(dest, ".tmp");
    file.seek(SeekFrom::Start(len - keep))?;
    let mut out = File::create(&temp)?;
    io::copy(&mut file.take(keep), &mut out)?;
    out.flush()?;
    fs::rename(&temp, dest)
}

/// The end of the log: the last `lines` lines (all of it for `None`), from
/// `console.log.1` too when `console.log` has too few, and never more than
/// [`READ_LIMIT`] bytes. Also where a [`Follower`] should go on from.
pub fn read_end(console: &Path, lines: Option<usize>) -> io::Result<(Vec<u8>, Follower)> {
    let follower = Follower { console: console.to_owned(), offset: 0, generation: generation(console) };
    let (mut text, len, complete) = read_back(console, lines, READ_LIMIT)?;
    let mut follower = follower;
    follower.offset = len;
    if !complete && (text.len() as u64) < READ_LIMIT {
        let (mut older, _, _) = read_back(&rotated(console), None, READ_LIMIT - text.len() as u64)?;
        older.extend_from_slice(&text);
        text = older;
    }
    if let Some(n) = lines {
        let start = tail_offset(&text, n);
        text.drain(..start);
    }
    Ok((text, follower))
}

/// Up to `limit` bytes from the end of `path`, stopping early once they
/// hold `lines` whole lines: the bytes, the file's length, and whether they
/// were enough (the lines were found, or the limit reached).
fn read_back(path: &Path, lines: Option<usize>, limit: u64) -> io::Result<(Vec<u8>, u64, bool)> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0, false)),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    let mut start = len;
    let mut text: Vec<u8> = Vec::new();
    while start > 0 && (text.len() as u64) < limit {
        let size = BLOCK.min(start).min(limit - text.len() as u64);
        start -= size;
        let mut block = vec![0u8; size as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut block)?;
        block.extend_from_slice(&text);
        text = block;
        if lines.is_some_and(|n| newlines_before_last(&text) >= n) {
            return Ok((text, len, true));
        }
    }
    Ok((text, len, start > 0))
}

/// Newlines in `text`, not counting one that ends it.
fn newlines_before_last(text: &[u8]) -> usize {
    let end = if text.ends_with(b"\n") { text.len() - 1 } else { text.len() };
    text[..end].iter().filter(|b| **b == b'\n').count()
}

/// Where the last `lines` lines of `text` start.
fn tail_offset(text: &[u8], lines: usize) -> usize {
    let mut seen = 0;
    let end = if text.ends_with(b"\n") { text.len() - 1 } else { text.len() };
    for (i, b) in text[..end].iter().enumerate().rev() {
        if *b == b'\n' {
            seen += 1;
            if seen == lines {
                return i + 1;
            }
        }
    }
    0
}

/// The inode of `console.log.1`, which changes with each rotation.
fn generation(console: &Path) -> Option<u64> {
    fs::metadata(rotated(console)).ok().map(|m| m.ino())
}

/// Reads what is appended to a console log, across rotations.
#[derive(Debug, Clone)]
pub struct Follower {
    console: PathBuf,
    /// How far into `console.log` has been read.
    offset: u64,
    generation: Option<u64>,
}

impl Follower {
    /// The same log, read from its first byte on (of `console.log`; what
    /// rotated out before is not read).
    pub fn from_start(self) -> Self {
        Self { offset: 0, ..self }
    }

    /// What was written since the last call, at most [`READ_LIMIT`] bytes;
    /// empty when nothing was.
    pub fn read_new(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let generation = generation(&self.console);
        if generation != self.generation {
            // Rotated: the rest of the old file is in `console.log.1`, at
            // the same offsets unless the copy had to drop its start.
            self.generation = generation;
            if let Ok(mut old) = File::open(rotated(&self.console)) {
                let len = old.metadata()?.len();
                if len > self.offset {
                    old.seek(SeekFrom::Start(self.offset))?;
                    old.take(READ_LIMIT).read_to_end(&mut out)?;
                }
            }
            self.offset = 0;
        }
        let mut file = match File::open(&self.console) {
            Ok(file) => file,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        if len < self.offset {
            // Truncated, and `console.log.1` not renamed yet: next time.
            return Ok(out);
        }
        file.seek(SeekFrom::Start(self.offset))?;
        let limit = READ_LIMIT.saturating_sub(out.len() as u64);
        let before = out.len();
        file.take(limit).read_to_end(&mut out)?;
        self.offset += (out.len() - before) as u64;
        Ok(out)
    }
}

/// Which of a machine's logs to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Source {
    /// The serial console: the kernel and the agent.
    Console,
    /// The main process's output, each line `out| ` or `err| `.
    Main,
    /// Both, each line labelled `console| ` or `main `.
    #[default]
    All,
}

/// Renders lines read from a log for `source`: `from_console` says whether
/// they came from `console.log`, where the main process's lines are the
/// ones prefixed [`hearth_agent::main_process::CONSOLE_PREFIX`] (machines
/// without a `main.log`: Firecracker), or from `main.log`. The last line
/// counts as a line even without its newline.
pub fn render(source: Source, from_console: bool, text: &[u8]) -> Vec<u8> {
    let prefix = hearth_agent::main_process::CONSOLE_PREFIX.as_bytes();
    let mut out = Vec::with_capacity(text.len() + text.len() / 8);
    for line in text.split_inclusive(|b| *b == b'\n') {
        let main = if from_console { line.strip_prefix(prefix) } else { Some(line) };
        let (label, line): (&[u8], &[u8]) = match (source, main) {
            (Source::Console, None) | (Source::Main, Some(_)) => (b"", main.unwrap_or(line)),
            (Source::All, None) => (b"console| ", line),
            (Source::All, Some(main)) => (b"main ", main),
            (Source::Console, Some(_)) | (Source::Main, None) => continue,
        };
        out.extend_from_slice(label);
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out
}

/// Holds back an unfinished last line until its end arrives, so that
/// [`render`] labels whole lines.
#[derive(Debug, Default)]
pub struct Lines {
    partial: Vec<u8>,
}

impl Lines {
    /// The complete lines so far, with `chunk` appended.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.partial.extend_from_slice(chunk);
        match self.partial.iter().rposition(|b| *b == b'\n') {
            Some(end) => {
                let rest = self.partial.split_off(end + 1);
                std::mem::replace(&mut self.partial, rest)
            }
            None => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn main_lines_are_told_apart_from_the_console_and_labelled() {
        let console = b"[ 0.1] booting\nhearth-main out| from firecracker\nhearth-agent: ready";
        let main = b"out| hello\nerr| oops\n";
        let text = |b: Vec<u8>| String::from_utf8(b).unwrap();
        assert_eq!(text(render(Source::Console, true, console)), "[ 0.1] booting\nhearth-agent: ready\n");
        assert_eq!(text(render(Source::Main, true, console)), "out| from firecracker\n");
        assert_eq!(text(render(Source::Main, false, main)), "out| hello\nerr| oops\n");
        assert_eq!(
            text(render(Source::All, true, console)),
            "console| [ 0.1] booting\nmain out| from firecracker\nconsole| hearth-agent: ready\n"
        );
        assert_eq!(text(render(Source::All, false, main)), "main out| hello\nmain err| oops\n");
    }

    #[test]
    fn a_followed_line_is_labelled_once_it_is_whole() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"out| hel"), b"");
        assert_eq!(lines.push(b"lo\nerr| oo"), b"out| hello\n");
        assert_eq!(lines.push(b"ps\n"), b"err| oops\n");
    }

    fn lines(from: usize, to: usize) -> String {
        (from..to).map(|i| format!("line {i}\n")).collect()
    }

    #[test]
    fn the_log_is_rotated_past_its_limit_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        fs::write(&console, lines(0, 10)).unwrap();
        assert!(!rotate_if_full(&console, 1000).unwrap(), "under the limit");
        fs::write(&console, lines(0, 200)).unwrap(); // ~1.7 KB
        assert!(rotate_if_full(&console, 1000).unwrap());
        assert_eq!(fs::metadata(&console).unwrap().len(), 0);
        assert_eq!(fs::read_to_string(rotated(&console)).unwrap(), lines(0, 200));
        // Far over (no daemon was rotating it): only the end is kept.
        fs::write(&console, lines(0, 400)).unwrap(); // ~3.5 KB
        assert!(rotate_if_full(&console, 1000).unwrap());
        let old = fs::read_to_string(rotated(&console)).unwrap();
        assert_eq!(old.len(), 1000, "only the end is kept");
        assert!(old.ends_with("line 399\n"));

        // An appending writer goes on at the start, as the VMM does.
        let mut writer = fs::OpenOptions::new().append(true).open(&console).unwrap();
        writer.write_all(lines(400, 600).as_bytes()).unwrap();
        assert!(rotate_if_full(&console, 1000).unwrap());
        let old = fs::read_to_string(rotated(&console)).unwrap();
        assert_eq!(old, lines(400, 600), "one old file is kept, written from the start");
        assert!(fs::metadata(&console).unwrap().len() == 0);
    }

    #[test]
    fn a_reopened_log_loses_nothing_the_vmm_writes_while_it_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("main.log");
        // The VMM's descriptor: it follows the file through the rename.
        let mut vmm = fs::OpenOptions::new().append(true).create(true).open(&log).unwrap();
        vmm.write_all(lines(0, 10).as_bytes()).unwrap();
        let untouched = rotate_by_reopen(&log, 1000, |_| -> io::Result<()> { panic!("under the limit") });
        assert!(!untouched.unwrap());

        vmm.write_all(lines(10, 200).as_bytes()).unwrap();
        let mut follower = read_end(&log, None).unwrap().1;
        let rotated_now = rotate_by_reopen(&log, 1000, |new: &File| -> io::Result<()> {
            // Written before the VMM has the new file.
            vmm.write_all(lines(200, 210).as_bytes())?;
            vmm = new.try_clone()?;
            Ok(())
        });
        assert!(rotated_now.unwrap());
        vmm.write_all(lines(210, 220).as_bytes()).unwrap();
        assert_eq!(fs::read_to_string(rotated(&log)).unwrap(), lines(0, 210));
        assert_eq!(fs::read_to_string(&log).unwrap(), lines(210, 220));
        assert_eq!(
            String::from_utf8(follower.read_new().unwrap()).unwrap(),
            lines(200, 220),
            "a follower misses nothing"
        );
        let mode = fs::metadata(&log).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640, "a new log is the daemon's");
    }

    #[test]
    fn a_reopen_that_fails_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, lines(0, 200)).unwrap();
        fs::write(rotated(&log), lines(0, 5)).unwrap();
        let error = rotate_by_reopen(&log, 1000, |_| Err(io::Error::other("QEMU said no"))).unwrap_err();
        assert_eq!(error.to_string(), "QEMU said no");
        assert_eq!(fs::read_to_string(&log).unwrap(), lines(0, 200));
        assert_eq!(fs::read_to_string(rotated(&log)).unwrap(), lines(0, 5));
        assert!(!beside(&log, ".new").exists());
    }

    #[test]
    fn a_rotation_cut_short_is_finished_and_a_vmm_still_writing_the_old_file_is_moved() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        // Stopped after the switch: LOG.new is the VMM's file.
        fs::write(&log, lines(0, 200)).unwrap();
        fs::write(beside(&log, ".new"), lines(200, 210)).unwrap();
        assert!(rotate_by_reopen(&log, 1000, |_| -> io::Result<()> { panic!("no switch needed") }).unwrap());
        assert_eq!(fs::read_to_string(rotated(&log)).unwrap(), lines(0, 200));
        assert_eq!(fs::read_to_string(&log).unwrap(), lines(200, 210));

        // Stopped before the switch: the VMM writes LOG.1 while `log` stays
        // small; once LOG.1 is over twice the limit, the VMM is moved.
        fs::write(rotated(&log), lines(0, 300)).unwrap(); // ~2.6 KB
        let mut switched = false;
        assert!(
            rotate_by_reopen(&log, 1000, |_| -> io::Result<()> {
                switched = true;
                Ok(())
            })
            .unwrap()
        );
        assert!(switched);
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
    }

    #[test]
    fn a_log_far_over_its_limit_keeps_only_its_end_once_reopened() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("console.log");
        fs::write(&log, lines(0, 400)).unwrap(); // ~3.5 KB: no daemon was rotating it
        assert!(rotate_by_reopen(&log, 1000, |_| -> io::Result<()> { Ok(()) }).unwrap());
        let old = fs::read_to_string(rotated(&log)).unwrap();
        assert_eq!(old.len(), 1000, "only the end is kept");
        assert!(old.ends_with("line 399\n"));
        assert_eq!(fs::metadata(&log).unwrap().len(), 0);
    }

    #[test]
    fn tail_reads_only_the_end_of_a_large_log() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        // Larger than READ_LIMIT: reading it whole would be refused below.
        let mut file = File::create(&console).unwrap();
        let junk = vec![b'x'; 1 << 20];
        for _ in 0..(READ_LIMIT >> 20) + 2 {
            file.write_all(&junk).unwrap();
        }
        file.write_all(b"\nlast but one\nlast\n").unwrap();
        let (text, _) = read_end(&console, Some(2)).unwrap();
        assert_eq!(text, b"last but one\nlast\n");
        let (all, _) = read_end(&console, None).unwrap();
        assert_eq!(all.len() as u64, READ_LIMIT, "everything is bounded too");
        assert!(all.ends_with(b"last\n"));
    }

    #[test]
    fn tail_takes_older_lines_from_the_rotated_file() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        fs::write(rotated(&console), lines(0, 5)).unwrap();
        fs::write(&console, lines(5, 7)).unwrap();
        let (text, _) = read_end(&console, Some(4)).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), lines(3, 7));
        let (text, _) = read_end(&console, Some(1)).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), lines(6, 7));
        let (text, _) = read_end(&console, None).unwrap();
        assert_eq!(String::from_utf8(text).unwrap(), lines(0, 7));
    }

    #[test]
    fn a_follower_keeps_going_across_a_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let console = dir.path().join("console.log");
        let mut writer = fs::OpenOptions::new().create(true).append(true).open(&console).unwrap();
        writer.write_all(lines(0, 3).as_bytes()).unwrap();
        let (head, mut follower) = read_end(&console, None).unwrap();
        assert_eq!(String::from_utf8(head).unwrap(), lines(0, 3));
        writer.write_all(lines(3, 5).as_bytes()).unwrap();
        // Not read yet when the log rotates; then more is written.
        assert!(rotate_if_full(&console, 10).unwrap());
        writer.write_all(lines(5, 6).as_bytes()).unwrap();
        let mut seen = follower.read_new().unwrap();
        seen.extend(follower.read_new().unwrap());
        // The copy kept only its last 10 bytes, at other offsets: skipped.
        assert_eq!(String::from_utf8(seen).unwrap(), lines(5, 6));

        // The usual case: the rotated file holds everything.
        let console = dir.path().join("other.log");
        let mut writer = fs::OpenOptions::new().create(true).append(true).open(&console).unwrap();
        writer.write_all(lines(0, 3).as_bytes()).unwrap();
        let (_, mut follower) = read_end(&console, None).unwrap();
        writer.write_all(lines(3, 5).as_bytes()).unwrap();
        assert!(rotate_if_full(&console, 30).unwrap());
        writer.write_all(lines(5, 6).as_bytes()).unwrap();
        let seen = follower.read_new().unwrap();
        assert_eq!(String::from_utf8(seen).unwrap(), lines(3, 6));
        writer.write_all(lines(6, 7).as_bytes()).unwrap();
        assert_eq!(String::from_utf8(follower.read_new().unwrap()).unwrap(), lines(6, 7));
    }
}
