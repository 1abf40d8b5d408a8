//! A real SMTP server on loopback for tests: `aiosmtpd` (Debian's
//! `python3-aiosmtpd`, which `make setup` installs) storing every mail it
//! accepts in a maildir, killed and removed when the [`SmtpSink`] drops.
//!
//! A test that needs it fails when aiosmtpd is missing, naming `make
//! setup`: a mail test that skips would pass unseen.

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;

/// How long aiosmtpd gets to open its port.
const READY_TIMEOUT: Duration = Duration::from_secs(20);

/// The Python interpreters tried, in order: the one on `PATH`, then
/// Debian's, where `python3-aiosmtpd` is installed (a `PATH` can put
/// another Python first, pyenv's say).
const PYTHONS: [&str; 2] = ["python3", "/usr/bin/python3"];

/// A running aiosmtpd and its maildir.
#[derive(Debug)]
pub struct SmtpSink {
    child: Child,
    addr: SocketAddr,
    dir: tempfile::TempDir,
}

/// One mail as the sink stored it.
#[derive(Debug, Clone)]
pub struct Mail {
    /// The file's name in the maildir.
    pub file: String,
    /// The whole mail, as stored.
    pub raw: String,
    /// Header names and values, unfolded, in order.
    pub headers: Vec<(String, String)>,
    /// The body, its transfer encoding (quoted-printable or base64)
    /// decoded.
    pub body: String,
}

impl Mail {
    /// The first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn parse(file: String, raw: String) -> Mail {
        let text = raw.replace("\r\n", "\n");
        let (head, body) = text.split_once("\n\n").unwrap_or((&text, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.lines() {
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = headers.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
            } else if let Some((name, value)) = line.split_once(':') {
                headers.push((name.trim().to_owned(), value.trim().to_owned()));
            }
        }
        let mut mail = Mail { file, raw, headers, body: String::new() };
        let encoding = mail.header("Content-Transfer-Encoding").unwrap_or("7bit").to_ascii_lowercase();
        mail.body = match encoding.as_str() {
            "quoted-printable" => quoted_printable(body),
            "base64" => {
                let compact: String = body.split_whitespace().collect();
                let bytes = base64::engine::general_purpose::STANDARD.decode(compact).unwrap_or_default();
                String::from_utf8_lossy(&bytes).into_owned()
            }
            _ => body.to_owned(),
        };
        mail
    }
}

fn quoted_printable(text: &str) -> String {
    let mut out = Vec::new();
    let mut lines = text.split('\n').peekable();
    while let Some(line) = lines.next() {
        // A line ending in `=` continues on the next (a soft break).
        let (line, soft) = match line.strip_suffix('=') {
            Some(line) => (line, true),
            None => (line, false),
        };
        let raw = line.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match (raw[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'=', Some(byte)) => {
                    out.push(byte);
                    i += 3;
                }
                (byte, _) => {
                    out.push(byte);
                    i += 1;
                }
            }
        }
        if !soft && lines.peek().is_some() {
            out.push(b'\n');
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The Python that has aiosmtpd, if any.
fn python() -> Option<&'static str> {
    PYTHONS.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Whether `addr` accepts before `child` exits or time runs out.
async fn wait_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return true;
        }
        if child.try_wait().ok().flatten().is_some() {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

impl SmtpSink {
    /// Starts aiosmtpd on a free loopback port, plain SMTP (no STARTTLS,
    /// no login). Panics, naming `make setup`, when aiosmtpd is missing.
    pub async fn start() -> SmtpSink {
        let python = python().unwrap_or_else(|| {
            panic!(
                "aiosmtpd is missing (none of {PYTHONS:?} can import it): run `make setup`, which installs \
                 Debian's python3-aiosmtpd"
            )
        });
        let dir = tempfile::tempdir().expect("a temporary dir for the maildir");
        let maildir = dir.path().join("maildir");
        // A free port, given to aiosmtpd after this process lets it go; if
        // another process takes it meanwhile, aiosmtpd exits and another
        // port is tried.
        for _ in 0..5 {
            let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .and_then(|l| l.local_addr())
                .expect("a free loopback port")
                .port();
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            let log = std::fs::File::create(dir.path().join("aiosmtpd.log")).expect("aiosmtpd's log file");
            let mut child = Command::new(python)
                .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&maildir)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("aiosmtpd's log file"))
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| panic!("starting {python} -m aiosmtpd: {e}"));
            if wait_ready(&mut child, addr).await {
                return SmtpSink { child, addr, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("aiosmtpd.log")).unwrap_or_default();
        panic!("aiosmtpd did not start; its log:\n{log}");
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:PORT`, as a rules file's `smtp` takes it.
    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// The maildir aiosmtpd writes to.
    pub fn maildir(&self) -> PathBuf {
        self.dir.path().join("maildir")
    }

    /// Every mail received so far, oldest first.
    pub fn mails(&self) -> Vec<Mail> {
        let mut mails = Vec::new();
        for sub in ["new", "cur"] {
            let Ok(entries) = std::fs::read_dir(self.maildir().join(sub)) else { continue };
            for entry in entries.flatten() {
                let modified = entry.metadata().and_then(|m| m.modified()).ok();
                let file = entry.file_name().to_string_lossy().into_owned();
                if let Ok(raw) = std::fs::read(entry.path()) {
                    mails.push((modified, Mail::parse(file, String::from_utf8_lossy(&raw).into_owned())));
                }
            }
        }
        mails.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.file.cmp(&b.1.file)));
        mails.into_iter().map(|(_, mail)| mail).collect()
    }

    /// The mails once there are at least `count`, or whatever came within
    /// `timeout`.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + timeout;
        loop {
            let mails = self.mails();
            if mails.len() >= count || Instant::now() >= deadline {
                return mails;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_mail_is_read_with_its_headers_unfolded_and_body_decoded() {
        let raw = "Subject: [FIRING:1]\r\n rule\r\nMessage-ID: <a@b>\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nline =C3=A9\r\nlong=\r\n line\r\n";
        let mail = Mail::parse("f".into(), raw.into());
        assert_eq!(mail.header("subject"), Some("[FIRING:1] rule"));
        assert_eq!(mail.header("Message-Id"), Some("<a@b>"));
        assert_eq!(mail.body, "line é\nlong line\n");

        let raw = "Content-Transfer-Encoding: base64\n\naMOpbGxv\n";
        assert_eq!(Mail::parse("f".into(), raw.into()).body, "héllo");
    }
}
