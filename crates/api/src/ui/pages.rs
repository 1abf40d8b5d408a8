//! The few pages the daemon writes itself, without the dashboard's code:
//! signed out, a refused sign-in link, signed in, and not built. Each is
//! one self-contained HTML document that shows no data.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The Content-Security-Policy of these pages: their own inline style,
/// nothing else.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

const STYLE: &str = "\
:root{color-scheme:light dark;font-family:system-ui,sans-serif;line-height:1.5}\
body{max-width:38rem;margin:12vh auto;padding:0 1.25rem}\
h1{font-size:1.5rem}\
code{font-size:1.05em;padding:.1em .35em;border:1px solid #8888;border-radius:4px}\
a{color:#0a5bc4}@media (prefers-color-scheme:dark){a{color:#7cb4ff}}";

fn page(status: StatusCode, title: &str, body: &str, head: &str) -> Response {
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head}\
         <title>{title} · hearth</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}</main></body></html>\n"
    );
    let mut response = (status, html).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    super::common_headers(headers);
    response
}

/// No session: how to get one. Never the dashboard itself.
pub(crate) fn signed_out() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Sign in to hearth",
        "<p>The dashboard needs a sign-in link. On the daemon's host, run</p>\
         <p><code>hearth ui</code></p>\
         <p>and open the link it prints. Each link works once, within a minute.</p>",
        "",
    )
}

/// A code used before, expired, or never issued.
pub(crate) fn code_refused() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This sign-in link cannot be used",
        "<p>It was already used, or it has expired: each link works once, within a minute of \
         <code>hearth ui</code> printing it.</p>\
         <p>Run <code>hearth ui</code> again for a new link.</p>",
        "",
    )
}

/// Signed in: on to the dashboard. A page rather than a redirect, so that
/// the next request is made from this site and carries the SameSite=Strict
/// cookie even when the link was opened from another site.
pub(crate) fn signed_in(cookie: &str) -> Response {
    let mut response = page(
        StatusCode::OK,
        "Signed in",
        "<p><a href=\"/ui/\">Open the dashboard</a>.</p>",
        "<meta http-equiv=\"refresh\" content=\"0; url=/ui/\">",
    );
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// This binary was built without the dashboard (`ui/dist` was missing).
pub(crate) fn not_built() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "The dashboard was not built",
        "<p>This <code>hearth</code> binary was compiled without the dashboard's files \
         (<code>ui/dist</code> did not exist when it was built).</p>\
         <p>Run <code>make build</code> in the hearth repository (it runs <code>make ui</code>: \
         <code>npm ci</code> and <code>npm run build</code> in <code>ui/</code>), then restart \
         <code>hearth serve</code> with the new binary.</p>\
         <p>The API is unaffected: every view's data is in the CLI too.</p>",
        "",
    )
}

/// A request for a host name that is not the dashboard's own.
pub(crate) fn wrong_host(origin: &str) -> Response {
    page(
        StatusCode::MISDIRECTED_REQUEST,
        "Wrong address",
        &format!(
            "<p>The dashboard answers only at its own address, <a href=\"{origin}/ui/\">{origin}/ui/</a>.</p>"
        ),
        "",
    )
}

/// The daemon failed while checking a session.
pub(crate) fn failed(message: &str) -> Response {
    let message = message.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "The daemon failed",
        &format!("<p>{message}</p><p>The daemon's log (<code>hearth serve</code>) has details.</p>"),
        "",
    )
}
