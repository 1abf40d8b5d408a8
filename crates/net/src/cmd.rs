//! Running `ip`, `nft`, `tc`, `iptables` and `sysctl`, on the host or inside a named
//! network namespace, and the one error type [`link`](crate::link),
//! [`firewall`](crate::firewall) and [`shaping`](crate::shaping) share.
//!
//! We drive the kernel through the same command-line tools an operator would
//! type, rather than netlink, so every failure can be reported as a command a
//! person can rerun by hand.

use std::io::Write;
use std::process::{Command, Output, Stdio};

/// Where commands run: the host, or a named network namespace
/// (`ip netns exec NAME ...`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Netns {
    /// The namespace the daemon itself runs in.
    Host,
    /// A namespace created with `ip netns add NAME`.
    Named(String),
}

/// Why a network operation failed, with the command and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A program we need could not be started.
    #[error("cannot run `{command}`; {hint}")]
    Spawn {
        command: String,
        hint: String,
        #[source]
        source: std::io::Error,
    },

    /// A program ran and failed.
    #[error("`{command}` failed: {stderr}; {hint}")]
    Failed { command: String, stderr: String, hint: String },

    /// The kernel has no `netem` queueing discipline.
    #[error("`{command}` failed: {stderr}; {hint}")]
    NetemUnsupported { command: String, stderr: String, hint: String },

    /// The delay line (NFQUEUE, for kernels without netem) could not do
    /// something.
    #[error("cannot {what}: {reason}; {hint}")]
    Delay { what: String, reason: String, hint: String },

    /// This kernel can delay packets neither with netem nor with NFQUEUE.
    #[error("cannot {what}: {reason}; {hint}")]
    DelayUnsupported { what: String, reason: String, hint: String },

    /// An interface name the kernel would refuse, or that could not be put
    /// safely in an nftables script.
    #[error("`{name}` is not a usable interface name: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// Input that is not a name but is still wrong (a partition id, a loss rate).
    #[error("invalid {what}: {reason}")]
    Invalid { what: &'static str, reason: String },

    /// A link exists under the name but is not the kind we would create.
    #[error("`{name}` exists but is a {found} link, not a {expected}; delete it or pick another name")]
    WrongKind { name: String, found: String, expected: &'static str },

    /// A program printed something we cannot read.
    #[error("cannot read the output of `{command}`: {reason}")]
    Output { command: String, reason: String },
}

impl Error {
    /// A stable identifier for the API's error body.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Spawn { .. } | Error::Failed { .. } | Error::Output { .. } | Error::Delay { .. } => {
                "command_failed"
            }
            Error::NetemUnsupported { .. } | Error::DelayUnsupported { .. } => "unsupported",
            Error::InvalidName { .. } | Error::Invalid { .. } => "invalid_field",
            Error::WrongKind { .. } => "conflict",
        }
    }

    /// What to do about the error, when there is more to say than the message.
    pub fn hint(&self) -> Option<&str> {
        match self {
            Error::Spawn { hint, .. }
            | Error::Failed { hint, .. }
            | Error::NetemUnsupported { hint, .. }
            | Error::Delay { hint, .. }
            | Error::DelayUnsupported { hint, .. } => Some(hint),
            _ => None,
        }
    }
}

/// One command, as it will run: `ip netns exec NS program args...` or
/// `program args...`.
pub(crate) struct Cmd {
    argv: Vec<String>,
}

impl Cmd {
    pub(crate) fn new(ns: &Netns, program: &str) -> Self {
        let mut argv = Vec::new();
        if let Netns::Named(name) = ns {
            argv.extend(["ip", "netns", "exec", name.as_str()].map(String::from));
        }
        argv.push(program.to_owned());
        Cmd { argv }
    }

    pub(crate) fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.argv.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// The command line, for error messages.
    pub(crate) fn display(&self) -> String {
        self.argv.join(" ")
    }

    /// Runs the command and returns its output whether it succeeded or not;
    /// for callers that treat some failures ("no such device") as success.
    pub(crate) fn output(&self, stdin: Option<&str>) -> Result<Output, Error> {
        let mut command = Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let spawn_error = |source: std::io::Error| Error::Spawn {
            command: self.display(),
            hint: spawn_hint(&self.argv[0], &source),
            source,
        };
        let mut child = command.spawn().map_err(spawn_error)?;
        if let Some(input) = stdin {
            // Dropping the handle at the end of the block closes the pipe, so
            // the program sees end of input.
            let mut pipe = child.stdin.take().expect("stdin is piped");
            // A program that exits before reading everything closes the pipe;
            // its exit status and stderr then say why, so that is what we report.
            if let Err(error) = pipe.write_all(input.as_bytes())
                && error.kind() != std::io::ErrorKind::BrokenPipe
            {
                let _ = child.kill();
                let _ = child.wait();
                return Err(spawn_error(error));
            }
        }
        child.wait_with_output().map_err(spawn_error)
    }

    /// Runs the command; its stdout if it succeeded, else [`Error::Failed`].
    pub(crate) fn run(&self) -> Result<String, Error> {
        self.run_with_stdin(None)
    }

    pub(crate) fn run_with_stdin(&self, stdin: Option<&str>) -> Result<String, Error> {
        let output = self.output(stdin)?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(self.failed(&output))
        }
    }

    /// The error for a run that failed.
    pub(crate) fn failed(&self, output: &Output) -> Error {
        let stderr = stderr(output);
        let stderr = if stderr.is_empty() { format!("exit status {}", output.status) } else { stderr };
        let hint = failure_hint(&self.argv, &stderr);
        Error::Failed { command: self.display(), stderr, hint }
    }
}

/// The stderr of a run, trimmed, without a final full stop (our messages
/// continue after it).
pub(crate) fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().trim_end_matches('.').to_owned()
}

fn spawn_hint(program: &str, error: &std::io::Error) -> String {
    if error.kind() != std::io::ErrorKind::NotFound {
        return format!("check that `{program}` can be executed by the daemon's user");
    }
    let package = match program {
        "nft" => "nftables",
        "tc" | "ip" => "iproute2",
        "sysctl" => "procps",
        "iptables" | "iptables-restore" | "iptables-save" => "iptables",
        _ => return format!("install `{program}`"),
    };
    format!("install it with `apt-get install {package}`")
}

/// What a person should do, judged from the failing command's stderr.
fn failure_hint(argv: &[String], stderr: &str) -> String {
    let lower = stderr.to_lowercase();
    if lower.contains("operation not permitted") || lower.contains("permission denied") {
        return "run hearth as root (it needs CAP_NET_ADMIN to change links, nftables and qdiscs)".to_owned();
    }
    if argv.len() > 3
        && argv[..3] == ["ip", "netns", "exec"]
        && lower.contains("cannot open network namespace")
    {
        return format!(
            "the network namespace `{}` does not exist; `ip netns list` shows the ones that do",
            argv[3]
        );
    }
    if lower.contains("cannot find device") || lower.contains("does not exist") {
        return "the interface does not exist; `ip link` lists the ones that do".to_owned();
    }
    "the command's own message above says what the kernel refused; rerun it by hand to investigate".to_owned()
}

/// Checks that `name` is a name the kernel accepts for a link and that can
/// be quoted in an nftables script without escaping.
pub(crate) fn check_ifname(name: &str) -> Result<(), Error> {
    let invalid = |reason| Err(Error::InvalidName { name: name.to_owned(), reason });
    if name.is_empty() {
        return invalid("it is empty");
    }
    if name.len() > crate::link::IFNAME_MAX {
        return invalid("it is longer than 15 bytes, the kernel's limit");
    }
    if name == "." || name == ".." {
        return invalid("the kernel reserves it");
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
        return invalid("only ASCII letters, digits, `-`, `_` and `.` are allowed");
    }
    Ok(())
}
