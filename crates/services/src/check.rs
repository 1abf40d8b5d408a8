//! Health checks: what they are ([`CheckSpec`], and the one-line form
//! `--check` takes), how one result moves an instance's state
//! ([`Tracker::observe`]), and the probes that need no guest ([`http`],
//! [`tcp`]). An `exec` check runs through the machine's agent (see
//! `supervise.rs`); a `ttl` check is passed by heartbeats.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::record::Status;

/// A check's default interval: a failure is seen within seconds.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
/// A check's default timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const MIN_INTERVAL: Duration = Duration::from_millis(200);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// How much of a check's output is kept.
const MAX_OUTPUT: usize = 256;

/// One check of an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckSpec {
    #[serde(flatten)]
    pub kind: CheckKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Passing results in a row that make a critical instance passing.
    pub passes: u32,
    /// Failing results in a row that make a passing instance critical.
    pub failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum CheckKind {
    /// `GET path`: 2xx (or exactly `status`) passes, 429 warns, anything else fails.
    Http { path: String, status: Option<u16> },
    /// A TCP connection to the port is accepted.
    Tcp,
    /// A command in the machine (`sh -c`): exit 0 passes, 1 warns, anything else fails.
    Exec { command: String },
    /// Passing while heartbeats arrive at least every `ttl_s` seconds.
    Ttl { ttl_s: u64 },
}

impl CheckKind {
    pub fn name(&self) -> &'static str {
        match self {
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp => "tcp",
            CheckKind::Exec { .. } => "exec",
            CheckKind::Ttl { .. } => "ttl",
        }
    }
}

impl CheckSpec {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// Checks a spec that came as JSON; the error says what to change.
    pub fn validate(&self) -> Result<(), String> {
        let interval = self.interval();
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(format!(
                "a check interval of {} ms is out of range: give from {} ms to 1 h",
                self.interval_ms,
                MIN_INTERVAL.as_millis()
            ));
        }
        if self.timeout_ms == 0 || self.timeout_ms > self.interval_ms {
            return Err(format!(
                "a check timeout of {} ms must be above 0 and at most the interval ({} ms)",
                self.timeout_ms, self.interval_ms
            ));
        }
        if !(1..=100).contains(&self.passes) || !(1..=100).contains(&self.failures) {
            return Err("passes and failures must each be from 1 to 100".into());
        }
        match &self.kind {
            CheckKind::Http { path, status } => {
                if !path.starts_with('/')
                    || path.len() > 1024
                    || path.chars().any(|c| c.is_whitespace() || c.is_control())
                {
                    return Err(format!("{path:?} is not an HTTP path: give one like /healthz"));
                }
                if status.is_some_and(|s| !(100..=599).contains(&s)) {
                    return Err("an expected HTTP status must be from 100 to 599".into());
                }
            }
            CheckKind::Exec { command } => {
                if command.trim().is_empty() || command.len() > 4096 {
                    return Err(
                        "an exec check needs a command (at most 4096 bytes), like exec:pg_isready".into()
                    );
                }
            }
            CheckKind::Ttl { ttl_s } => {
                if !(1..=86_400).contains(ttl_s) {
                    return Err("a TTL must be from 1 s to 1 day".into());
                }
            }
            CheckKind::Tcp => {}
        }
        Ok(())
    }
}

/// Reads the one-line form: `KIND[:ARG][,OPTION=VALUE]...`:
///
/// - `http[:PATH]` (default `/`), `tcp`, `exec:COMMAND`, `ttl:DURATION`;
/// - options `interval=2s`, `timeout=1s`, `passes=1`, `failures=1`, and for
///   http `status=204`.
///
/// An `exec` command may contain commas: only trailing segments that are
/// known options are read as options.
impl std::str::FromStr for CheckSpec {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut segments: Vec<&str> = text.split(',').collect();
        let mut options = Vec::new();
        while segments.len() > 1 {
            let last = segments[segments.len() - 1];
            match last.split_once('=') {
                Some((key, value)) if OPTIONS.contains(&key.trim()) => {
                    options.push((key.trim(), value.trim()));
                    segments.pop();
                }
                _ => break,
            }
        }
        let head = segments.join(",");
        let (kind, arg) = match head.split_once(':') {
            Some((kind, arg)) => (kind.trim(), Some(arg)),
            None => (head.trim(), None),
        };
        let mut status = None;
        let mut spec = CheckSpec {
            kind: CheckKind::Tcp,
            interval_ms: DEFAULT_INTERVAL.as_millis() as u64,
            timeout_ms: DEFAULT_TIMEOUT.as_millis() as u64,
            passes: 1,
            failures: 1,
        };
        let mut timeout_given = false;
        for (key, value) in options {
            let number =
                || value.parse::<u32>().map_err(|_| format!("{key}={value:?} is not a whole number"));
            match key {
                "interval" => spec.interval_ms = duration_ms(key, value)?,
                "timeout" => {
                    spec.timeout_ms = duration_ms(key, value)?;
                    timeout_given = true;
                }
                "passes" => spec.passes = number()?,
                "failures" => spec.failures = number()?,
                "status" => {
                    status = Some(
                        value
                            .parse::<u16>()
                            .map_err(|_| format!("status={value:?} is not an HTTP status"))?,
                    )
                }
                _ => unreachable!("only known options are collected"),
            }
        }
        if !timeout_given {
            spec.timeout_ms = spec.timeout_ms.min(spec.interval_ms);
        }
        spec.kind = match (kind, arg) {
            ("http", arg) => CheckKind::Http { path: arg.unwrap_or("/").trim().to_string(), status },
            ("tcp", None) => CheckKind::Tcp,
            ("exec", Some(command)) => CheckKind::Exec { command: command.trim().to_string() },
            ("ttl", Some(ttl)) => CheckKind::Ttl { ttl_s: duration_ms("ttl", ttl)?.div_ceil(1000) },
            ("tcp", Some(_)) => {
                return Err("a tcp check takes no argument: it connects to the service's port".into());
            }
            ("exec" | "ttl", None) => {
                return Err(format!(
                    "a {kind} check needs an argument, like {kind}:{}",
                    if kind == "exec" { "pg_isready" } else { "30s" }
                ));
            }
            _ => {
                return Err(format!(
                    "{text:?} is not a check: give http[:PATH], tcp, exec:COMMAND or ttl:DURATION, with options like ,interval=2s,timeout=1s"
                ));
            }
        };
        if status.is_some() && !matches!(spec.kind, CheckKind::Http { .. }) {
            return Err("status= is an option of http checks only".into());
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// The one-line form, with only the options that differ from the defaults.
impl std::fmt::Display for CheckSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            CheckKind::Http { path, .. } => write!(f, "http:{path}")?,
            CheckKind::Tcp => f.write_str("tcp")?,
            CheckKind::Exec { command } => write!(f, "exec:{command}")?,
            CheckKind::Ttl { ttl_s } => write!(f, "ttl:{ttl_s}s")?,
        }
        if let CheckKind::Http { status: Some(status), .. } = &self.kind {
            write!(f, ",status={status}")?;
        }
        if self.interval_ms != DEFAULT_INTERVAL.as_millis() as u64 {
            write!(f, ",interval={}ms", self.interval_ms)?;
        }
        if self.timeout_ms != (DEFAULT_TIMEOUT.as_millis() as u64).min(self.interval_ms) {
            write!(f, ",timeout={}ms", self.timeout_ms)?;
        }
        if self.passes != 1 {
            write!(f, ",passes={}", self.passes)?;
        }
        if self.failures != 1 {
            write!(f, ",failures={}", self.failures)?;
        }
        Ok(())
    }
}

const OPTIONS: [&str; 5] = ["interval", "timeout", "passes", "failures", "status"];

fn duration_ms(key: &str, value: &str) -> Result<u64, String> {
    humantime::parse_duration(value)
        .map(|d| d.as_millis() as u64)
        .map_err(|_| format!("{key}={value:?} is not a duration like 2s or 500ms"))
}

/// One check's state across its results.
///
/// The policy:
/// - An instance starts critical: nothing is routed to it before it proves itself.
/// - It becomes passing after `passes` passing results in a row.
/// - It becomes critical after `failures` failing results in a row.
/// - A warning result makes it warning at once: a warning is a report of
///   trouble from the instance itself, not a guess to confirm.
#[derive(Debug, Clone, Default)]
pub struct Tracker {
    status: Status,
    passed: u32,
    failed: u32,
}

impl Tracker {
    /// A tracker that goes on from a state already known (a checker that
    /// starts again after a daemon restart or a change of its instance), so
    /// that one failing result does not undo what `failures` protects.
    pub fn resume(status: Status) -> Self {
        Self { status, passed: 0, failed: 0 }
    }

    pub fn status(&self) -> Status {
        self.status
    }

    /// Takes one result; returns the state after it.
    pub fn observe(&mut self, result: Status, passes: u32, failures: u32) -> Status {
        match result {
            Status::Passing => {
                self.failed = 0;
                self.passed = self.passed.saturating_add(1);
                if self.passed >= passes {
                    self.status = Status::Passing;
                }
            }
            Status::Critical => {
                self.passed = 0;
                self.failed = self.failed.saturating_add(1);
                if self.failed >= failures {
                    self.status = Status::Critical;
                }
            }
            Status::Warning => {
                self.passed = 0;
                self.failed = 0;
                self.status = Status::Warning;
            }
            // What the supervisor says of a machine, never a check's result.
            Status::Sleeping => {}
        }
        self.status
    }
}

/// `GET path` on `address:port`, within `timeout`.
pub async fn http(
    address: IpAddr,
    port: u16,
    path: &str,
    expected: Option<u16>,
    timeout: Duration,
) -> (Status, String) {
    let target = SocketAddr::new(address, port);
    match tokio::time::timeout(timeout, http_status(target, path)).await {
        Err(_) => (Status::Critical, format!("GET {path} on {target} did not answer within {timeout:?}")),
        Ok(Err(e)) => (Status::Critical, format!("GET {path} on {target} failed: {e}")),
        Ok(Ok(status)) => {
            let verdict = match expected {
                Some(want) if status == want => Status::Passing,
                Some(_) => Status::Critical,
                None if (200..300).contains(&status) => Status::Passing,
                None if status == 429 => Status::Warning,
                None => Status::Critical,
            };
            (verdict, format!("GET {path} answered {status}"))
        }
    }
}

async fn http_status(target: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(target).await?;
    let host = match target {
        SocketAddr::V4(_) => target.to_string(),
        SocketAddr::V6(v6) => format!("[{}]:{}", v6.ip(), v6.port()),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: hearth-check\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    // The status line is all a check needs: `HTTP/1.1 200 OK`.
    let mut head = Vec::with_capacity(64);
    let mut buf = [0u8; 64];
    while !head.contains(&b'\n') && head.len() < 1024 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "the answer is not HTTP");
    let mut words = line.split_whitespace();
    match (words.next(), words.next()) {
        (Some(version), Some(code)) if version.starts_with("HTTP/") => code.parse().map_err(|_| bad()),
        _ => Err(bad()),
    }
}

/// A TCP connection to `address:port`, within `timeout`.
pub async fn tcp(address: IpAddr, port: u16, timeout: Duration) -> (Status, String) {
    let target = SocketAddr::new(address, port);
    match tokio::time::timeout(timeout, TcpStream::connect(target)).await {
        Err(_) => (Status::Critical, format!("connecting to {target} took longer than {timeout:?}")),
        Ok(Err(e)) => (Status::Critical, format!("cannot connect to {target}: {e}")),
        Ok(Ok(_)) => (Status::Passing, format!("{target} accepts connections")),
    }
}

/// An exec check's verdict from the command's exit code and output.
pub fn exec_verdict(code: Option<i32>, output: &[u8]) -> (Status, String) {
    let status = match code {
        Some(0) => Status::Passing,
        Some(1) => Status::Warning,
        _ => Status::Critical,
    };
    let text = String::from_utf8_lossy(output);
    let said = text.trim();
    let ended = match code {
        Some(code) => format!("exited with code {code}"),
        None => "was killed".to_string(),
    };
    (status, if said.is_empty() { ended } else { truncate(&format!("{ended}: {said}")) })
}

/// Keeps at most [`MAX_OUTPUT`] bytes of a check's output, on a character boundary.
pub fn truncate(text: &str) -> String {
    if text.len() <= MAX_OUTPUT {
        return text.to_string();
    }
    let mut end = MAX_OUTPUT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CheckSpec, String> {
        text.parse()
    }

    #[test]
    fn the_one_line_form_reads_each_kind_with_the_defaults() {
        let http = parse("http:/healthz").expect("http");
        assert_eq!(http.kind, CheckKind::Http { path: "/healthz".into(), status: None });
        assert_eq!((http.interval_ms, http.timeout_ms, http.passes, http.failures), (2000, 1000, 1, 1));
        assert_eq!(parse("http").expect("http").kind, CheckKind::Http { path: "/".into(), status: None });
        assert_eq!(parse("tcp").expect("tcp").kind, CheckKind::Tcp);
        assert_eq!(parse("ttl:30s").expect("ttl").kind, CheckKind::Ttl { ttl_s: 30 });
        assert_eq!(
            parse("exec:test -f /tmp/a,b").expect("exec").kind,
            CheckKind::Exec { command: "test -f /tmp/a,b".into() }
        );
    }

    #[test]
    fn trailing_options_set_timing_thresholds_and_the_expected_status() {
        let spec =
            parse("http:/ready,status=204,interval=500ms,timeout=300ms,passes=2,failures=3").expect("spec");
        assert_eq!(spec.kind, CheckKind::Http { path: "/ready".into(), status: Some(204) });
        assert_eq!((spec.interval_ms, spec.timeout_ms, spec.passes, spec.failures), (500, 300, 2, 3));
        let exec = parse("exec:pg_isready -h a,b,interval=5s").expect("exec");
        assert_eq!(exec.kind, CheckKind::Exec { command: "pg_isready -h a,b".into() });
        assert_eq!(exec.interval_ms, 5000);
        assert_eq!(
            parse("tcp,interval=500ms").expect("tcp").timeout_ms,
            500,
            "the timeout fits in a short interval"
        );
    }

    #[test]
    fn a_check_that_does_not_parse_says_what_would() {
        for (text, says) in [
            ("ping", "http[:PATH], tcp, exec:COMMAND or ttl:DURATION"),
            ("exec", "needs an argument"),
            ("ttl", "needs an argument"),
            ("tcp:80", "takes no argument"),
            ("http:healthz", "not an HTTP path"),
            ("http:/,interval=soon", "not a duration"),
            ("http:/,interval=10ms", "out of range"),
            ("http:/,timeout=5s", "at most the interval"),
            ("http:/,passes=0", "from 1 to 100"),
            ("tcp,status=200", "http checks only"),
            ("http:/,status=999", "from 100 to 599"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn the_one_line_form_reads_back_what_it_wrote() {
        for text in [
            "http:/",
            "http:/ready,status=204,interval=500ms,timeout=300ms,passes=2,failures=3",
            "tcp",
            "exec:a,b",
            "ttl:30s",
        ] {
            let spec = parse(text).expect(text);
            assert_eq!(spec.to_string(), text);
            assert_eq!(parse(&spec.to_string()).expect("again"), spec);
        }
    }

    #[test]
    fn an_instance_starts_critical() {
        assert_eq!(Tracker::default().status(), Status::Critical);
    }

    #[test]
    fn it_becomes_passing_after_passes_passing_results_in_a_row() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(Status::Passing, 2, 1), Status::Critical);
        assert_eq!(t.observe(Status::Critical, 2, 3), Status::Critical);
        assert_eq!(t.observe(Status::Passing, 2, 1), Status::Critical, "the streak was broken");
        assert_eq!(t.observe(Status::Passing, 2, 1), Status::Passing);
    }

    #[test]
    fn it_becomes_critical_after_failures_failing_results_in_a_row() {
        let mut t = Tracker::default();
        t.observe(Status::Passing, 1, 3);
        assert_eq!(t.observe(Status::Critical, 1, 3), Status::Passing);
        assert_eq!(t.observe(Status::Critical, 1, 3), Status::Passing);
        assert_eq!(t.observe(Status::Passing, 1, 3), Status::Passing, "a pass resets the count");
        t.observe(Status::Critical, 1, 3);
        t.observe(Status::Critical, 1, 3);
        assert_eq!(t.observe(Status::Critical, 1, 3), Status::Critical);
    }

    #[test]
    fn a_resumed_tracker_keeps_its_state_until_the_thresholds_say_otherwise() {
        let mut t = Tracker::resume(Status::Passing);
        assert_eq!(t.observe(Status::Critical, 1, 2), Status::Passing);
        assert_eq!(t.observe(Status::Critical, 1, 2), Status::Critical);
    }

    #[test]
    fn a_warning_result_makes_it_warning_at_once() {
        let mut t = Tracker::default();
        t.observe(Status::Passing, 1, 5);
        assert_eq!(t.observe(Status::Warning, 1, 5), Status::Warning);
        assert_eq!(t.observe(Status::Passing, 1, 5), Status::Passing);
    }

    #[test]
    fn exec_exit_codes_map_to_states_and_output_is_bounded() {
        assert_eq!(exec_verdict(Some(0), b"").0, Status::Passing);
        assert_eq!(exec_verdict(Some(1), b"slow").1, "exited with code 1: slow");
        assert_eq!(exec_verdict(Some(2), b"").0, Status::Critical);
        assert_eq!(exec_verdict(None, b"").1, "was killed");
        assert!(truncate(&"é".repeat(500)).len() <= MAX_OUTPUT + "…".len());
    }

    #[tokio::test]
    async fn http_and_tcp_probes_judge_a_real_server() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if request.starts_with("GET /ok ") {
                    "200 OK"
                } else if request.starts_with("GET /busy ") {
                    "429 Too Many"
                } else {
                    "503 Down"
                };
                let _ =
                    s.write_all(format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n").as_bytes()).await;
            }
        });
        let local: IpAddr = "127.0.0.1".parse().expect("ip");
        let t = Duration::from_secs(2);
        assert_eq!(http(local, port, "/ok", None, t).await, (Status::Passing, "GET /ok answered 200".into()));
        assert_eq!(http(local, port, "/busy", None, t).await.0, Status::Warning);
        assert_eq!(http(local, port, "/down", None, t).await.0, Status::Critical);
        assert_eq!(http(local, port, "/down", Some(503), t).await.0, Status::Passing);
        assert_eq!(http(local, port, "/ok", Some(204), t).await.0, Status::Critical);
        assert_eq!(tcp(local, port, t).await.0, Status::Passing);

        let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let dead = closed.local_addr().expect("addr").port();
        drop(closed);
        let (status, output) = http(local, dead, "/", None, t).await;
        assert_eq!(status, Status::Critical);
        assert!(output.contains("failed"), "{output}");
        assert_eq!(tcp(local, dead, t).await.0, Status::Critical);
    }
}
