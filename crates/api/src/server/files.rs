//! `/v1/machines/{name}/files`: copy files into and out of a machine.

use std::io::Read;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hearth_client::types::{ErrorBody, FileQuery, MODE_HEADER};

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiQuery;

fn check_path(path: &str) -> Result<(), ApiError> {
    if !path.starts_with('/') || path.contains('\0') {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("path {path:?} is not an absolute path"),
            "give the file's absolute path in the machine, e.g. /root/notes.txt",
        ));
    }
    Ok(())
}

fn agent_failure(error: hearth_agent::client::Error) -> ApiError {
    match error {
        hearth_agent::client::Error::Agent(message) => ApiError::bad_request(
            "file_failed",
            message,
            "check the path inside the machine with `hearth machine exec`",
        ),
        other => ApiError::internal(format!("the copy failed: {other}")),
    }
}

/// Writes the request body to a file in the machine (parent directories are
/// created; the file is replaced atomically).
#[utoipa::path(put, path = "/v1/machines/{name}/files", tag = "machines",
    params(("name" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 409, description = "Not running", body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    body: Body,
) -> Result<Response, ApiError> {
    check_path(&query.path)?;
    let mode = match query.mode.as_deref() {
        None => 0o644,
        Some(text) => u32::from_str_radix(text, 8).ok().filter(|m| *m <= 0o7777).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_query",
                format!("mode {text:?} is not octal permission bits"),
                "e.g. mode=755",
            )
        })?,
    };
    let agent = state.machines().agent(&name).await?;
    // The agent client is blocking: feed it through a channel-backed reader.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let path = query.path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        agent.put_file(&path, mode, ChannelReader { rx, buf: bytes::Bytes::new() })
    });
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        let failed = chunk.is_err();
        if tx.send(chunk).is_err() || failed {
            break;
        }
    }
    drop(tx);
    writer.await.map_err(|e| ApiError::internal(e.to_string()))?.map_err(agent_failure)?;
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>,
    buf: bytes::Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.buf.is_empty() {
            match self.rx.recv() {
                Ok(chunk) => self.buf = chunk?,
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len());
        out[..n].copy_from_slice(&self.buf.split_to(n));
        Ok(n)
    }
}

/// Reads a file from the machine; its mode comes in `x-hearth-mode`.
#[utoipa::path(get, path = "/v1/machines/{name}/files", tag = "machines",
    params(("name" = String, Path), FileQuery),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 409, description = "Not running", body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    check_path(&query.path)?;
    let agent = state.machines().agent(&name).await?;
    // Spool to a temporary file so that the mode is known before the body starts.
    let spool =
        tempfile::tempfile().map_err(|e| ApiError::internal(format!("cannot create a spool file: {e}")))?;
    let path = query.path.clone();
    let (info, mut spool) = tokio::task::spawn_blocking(move || {
        let mut spool = spool;
        let info = agent.get_file(&path, &mut spool)?;
        Ok::<_, hearth_agent::client::Error>((info, spool))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?
    .map_err(agent_failure)?;
    use std::io::Seek;
    spool.seek(std::io::SeekFrom::Start(0)).map_err(|e| ApiError::internal(e.to_string()))?;
    let file = tokio::fs::File::from_std(spool);
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:o}", info.mode & 0o7777)) {
        headers.insert(MODE_HEADER, mode);
    }
    Ok(response)
}
