//! Host names on the ingress that belong to another subsystem rather than
//! to an app: the workflows' webhooks (`hooks.localhost`) register here.
//! They are looked up only when no app route matches, so they cost the
//! apps' requests nothing.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

/// Largest body a hook accepts.
pub const MAX_HOOK_BODY: usize = 1 << 20;

/// A request to a hook host, body read.
#[derive(Debug, Clone)]
pub struct HookRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

/// What a hook answers.
#[derive(Debug, Clone)]
pub struct HookResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

pub type HookFuture = Pin<Box<dyn Future<Output = HookResponse> + Send>>;

/// Handles every request to one host name.
pub type HookHandler = Arc<dyn Fn(HookRequest) -> HookFuture + Send + Sync>;
