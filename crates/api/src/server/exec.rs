//! The exec WebSocket: a session between an API client and a process in a
//! machine, relayed through the guest agent.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use hearth_agent::client::{AgentClient, ExecControl, ExecRequest, Output};
use hearth_client::types::{
    EXEC_STDERR, EXEC_STDOUT, ErrorDetail, ExecControl as ClientControl, ExecEnd, ExecStart,
};
use tokio::sync::mpsc;

use crate::error::ApiError;

/// Resolves when the session's caller may no longer run it: a dashboard
/// session that was revoked or expired.
pub(crate) type Ended = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

pub(crate) async fn session(
    mut socket: WebSocket,
    agent: Arc<AgentClient>,
    env_defaults: Vec<String>,
    machine: String,
    ended: Ended,
) {
    let process = Process::default();
    // The whole session races `ended`: waiting for the first message, for
    // the agent to start the process, or for a client that reads slowly.
    let outcome = tokio::select! {
        outcome = relay(&mut socket, &agent, &env_defaults, &machine, &process) => outcome,
        () = ended => Outcome::Kill(Some(ExecEnd::Error(ErrorDetail {
            code: "session_ended".into(),
            message: "the dashboard session of this terminal was signed out, revoked or expired".into(),
            hint: "sign in again with `hearth ui`".into(),
        }))),
    };
    match outcome {
        Outcome::End(last) => end(socket, last).await,
        Outcome::Kill(last) => {
            process.kill().await;
            if let Some(last) = last {
                end(socket, last).await;
            }
        }
    }
}

/// How a relay ended.
enum Outcome {
    /// The process exited or never started: send this and close.
    End(ExecEnd),
    /// The daemon ends the session: kill its processes, then send this
    /// and close, if the client is still there to hear it.
    Kill(Option<ExecEnd>),
}

/// The session's process, once the agent started it; what ends it when
/// the daemon ends the session, whenever that happens.
#[derive(Default, Clone)]
struct Process(Arc<std::sync::Mutex<ProcessState>>);

#[derive(Default)]
struct ProcessState {
    killed: bool,
    control: Option<ExecControl>,
}

impl Process {
    /// Called by the thread that started it: a session already ended
    /// kills it at once.
    fn started(&self, control: ExecControl) {
        let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if state.killed {
            drop(state);
            let _ = control.kill();
        } else {
            state.control = Some(control);
        }
    }

    /// Kills every process of the session (its group, and with a tty its
    /// Unix session: a shell's background jobs too), now or, if the agent
    /// is still starting it, as soon as it has.
    async fn kill(&self) {
        let control = {
            let mut state = self.0.lock().unwrap_or_else(|e| e.into_inner());
            state.killed = true;
            state.control.take()
        };
        if let Some(control) = control {
            let _ = tokio::task::spawn_blocking(move || control.kill()).await;
        }
    }
}

async fn relay(
    socket: &mut WebSocket,
    agent: &Arc<AgentClient>,
    env_defaults: &[String],
    machine: &str,
    process: &Process,
) -> Outcome {
    let start = match socket.recv().await {
        Some(Ok(Message::Text(text))) => serde_json::from_str::<ExecStart>(&text).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the first exec message is not an ExecStart: {e}"),
                "send {\"argv\": [...]} as the first, text, message",
            )
        }),
        _ => Err(ApiError::bad_request(
            "invalid_json",
            "the first exec message must be an ExecStart as text",
            "send {\"argv\": [...]} as the first, text, message",
        )),
    };
    let start = match start.and_then(validate) {
        Ok(start) => start,
        Err(error) => return Outcome::End(ExecEnd::Error(error.detail)),
    };
    let mut request = ExecRequest::new(start.argv.clone()).stdin(start.stdin);
    for pair in env_defaults.iter().chain(&start.env) {
        if let Some((k, v)) = pair.split_once('=') {
            request = request.env(k, v);
        }
    }
    if let Some(cwd) = start.cwd {
        request = request.cwd(cwd);
    }
    if let Some(size) = start.tty {
        request = request.tty(size.rows, size.cols);
    }
    let started = {
        // The process is handed over from this thread, so that a session
        // that ends while the agent starts it still kills it.
        let (agent, process) = (agent.clone(), process.clone());
        tokio::task::spawn_blocking(move || {
            let handle = agent.exec(request)?;
            process.started(handle.control());
            Ok::<_, hearth_agent::client::Error>(handle)
        })
        .await
    };
    let mut handle = match started {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => return Outcome::End(ExecEnd::Error(agent_error(machine, &start.argv, error))),
        Err(join) => return Outcome::End(ExecEnd::Error(ApiError::internal(join.to_string()).detail)),
    };
    tracing::debug!(machine, argv = ?start.argv, pid = handle.pid(), "Exec started.");
    let control = handle.control();
    // The agent client is blocking: one thread drains the session's output.
    let (out_tx, mut out_rx) = mpsc::channel::<Output>(64);
    std::thread::spawn(move || {
        while let Some(output) = handle.recv() {
            if out_tx.blocking_send(output).is_err() {
                break;
            }
        }
    });
    loop {
        tokio::select! {
            output = out_rx.recv() => match output {
                Some(Output::Stdout(data)) => {
                    // The client is gone: so is the reason to keep the process.
                    if send_data(socket, EXEC_STDOUT, data).await.is_err() { return Outcome::Kill(None); }
                }
                Some(Output::Stderr(data)) => {
                    if send_data(socket, EXEC_STDERR, data).await.is_err() { return Outcome::Kill(None); }
                }
                Some(Output::Exited(status)) => {
                    return Outcome::End(ExecEnd::Exit { code: status.code, signal: status.signal });
                }
                Some(Output::Error(message)) => tracing::debug!(machine, message, "Exec session reported an error."),
                None => {
                    let detail = ErrorDetail {
                        code: "agent_lost".into(),
                        message: format!("the connection to machine {machine:?}'s agent ended before the command did"),
                        hint: format!("check `hearth machine ls` and `hearth machine logs {machine}`"),
                    };
                    return Outcome::End(ExecEnd::Error(detail));
                }
            },
            incoming = socket.recv() => {
                let control = control.clone();
                let action: Option<Box<dyn FnOnce() -> Result<(), hearth_agent::client::Error> + Send>> = match incoming {
                    Some(Ok(Message::Binary(data))) => Some(Box::new(move || control.write_stdin(&data))),
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ClientControl>(&text) {
                        Ok(ClientControl::CloseStdin) => Some(Box::new(move || control.close_stdin())),
                        Ok(ClientControl::Signal(sig)) => Some(Box::new(move || control.signal(sig))),
                        Ok(ClientControl::Resize(size)) => Some(Box::new(move || control.resize(size.rows, size.cols))),
                        Err(_) => None,
                    },
                    // The client went away: the process is not ours to keep alive.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return Outcome::Kill(None),
                    Some(Ok(_)) => None,
                };
                if let Some(action) = action {
                    let _ = tokio::task::spawn_blocking(action).await;
                }
            }
        }
    }
}

fn validate(start: ExecStart) -> Result<ExecStart, ApiError> {
    if start.argv.is_empty() || start.argv[0].is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "field `argv`: empty",
            "give a program and its arguments",
        ));
    }
    Ok(start)
}

fn agent_error(machine: &str, argv: &[String], error: hearth_agent::client::Error) -> ErrorDetail {
    use hearth_agent::client::Error as E;
    match error {
        E::Agent(message) => ErrorDetail {
            code: "exec_failed".into(),
            message,
            hint: format!(
                "check the program exists in the machine: `hearth machine exec {machine} -- ls /usr/bin`"
            ),
        },
        other => ErrorDetail {
            code: "agent_unreachable".into(),
            message: format!("could not start {:?} in machine {machine:?}: {other}", argv.join(" ")),
            hint: format!("check `hearth machine ls` and `hearth machine logs {machine}`"),
        },
    }
}

async fn send_data(socket: &mut WebSocket, stream: u8, mut data: Vec<u8>) -> Result<(), axum::Error> {
    data.insert(0, stream);
    socket.send(Message::Binary(data.into())).await
}

async fn end(mut socket: WebSocket, end: ExecEnd) {
    if let Ok(text) = serde_json::to_string(&end) {
        let _ = socket.send(Message::Text(text.into())).await;
    }
    let _ = socket.send(Message::Close(None)).await;
}
