//! What can go wrong delivering a notification, and whether trying again
//! later can help.

use std::error::Error as StdError;
use std::time::Duration;

/// A delivery attempt failed. [`Error::is_retryable`] says whether a later
/// attempt may succeed; the message says what to do otherwise.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The receiver's URL cannot be sent to.
    #[error("`{url}` cannot be sent to: {problem}; fix the receiver in the rules file")]
    Url { url: String, problem: &'static str },

    /// A request header cannot hold the value given.
    #[error("the {name} header cannot hold {value:?}: use printable ASCII")]
    Header { name: &'static str, value: String },

    /// An email address does not parse.
    #[error("{address:?} is not an email address like ops@example.com; fix the receiver's `{field}`")]
    Address { field: &'static str, address: String },

    /// The mail could not be put together.
    #[error("the mail could not be built; this is a bug in hearth, please report it")]
    Build {
        #[source]
        source: lettre::error::Error,
    },

    /// No connection could be made, or it broke before an answer came:
    /// refused, reset, unreachable, or the name did not resolve.
    #[error(
        "could not talk to {target}; check that it is up and reachable from this host (a later attempt may succeed)"
    )]
    Connect {
        target: String,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },

    /// No answer came in time.
    #[error("{target} did not answer within {}s; a later attempt may succeed", .after.as_secs_f32())]
    Timeout { target: String, after: Duration },

    /// The TLS handshake was refused: most often a certificate that is not
    /// valid for the name, expired, or not signed by a public CA.
    #[error(
        "the TLS handshake with {target} failed; it needs a certificate valid for its name from a public CA (retrying will not help)"
    )]
    Tls {
        target: String,
        #[source]
        source: rustls::Error,
    },

    /// The webhook answered with a status that is not a success.
    #[error("{url} answered {status}{}; {}", snippet(.body), status_advice(*.status))]
    Status { url: String, status: u16, body: String },

    /// The webhook answered with a redirect, which is not followed: a
    /// signed POST is not replayed to another address.
    #[error(
        "{url} answered {status}, a redirect to {location:?}; hearth does not follow redirects: set the receiver's url to where it points"
    )]
    Redirect { url: String, status: u16, location: String },

    /// STARTTLS is required and the SMTP server does not offer it.
    #[error(
        "the SMTP server {server} does not offer STARTTLS, which the receiver requires (tls = \"starttls\"): use tls = \"tls\" if it speaks TLS from the start (port 465), or fix the server; retrying will not help"
    )]
    StartTlsMissing { server: String },

    /// The SMTP server answered a command with an error reply.
    #[error("the SMTP server {server} answered {code} {reply}; {}", smtp_advice(*.code))]
    SmtpReply { server: String, code: u16, reply: String },

    /// The SMTP exchange failed in a way that will not change by itself.
    #[error(
        "the SMTP exchange with {server} failed; check the receiver's smtp, tls and credentials (retrying will not help)"
    )]
    Smtp {
        server: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

impl Error {
    /// Whether a later attempt may succeed: a connection refused, reset or
    /// timed out, HTTP 5xx, 408 and 429, an SMTP 4xx reply. Anything else
    /// (a bad URL or address, another HTTP 4xx, a redirect, an SMTP 5xx
    /// reply, a refused certificate, STARTTLS missing) needs a person.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Connect { .. } | Error::Timeout { .. } => true,
            Error::Status { status, .. } => retryable_status(*status),
            Error::SmtpReply { code, .. } => (400..500).contains(code),
            Error::Url { .. }
            | Error::Header { .. }
            | Error::Address { .. }
            | Error::Build { .. }
            | Error::Tls { .. }
            | Error::Redirect { .. }
            | Error::StartTlsMissing { .. }
            | Error::Smtp { .. } => false,
        }
    }

    /// `source`, an I/O error on the way to `target`, as [`Error::Tls`]
    /// when rustls refused the handshake, else [`Error::Connect`].
    pub(crate) fn io(target: &str, source: Box<dyn StdError + Send + Sync>) -> Error {
        match find_rustls(&*source) {
            Some(tls) => Error::Tls { target: target.to_owned(), source: tls.clone() },
            None => Error::Connect { target: target.to_owned(), source },
        }
    }
}

/// HTTP statuses worth another attempt: the server's trouble (5xx), a
/// request timeout, too many requests.
pub(crate) fn retryable_status(status: u16) -> bool {
    status >= 500 || status == 408 || status == 429
}

fn status_advice(status: u16) -> &'static str {
    match status {
        s if retryable_status(s) => "a later attempt may succeed",
        401 | 403 => {
            "check that the receiver's secret is the one the endpoint expects (retrying will not help)"
        }
        404 | 405 => "check the receiver's url (retrying will not help)",
        _ => "the endpoint refused the request; fix the endpoint or the receiver (retrying will not help)",
    }
}

fn smtp_advice(code: u16) -> &'static str {
    match code {
        400..500 => "the server deferred the mail; a later attempt may succeed",
        530 | 534 | 535 | 538 => "check the receiver's user and password (retrying will not help)",
        _ => {
            "fix what it names in the receiver (an address, the sender, the credentials) or on the server; retrying will not help"
        }
    }
}

/// `: BODY` with the first line of a response body, short, or nothing.
fn snippet(body: &str) -> String {
    let line = body.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("");
    if line.is_empty() {
        return String::new();
    }
    let mut cut: String = line.chars().take(200).collect();
    if cut.len() < line.len() {
        cut.push('…');
    }
    format!(": {cut}")
}

/// The rustls error behind `error`, if any. An [`std::io::Error`] that
/// wraps another error reports that error's source as its own, skipping
/// it, so each one is opened with `get_ref`.
fn find_rustls<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(error);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        let inner = e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
        if let Some(tls) = inner.and_then(|inner| find_rustls(inner)) {
            return Some(tls);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn http_5xx_408_and_429_are_retryable_and_other_4xx_are_not() {
        let status = |status| Error::Status { url: "http://x/".into(), status, body: String::new() };
        for s in [500, 502, 503, 504, 408, 429] {
            assert!(status(s).is_retryable(), "{s}");
        }
        for s in [400, 401, 403, 404, 410, 422] {
            assert!(!status(s).is_retryable(), "{s}");
        }
    }

    #[test]
    fn smtp_4xx_replies_are_retryable_and_5xx_are_not() {
        let reply = |code| Error::SmtpReply { server: "s:25".into(), code, reply: "x".into() };
        assert!(reply(421).is_retryable());
        assert!(reply(451).is_retryable());
        assert!(!reply(550).is_retryable());
        assert!(!reply(535).is_retryable());
    }

    #[test]
    fn a_refused_certificate_is_permanent_and_a_reset_is_not() {
        let refused = io::Error::new(
            io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::Expired),
        );
        let e = Error::io("https://x/", Box::new(refused));
        assert!(matches!(e, Error::Tls { .. }) && !e.is_retryable(), "{e:?}");

        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        let e = Error::io("https://x/", Box::new(reset));
        assert!(matches!(e, Error::Connect { .. }) && e.is_retryable(), "{e:?}");
    }

    #[test]
    fn a_status_message_shows_the_first_line_of_the_body_and_what_to_do() {
        let e =
            Error::Status { url: "http://x/".into(), status: 403, body: "\n  bad signature\nmore".into() };
        assert_eq!(
            e.to_string(),
            "http://x/ answered 403: bad signature; check that the receiver's secret is the one the \
             endpoint expects (retrying will not help)"
        );
        let e = Error::Status { url: "http://x/".into(), status: 503, body: String::new() };
        assert_eq!(e.to_string(), "http://x/ answered 503; a later attempt may succeed");
    }
}
