//! Root disk images: pulled or built.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

wire_enum! {
    /// Where an image came from.
    ImageSource {
        /// Pulled from a registry.
        Registry = "registry",
        /// Built with debootstrap.
        Debootstrap = "debootstrap",
    }
}

/// An image on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageInfo {
    pub name: String,
    pub digest: String,
    pub size_bytes: u64,
    pub source: ImageSource,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub created_at: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageList {
    pub images: Vec<ImageInfo>,
}

/// `POST /v1/images/pull`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PullImage {
    /// e.g. `debian:bookworm`, `ghcr.io/org/app:1.2`, `127.0.0.1:5000/test`.
    pub reference: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `POST /v1/images/build`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BuildImage {
    /// Only `debian` for now.
    pub distro: String,
    /// Default `bookworm`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suite: Option<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    /// The image's name; default `debian:SUITE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// One progress report of a long operation (streamed as SSE `progress`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Progress {
    /// What is happening, e.g. `downloading sha256:ab12…`.
    pub message: String,
    /// Bytes or steps done, when known.
    pub done: Option<u64>,
    /// Bytes or steps in all, when known.
    pub total: Option<u64>,
}
