//! Request extractors that reject bad input with the API's error shape and
//! name the field that was wrong.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::header;
use axum::http::request::Parts;
use serde::de::DeserializeOwned;

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

/// Reads a deploy request: a JSON body of at most `max` bytes (else an
/// error whose hint starts with `what`).
pub(crate) async fn deploy_body<T: DeserializeOwned>(
    body: axum::body::Body,
    max: usize,
    what: &str,
) -> Result<T, ApiError> {
    let bytes = axum::body::to_bytes(body, max).await.map_err(|_| {
        ApiError::new(
            axum::http::StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the deploy request is larger than {} MiB", max >> 20),
            format!("{what}; build in release mode and strip debug info"),
        )
    })?;
    parse_json(&bytes)
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
