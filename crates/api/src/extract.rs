//! Request extractors that reject bad input with the API's error shape and
//! name the field that was wrong.

use axum::extract::{FromRequest, FromRequestParts, Path, RawPathParams, Request};
use std::sync::Arc;

use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// The largest JSON body any endpoint accepts. Endpoints that take uploads
/// (app components, files) use their own, larger, streaming limits.
pub(crate) const MAX_JSON_BODY: usize = 1024 * 1024;

/// A JSON body, parsed strictly: unknown fields are refused (request types
/// carry `deny_unknown_fields`), and errors name the field.
#[derive(Debug)]
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        if let Some(content_type) = req.headers().get(header::CONTENT_TYPE) {
            let ok = content_type
                .to_str()
                .map(|ct| ct.split(';').next().unwrap_or("").trim().eq_ignore_ascii_case("application/json"))
                .unwrap_or(false);
            if !ok {
                return Err(ApiError::new(
                    axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "unsupported_media_type",
                    format!("the body is {content_type:?}, not JSON"),
                    "send the body as JSON with `Content-Type: application/json`",
                ));
            }
        }
        let body = axum::body::to_bytes(req.into_body(), MAX_JSON_BODY).await.map_err(|_| too_large())?;
        parse_json(&body).map(ApiJson)
    }
}

fn too_large() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!("the request body is larger than {} bytes", MAX_JSON_BODY),
        "send a smaller body; large data belongs in a file",
    )
}

/// Parses a JSON body, turning serde's error into one that names the field.
pub(crate) fn parse_json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_json",
            "the request body is empty",
            "send a JSON object; see /v1/openapi.json for its fields",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|error| {
        let path = error.path().to_string();
        json_error(&path, error.inner())
    })?;
    // Trailing bytes after the object are a syntax error, not ignorable.
    de.end().map_err(|error| json_error(".", &error))?;
    Ok(value)
}

fn json_error(path: &str, error: &serde_json::Error) -> ApiError {
    use serde_json::error::Category;
    let hint = "see /v1/openapi.json for the fields this endpoint takes";
    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => ApiError::bad_request(
            "invalid_json",
            format!("the body is not valid JSON: {error}"),
            "check the JSON syntax of the body",
        ),
        Category::Data => {
            let text = error.to_string();
            let code = if text.starts_with("unknown field") { "unknown_field" } else { "invalid_field" };
            // serde's message ends with "at line L column C"; keep it, it helps.
            let field = if path == "." { "the body".to_owned() } else { format!("field `{path}`") };
            ApiError::bad_request(code, format!("{field}: {text}"), hint)
        }
    }
}

/// A query string, parsed strictly, with errors in the API's shape.
#[derive(Debug)]
pub(crate) struct ApiQuery<T>(pub(crate) T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, ApiError> {
        axum::extract::Query::<T>::try_from_uri(&parts.uri)
            .map(|axum::extract::Query(value)| ApiQuery(value))
            .map_err(|rejection| {
                ApiError::bad_request(
                    "invalid_query",
                    format!("the query string is invalid: {}", rejection.body_text()),
                    "see /v1/openapi.json for the parameters this endpoint takes",
                )
            })
    }
}

/// The longest path parameter that names something (an app, a workflow, a
/// run, a trigger, a secret): over every name rule (63-byte labels, 128-byte
/// run ids) and far under the store's 4,096-byte key limit, so a name never
/// reaches the store too long for a key.
pub(crate) const MAX_PATH_PARAM: usize = 253;

/// Path parameters, checked before a handler sees them: valid UTF-8 once
/// percent-decoded, and each at most `MAX` bytes; else a 400 in the API's
/// error shape, code `invalid_path`, and nothing touched.
#[derive(Debug)]
pub(crate) struct ApiPath<T, const MAX: usize = MAX_PATH_PARAM>(pub(crate) T);

impl<S, T, const MAX: usize> FromRequestParts<S> for ApiPath<T, MAX>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let raw = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|rejection| invalid_path(rejection.body_text()))?;
        if let Some((name, value)) = raw.iter().find(|(_, value)| value.len() > MAX) {
            return Err(ApiError::bad_request(
                "invalid_path",
                format!("the path parameter `{name}` is {} bytes long, over the limit of {MAX}", value.len()),
                "use a shorter name; /v1/openapi.json gives each parameter's pattern and length",
            ));
        }
        let Path(value) =
            Path::<T>::from_request_parts(parts, state).await.map_err(|r| invalid_path(r.body_text()))?;
        Ok(ApiPath(value))
    }
}

fn invalid_path(reason: String) -> ApiError {
    ApiError::bad_request(
        "invalid_path",
        format!("the path is not valid: {reason}"),
        "percent-encode each name as UTF-8; /v1/openapi.json gives each parameter's pattern",
    )
}

/// Whether `path`, percent-decoded, is UTF-8. A `%` not followed by two hex
/// digits stands for itself, as the router takes it.
pub(crate) fn decodes_to_utf8(path: &str) -> bool {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).copied().and_then(hex), bytes.get(i + 2).copied().and_then(hex)) {
            (b'%', Some(hi), Some(lo)) => {
                decoded.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                decoded.push(b);
                i += 1;
            }
        }
    }
    std::str::from_utf8(&decoded).is_ok()
}

/// How many bytes of deploy bodies the daemon receives and holds at once,
/// across all deploys: two of the largest app deploys, or many small ones.
/// A body holds about three times its size while it is decoded and
/// compiled, so this bounds what deploys can take to well under 1 GB.
pub(crate) const DEPLOY_BYTES_IN_FLIGHT: usize = 192 << 20;

/// The bytes of deploy bodies in flight, as permits of 1 KiB: a deploy
/// reserves its declared size (or its endpoint's limit, if it declares
/// none) before it reads a byte, and gives it back when it is answered.
#[derive(Debug, Clone)]
pub(crate) struct DeployBudget(Arc<Semaphore>);

impl DeployBudget {
    pub(crate) fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.div_ceil(1024))))
    }

    fn try_reserve(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let kib = u32::try_from(bytes.div_ceil(1024)).ok()?;
        self.0.clone().try_acquire_many_owned(kib).ok()
    }
}

/// Reads a deploy request: a JSON body of at most `max` bytes (else a 413
/// whose hint starts with `what`, before a byte is read when the request
/// says its length), within `budget` (else a 503 `busy` with
/// `Retry-After`). The permit is the body's share of the budget: hold it
/// until the deploy is done with the body.
pub(crate) async fn deploy_body<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: axum::body::Body,
    max: usize,
    what: &str,
    budget: &DeployBudget,
) -> Result<(T, OwnedSemaphorePermit), ApiError> {
    let too_large = || {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the deploy request is larger than {} MiB", max >> 20),
            format!("{what}; build in release mode and strip debug info"),
        )
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let reserve = match declared {
        Some(length) if length > max as u64 => return Err(too_large()),
        Some(length) => length as usize,
        None => max,
    };
    let permit = budget.try_reserve(reserve).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            format!(
                "other deploys are being received: the daemon takes at most {} MiB of deploy requests at once",
                DEPLOY_BYTES_IN_FLIGHT >> 20
            ),
            "try again in a moment (the answer's Retry-After says when); deploy fewer large components at once",
        )
    })?;
    let bytes = axum::body::to_bytes(body, reserve).await.map_err(|_| too_large())?;
    Ok((parse_json(&bytes)?, permit))
}

/// The bytes of a deploy request's `component_base64` field.
pub(crate) fn component_bytes(base64_text: &str) -> Result<Vec<u8>, ApiError> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.decode(base64_text.as_bytes()).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("field `component_base64`: not valid base64 ({e})"),
            "send the component's bytes base64-encoded (standard alphabet)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Inner {
        count: u32,
    }

    fn check(input: &str, expect_code: &str, expect_in_message: &str) {
        let error = parse_json::<Body>(input.as_bytes()).expect_err(input);
        assert_eq!(error.code(), expect_code, "{input}: {error}");
        assert!(
            error.detail.message.contains(expect_in_message),
            "{input}: message {:?} lacks {expect_in_message:?}",
            error.detail.message
        );
    }

    #[test]
    fn bad_bodies_name_what_is_wrong() {
        check("", "invalid_json", "empty");
        check("{", "invalid_json", "not valid JSON");
        check("{\"name\": \"a\"} trailing", "invalid_json", "not valid JSON");
        check("{\"name\": \"a\", \"nmae\": 1}", "unknown_field", "unknown field `nmae`");
        check("{\"name\": 5}", "invalid_field", "field `name`");
        check("{\"name\": \"a\", \"inner\": {\"count\": -1}}", "invalid_field", "field `inner.count`");
        check("{}", "invalid_field", "missing field `name`");
    }

    #[test]
    fn good_body_parses() {
        let body: Body = parse_json(br#"{"name": "a", "inner": {"count": 2}}"#).expect("parses");
        assert_eq!(body.name, "a");
    }
}
