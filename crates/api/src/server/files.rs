//! `/v1/machines/{name}/files`: copy files into and out of a machine.
//!
//! What comes from a guest is untrusted: a download is spooled up to
//! [`MAX_FILE_BYTES`] and no further, and its mode is answered without the
//! set-user-ID, set-group-ID and sticky bits, so a guest cannot plant a
//! set-ID file on the host through `hearth machine cp`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use hearth_client::types::{ErrorBody, FileQuery, MAX_FILE_BYTES, MODE_HEADER};

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

/// The 413 for a file over [`MAX_FILE_BYTES`].
fn too_large(name: &str, path: &str) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("{path} in {name} is larger than {} MiB, the limit for one copy", MAX_FILE_BYTES >> 20),
        format!(
            "compress or split it first (e.g. `hearth machine exec {name} -- split -b 512M {path} {path}.part`) and copy the parts"
        ),
    )
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
/// created; the file is replaced atomically). At most 1 GiB.
#[utoipa::path(put, path = "/v1/machines/{name}/files", tag = "machines",
    params(("name" = String, Path), FileQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream"),
    responses((status = 204), (status = 400, body = ErrorBody),
        (status = 404, description = "No such machine", body = ErrorBody),
        (status = 409, description = "Not running, or it runs on another host", body = ErrorBody),
        (status = 413, description = "Larger than 1 GiB", body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
    headers: axum::http::HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_path(&query.path)?;
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FILE_BYTES) {
        return Err(too_large(&name, &query.path));
    }
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
    let agent = state.machines().agent_waking(&name).await?;
    // The agent client is blocking: feed it through a channel-backed reader.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let path = query.path.clone();
    let writer = tokio::task::spawn_blocking(move || {
        agent.put_file(&path, mode, ChannelReader { rx, buf: bytes::Bytes::new() })
    });
    let mut stream = body.into_data_stream();
    let mut received = 0u64;
    let mut over = false;
    while let Some(chunk) = stream.next().await {
        let mut chunk = chunk.map_err(|e| std::io::Error::other(e.to_string()));
        if let Ok(bytes) = &chunk {
            received += bytes.len() as u64;
            if received > MAX_FILE_BYTES {
                // An error, not the end: the agent must not keep a prefix.
                over = true;
                chunk = Err(std::io::Error::other("the upload is over the limit"));
            }
        }
        let failed = chunk.is_err();
        if tx.send(chunk).is_err() || failed {
            break;
        }
    }
    drop(tx);
    let result = writer.await.map_err(|e| ApiError::internal(e.to_string()))?;
    if over {
        return Err(too_large(&name, &query.path));
    }
    result.map_err(agent_failure)?;
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

/// Reads a file from the machine, at most 1 GiB; its permission bits come
/// in `x-hearth-mode` (octal, never set-ID or sticky bits).
#[utoipa::path(get, path = "/v1/machines/{name}/files", tag = "machines",
    params(("name" = String, Path), FileQuery),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
        (status = 400, body = ErrorBody), (status = 404, description = "No such machine or file", body = ErrorBody),
        (status = 409, description = "Not running, or it runs on another host", body = ErrorBody),
        (status = 413, description = "Larger than 1 GiB", body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
    ApiQuery(query): ApiQuery<FileQuery>,
) -> Result<Response, ApiError> {
    check_path(&query.path)?;
    let agent = state.machines().agent_waking(&name).await?;
    // Spool to a temporary file so that the mode is known before the body starts.
    let spool =
        tempfile::tempfile().map_err(|e| ApiError::internal(format!("cannot create a spool file: {e}")))?;
    let path = query.path.clone();
    let over = Arc::new(AtomicBool::new(false));
    let flag = over.clone();
    let fetched = tokio::task::spawn_blocking(move || {
        let mut spool = Limited { inner: spool, left: MAX_FILE_BYTES, over: flag };
        let info = agent.get_file(&path, &mut spool)?;
        Ok::<_, hearth_agent::client::Error>((info, spool.inner))
    })
    .await
    .map_err(|e| ApiError::internal(e.to_string()))?;
    if over.load(Ordering::Relaxed) {
        return Err(too_large(&name, &query.path));
    }
    let (info, mut spool) = fetched.map_err(agent_failure)?;
    use std::io::Seek;
    spool.seek(std::io::SeekFrom::Start(0)).map_err(|e| ApiError::internal(e.to_string()))?;
    let file = tokio::fs::File::from_std(spool);
    let mut response = Body::from_stream(tokio_util::io::ReaderStream::new(file)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(mode) = HeaderValue::from_str(&format!("{:o}", host_mode(info.mode))) {
        headers.insert(MODE_HEADER, mode);
    }
    Ok(response)
}

/// The permission bits a file from a guest may have on the host: never
/// set-user-ID, set-group-ID or sticky.
fn host_mode(guest_mode: u32) -> u32 {
    guest_mode & 0o777
}

/// A writer that refuses more than `left` bytes, and says so in `over`.
struct Limited<W> {
    inner: W,
    left: u64,
    over: Arc<AtomicBool>,
}

impl<W: Write> Write for Limited<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if buf.len() as u64 > self.left {
            self.over.store(true, Ordering::Relaxed);
            return Err(std::io::Error::other("the file is over the limit"));
        }
        let n = self.inner.write(buf)?;
        self.left -= n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_from_guests_lose_set_id_and_sticky_bits() {
        assert_eq!(host_mode(0o104755), 0o755);
        assert_eq!(host_mode(0o2755), 0o755);
        assert_eq!(host_mode(0o1777), 0o777);
        assert_eq!(host_mode(0o640), 0o640);
    }

    #[test]
    fn the_spool_refuses_bytes_past_its_limit() {
        let over = Arc::new(AtomicBool::new(false));
        let mut spool = Limited { inner: Vec::new(), left: 10, over: over.clone() };
        spool.write_all(b"0123456789").unwrap();
        assert!(!over.load(Ordering::Relaxed));
        assert!(spool.write_all(b"x").is_err());
        assert!(over.load(Ordering::Relaxed));
        assert_eq!(spool.inner.len(), 10);
    }
}
