//! The exec WebSocket: a session between an API client and a process in a
//! machine, relayed through the guest agent.

use std::sync::Arc;

use axum::extract::ws::{Message, WebSocket};
use hearth_agent::client::{AgentClient, ExecRequest, Output};
use hearth_client::types::{EXEC_STDERR, EXEC_STDOUT, ErrorDetail, ExecControl, ExecEnd, ExecStart};
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
    mut ended: Ended,
) {
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
        Err(error) => return end(socket, ExecEnd::Error(error.detail)).await,
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
        let agent = agent.clone();
        tokio::task::spawn_blocking(move || agent.exec(request)).await
    };
    let mut handle = match started {
        Ok(Ok(handle)) => handle,
        Ok(Err(error)) => {
            let detail = agent_error(&machine, &start.argv, error);
            return end(socket, ExecEnd::Error(detail)).await;
        }
        Err(join) => return end(socket, ExecEnd::Error(ApiError::internal(join.to_string()).detail)).await,
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
                    if send_data(&mut socket, EXEC_STDOUT, data).await.is_err() { break; }
                }
                Some(Output::Stderr(data)) => {
                    if send_data(&mut socket, EXEC_STDERR, data).await.is_err() { break; }
                }
                Some(Output::Exited(status)) => {
                    return end(socket, ExecEnd::Exit { code: status.code, signal: status.signal }).await;
                }
                Some(Output::Error(message)) => tracing::debug!(machine, message, "Exec session reported an error."),
                None => {
                    let detail = ErrorDetail {
                        code: "agent_lost".into(),
                        message: format!("the connection to machine {machine:?}'s agent ended before the command did"),
                        hint: format!("check `hearth machine ls` and `hearth machine logs {machine}`"),
                    };
                    return end(socket, ExecEnd::Error(detail)).await;
                }
            },
            () = &mut ended => {
                let control = control.clone();
                let _ = tokio::task::spawn_blocking(move || control.signal(9)).await;
                let detail = ErrorDetail {
                    code: "session_ended".into(),
                    message: "the dashboard session of this terminal was signed out, revoked or expired".into(),
                    hint: "sign in again with `hearth ui`".into(),
                };
                return end(socket, ExecEnd::Error(detail)).await;
            }
            incoming = socket.recv() => {
                let control = control.clone();
                let action: Option<Box<dyn FnOnce() -> Result<(), hearth_agent::client::Error> + Send>> = match incoming {
                    Some(Ok(Message::Binary(data))) => Some(Box::new(move || control.write_stdin(&data))),
                    Some(Ok(Message::Text(text))) => match serde_json::from_str::<ExecControl>(&text) {
                        Ok(ExecControl::CloseStdin) => Some(Box::new(move || control.close_stdin())),
                        Ok(ExecControl::Signal(sig)) => Some(Box::new(move || control.signal(sig))),
                        Ok(ExecControl::Resize(size)) => Some(Box::new(move || control.resize(size.rows, size.cols))),
                        Err(_) => None,
                    },
                    // The client went away: the process is not ours to keep alive.
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                        let _ = tokio::task::spawn_blocking(move || control.signal(9)).await;
                        return;
                    }
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
