//! A minimal QMP client: QEMU's JSON control protocol on a Unix socket.

use std::io::{BufRead, BufReader, Write};
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
        let stream = UnixStream::connect(path).map_err(|e| Error::Io { path: path.to_owned(), source: e })?;
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
        let mut request = json!({ "execute": command });
        if let Some(arguments) = arguments {
            request["arguments"] = arguments;
        }
        let mut line = request.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).map_err(|e| Error::Control(format!("{command}: {e}")))?;
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
