//! `/v1/images`: root file systems for machines.
//!
//! Pulls and builds take from seconds to minutes, so they answer with a
//! server-sent event stream: `progress` events ([`Progress`]), then one
//! `done` ([`ImageInfo`]) or `error` ([`ErrorBody`]).

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use hearth_client::types::{self as wire, BuildImage, ErrorBody, ImageInfo, ImageList, Progress, PullImage};
use hearth_machines::image::{self, Credentials, ImageStore};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::AppState;
use crate::error::ApiError;
use crate::extract::ApiJson;

/// An image as the wire shows it.
fn image_info(i: image::Image) -> ImageInfo {
    ImageInfo {
        name: i.name,
        digest: i.digest,
        size_bytes: i.size_bytes,
        source: match i.source {
            image::ImageSource::Registry { .. } => wire::ImageSource::Registry,
            image::ImageSource::Debootstrap { .. } => wire::ImageSource::Debootstrap,
        },
        entrypoint: i.config.entrypoint,
        cmd: i.config.cmd,
        created_at: i.created_unix,
    }
}

fn progress(p: &image::Progress) -> Progress {
    use image::Progress as P;
    let (message, done, total) = match p {
        P::Resolving { reference } => (format!("resolving {reference}"), None, None),
        P::Downloading { digest, done, total } => {
            (format!("downloading {}", short(digest)), Some(*done), Some(*total))
        }
        P::Unpacking { layer, layers } => {
            (format!("unpacking layer {layer} of {layers}"), Some(*layer as u64), Some(*layers as u64))
        }
        P::Building { step } => (step.clone(), None, None),
        P::MakingFilesystem { bytes } => ("making the ext4 file system".into(), Some(*bytes), None),
        P::Done => ("done".into(), None, None),
    };
    Progress { message, done, total }
}

fn short(digest: &str) -> &str {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    &hex[..hex.len().min(12)]
}

/// Lists images.
#[utoipa::path(get, path = "/v1/images", tag = "images", responses((status = 200, body = ImageList)))]
pub(crate) async fn list(State(state): State<AppState>) -> Result<axum::Json<ImageList>, ApiError> {
    let images = state.machines().images();
    let list = tokio::task::spawn_blocking(move || images.list())
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from(hearth_machines::Error::from(e)))?;
    Ok(axum::Json(ImageList { images: list.into_iter().map(image_info).collect() }))
}

/// Shows one image, by name or digest.
#[utoipa::path(get, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path, description = "Name (`debian:bookworm`) or digest")),
    responses((status = 200, body = ImageInfo), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<axum::Json<ImageInfo>, ApiError> {
    let images = state.machines().images();
    let wanted = name.clone();
    let found = tokio::task::spawn_blocking(move || images.get(&wanted))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from(hearth_machines::Error::from(e)))?;
    found
        .map(|i| axum::Json(image_info(i)))
        .ok_or_else(|| ApiError::from(hearth_machines::Error::ImageNotFound(name)))
}

/// Removes an image that no machine uses.
#[utoipa::path(delete, path = "/v1/images/{name}", tag = "images",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, description = "In use", body = ErrorBody)))]
pub(crate) async fn remove(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let images = state.machines().images();
    let wanted = name.clone();
    let found = tokio::task::spawn_blocking(move || images.get(&wanted))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from(hearth_machines::Error::from(e)))?
        .ok_or_else(|| ApiError::from(hearth_machines::Error::ImageNotFound(name.clone())))?;
    let users = state.machines().image_in_use(&found.digest).await?;
    if !users.is_empty() {
        return Err(ApiError::conflict(
            format!("image {name:?} is the disk of machines {}", users.join(", ")),
            "remove those machines first (`hearth machine rm NAME`)",
        ));
    }
    let images = state.machines().images();
    tokio::task::spawn_blocking(move || images.remove(&found.digest))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?
        .map_err(|e| ApiError::from(hearth_machines::Error::from(e)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pulls an image from an OCI registry (Docker Hub by default).
#[utoipa::path(post, path = "/v1/images/pull", tag = "images", request_body = PullImage,
    responses((status = 200, description = "SSE: progress events, then done (ImageInfo) or error (ErrorBody)"),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn pull(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<PullImage>,
) -> Result<Response, ApiError> {
    image::parse_reference(&body.reference).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("field `reference`: {e}"),
            "e.g. debian:bookworm or ghcr.io/org/app:1.0",
        )
    })?;
    let credentials = match (body.username, body.password) {
        (Some(username), Some(password)) => Some(Credentials { username, password }),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_field",
                "give both `username` and `password`, or neither",
                "anonymous pulls need no credentials",
            ));
        }
    };
    let reference = body.reference;
    Ok(long_operation(state.machines().images(), move |images, report| {
        images.pull(&reference, credentials.as_ref(), report)
    }))
}

/// Builds an image from distribution packages (debootstrap).
#[utoipa::path(post, path = "/v1/images/build", tag = "images", request_body = BuildImage,
    responses((status = 200, description = "SSE: progress events, then done (ImageInfo) or error (ErrorBody)"),
        (status = 400, body = ErrorBody)))]
pub(crate) async fn build(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<BuildImage>,
) -> Result<Response, ApiError> {
    if body.distro != "debian" {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("field `distro`: {:?} cannot be built here", body.distro),
            "only debian can be built today; pull other distributions from a registry",
        ));
    }
    let suite = body.suite.unwrap_or_else(|| "bookworm".into());
    if suite.is_empty() || !suite.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("field `suite`: {suite:?} is not a suite name"),
            "e.g. bookworm",
        ));
    }
    if let Some(bad) = body
        .packages
        .iter()
        .find(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b)))
    {
        return Err(ApiError::bad_request(
            "invalid_field",
            format!("field `packages`: {bad:?} is not a package name"),
            "e.g. iproute2,etcd-server",
        ));
    }
    let packages = body.packages;
    let name = body.name;
    Ok(long_operation(state.machines().images(), move |images, report| {
        images.build_debian(&suite, &packages, name.as_deref(), report)
    }))
}

/// Runs a blocking image operation, streaming its progress as SSE.
fn long_operation<F>(images: Arc<ImageStore>, work: F) -> Response
where
    F: FnOnce(&ImageStore, &mut dyn FnMut(image::Progress)) -> Result<image::Image, image::Error>
        + Send
        + 'static,
{
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    tokio::task::spawn_blocking(move || {
        let progress_tx = tx.clone();
        let mut report = move |p: image::Progress| {
            if let Ok(event) = SseEvent::default().event("progress").json_data(progress(&p)) {
                // A slow client only loses intermediate progress, never the result.
                let _ = progress_tx.try_send(event);
            }
        };
        let event = match work(&images, &mut report) {
            Ok(image) => SseEvent::default().event("done").json_data(image_info(image)),
            Err(error) => {
                let api = ApiError::from(hearth_machines::Error::from(error));
                SseEvent::default().event("error").json_data(ErrorBody { error: api.detail })
            }
        };
        if let Ok(event) = event {
            let _ = tx.blocking_send(event);
        }
    });
    let stream = futures::StreamExt::map(ReceiverStream::new(rx), Ok::<_, Infallible>);
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}
