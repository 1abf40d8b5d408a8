//! A minimal QMP client: QEMU's JSON control protocol on a Unix socket.

use std::io::{BufRead, BufReader, IoSlice, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::Error;

/// A negotiated QMP session.
#[derive(Debug)]
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    /// Connects and leaves capabilities-negotiation mode.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, Error> {
        // QEMU serves one QMP client at a time: a plain connect could wait
        // without end behind another.
        let stream = hearth_agent::client::connect_within(path, timeout)
            .map_err(|e| Error::Io { path: path.to_owned(), source: e })?;
        stream.set_read_timeout(Some(timeout)).map_err(|e| Error::Io { path: path.to_owned(), source: e })?;
        let writer = stream.try_clone().map_err(|e| Error::Io { path: path.to_owned(), source: e })?;
        let mut qmp = Qmp { reader: BufReader::new(stream), writer };
        let greeting = qmp.read()?;
        if greeting.get("QMP").is_none() {
            return Err(Error::Control(format!("unexpected greeting {greeting}")));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value; asynchronous events
    /// that arrive meanwhile are skipped.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, Error> {
        let line = request(command, arguments);
        self.writer.write_all(line.as_bytes()).map_err(|e| Error::Control(format!("{command}: {e}")))?;
        self.reply(command)
    }

    /// Hands QEMU an open file under `name` (QMP `getfd`, the descriptor
    /// passed alongside the command), for URIs such as `fd:NAME`. QEMU
    /// itself may then open nothing: it runs as an unprivileged user that
    /// cannot reach the machine's directory, under a seccomp filter that
    /// forbids spawning a helper.
    pub fn pass_fd(&mut self, name: &str, fd: BorrowedFd<'_>) -> Result<(), Error> {
        self.execute_with_fd("getfd", Some(json!({ "fdname": name })), fd).map(drop)
    }

    /// Runs a command that takes a descriptor (`getfd`, `add-fd`), passed
    /// alongside it, and returns its `return` value.
    pub fn execute_with_fd(
        &mut self,
        command: &str,
        arguments: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> Result<Value, Error> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let line = request(command, arguments);
        let fds = [fd.as_raw_fd()];
        let sent = sendmsg::<()>(
            self.writer.as_raw_fd(),
            &[IoSlice::new(line.as_bytes())],
            &[ControlMessage::ScmRights(&fds)],
            MsgFlags::empty(),
            None,
        )
        .map_err(|e| Error::Control(format!("{command}: {e}")))?;
        if sent != line.len() {
            // The descriptor went with the first byte; the rest follows.
            self.writer
                .write_all(&line.as_bytes()[sent..])
                .map_err(|e| Error::Control(format!("{command}: {e}")))?;
        }
        self.reply(command)
    }

    /// Reads until the reply to `command`.
    fn reply(&mut self, command: &str) -> Result<Value, Error> {
        loop {
            let reply = self.read()?;
            if let Some(value) = reply.get("return") {
                return Ok(value.clone());
            }
            if let Some(error) = reply.get("error") {
                let desc = error.get("desc").and_then(Value::as_str).unwrap_or("unknown error");
                return Err(Error::Control(format!("{command}: {desc}")));
            }
        }
    }

    fn read(&mut self) -> Result<Value, Error> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).map_err(|e| Error::Control(e.to_string()))?;
        if n == 0 {
            return Err(Error::Control("QEMU closed the control socket".to_owned()));
        }
        serde_json::from_str(&line).map_err(|e| Error::Control(format!("bad reply {line:?}: {e}")))
    }
}

/// One command as QMP reads it: a JSON object on a line.
fn request(command: &str, arguments: Option<Value>) -> String {
    let mut request = json!({ "execute": command });
    if let Some(arguments) = arguments {
        request["arguments"] = arguments;
    }
    let mut line = request.to_string();
    line.push('\n');
    line
}
