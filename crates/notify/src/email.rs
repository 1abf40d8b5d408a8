//! One mail of a notification, over SMTP, with lettre.
//!
//! A new connection per attempt (no pool): notifications are rare, and a
//! pooled connection the server closed meanwhile would fail an attempt for
//! nothing. TLS is rustls with the webpki roots and the ring provider, as
//! for webhooks. The `Message-ID` comes from the notification's id
//! ([`message_id`]), so a mail sent again after a failed attempt or a
//! restart has the same id and a mail client can drop the repeat.

use std::time::Duration;

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, Mailboxes, header};
use lettre::transport::smtp::AsyncSmtpTransport;
use lettre::transport::smtp::authentication::Credentials as LettreCredentials;
use lettre::transport::smtp::client::{Tls as LettreTls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncTransport, Tokio1Executor};

pub use hearth_alerts::rules::Tls;

use crate::Error;

/// How long each step of an exchange (connecting, each command) may take
/// unless [`Smtp::timeout`] says otherwise.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// An SMTP server and how to talk to it. Its `Debug` leaves the password
/// out.
#[derive(Debug, Clone)]
pub struct Smtp {
    /// A name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub tls: Tls,
    /// Sent only after TLS is up, unless `tls` is [`Tls::None`].
    pub credentials: Option<Credentials>,
    /// For each step of the exchange (connecting, each command).
    pub timeout: Duration,
}

impl Smtp {
    /// `address` (`HOST:PORT`, `[V6]:PORT`, as a rules file's `smtp`),
    /// with no credentials and [`TIMEOUT`].
    pub fn new(address: &str, tls: Tls) -> Result<Smtp, Error> {
        let bad = || Error::Url { url: address.to_owned(), problem: "an SMTP server is HOST:PORT" };
        let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
        let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Smtp { host: host.to_owned(), port, tls, credentials: None, timeout: TIMEOUT })
    }

    /// `host:port`, for messages.
    fn server(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// An SMTP login. Its `Debug` leaves the password out.
#[derive(Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("user", &self.user).field("password", &"(secret)").finish()
    }
}

/// A plain-text mail about one notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub from: String,
    pub to: Vec<String>,
    pub subject: String,
    pub body: String,
    /// The notification's id ([`hearth_alerts::Notification::id`]): the
    /// `Message-ID` is made from it.
    pub id: String,
}

/// The `Message-ID` of the mail about notification `id` sent from `from`:
/// `<hearth.ID@DOMAIN>`, with DOMAIN the sender's, and any character of
/// `id` other than a letter, digit, `-` or `_` written `=XX` (its bytes in
/// hex), so it is always the same for the same notification.
pub fn message_id(id: &str, from: &str) -> String {
    let domain = from.rsplit_once('@').map_or("hearth.invalid", |(_, d)| d.trim_end_matches('>'));
    let mut local = String::from("hearth.");
    for byte in id.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            local.push(char::from(byte));
        } else {
            local.push_str(&format!("={byte:02X}"));
        }
    }
    format!("<{local}@{domain}>")
}

/// `Auto-Submitted: auto-generated` (RFC 3834): mail robots, vacation
/// responders included, do not answer it.
#[derive(Debug, Clone, Copy)]
struct AutoSubmitted;

impl header::Header for AutoSubmitted {
    fn name() -> HeaderName {
        HeaderName::new_from_ascii_str("Auto-Submitted")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(AutoSubmitted)
    }

    fn display(&self) -> HeaderValue {
        HeaderValue::new(Self::name(), "auto-generated".to_owned())
    }
}

fn mailbox(field: &'static str, address: &str) -> Result<Mailbox, Error> {
    address.parse().map_err(|_| Error::Address { field, address: address.to_owned() })
}

/// Builds the mail: addresses checked, headers set.
fn build(message: &Message) -> Result<lettre::Message, Error> {
    let from = mailbox("from", &message.from)?;
    let mut to = Mailboxes::new();
    for address in &message.to {
        to.push(mailbox("to", address)?);
    }
    if message.to.is_empty() {
        return Err(Error::Address { field: "to", address: String::new() });
    }
    lettre::Message::builder()
        .from(from)
        .mailbox(header::To::from(to))
        .subject(message.subject.as_str())
        .message_id(Some(message_id(&message.id, &message.from)))
        .user_agent(crate::webhook::USER_AGENT_VALUE.to_owned())
        .header(AutoSubmitted)
        .header(ContentType::TEXT_PLAIN)
        .body(message.body.clone())
        .map_err(|source| Error::Build { source })
}

/// The name this host gives in `EHLO`: its host name, or `localhost`.
fn hello_name() -> ClientId {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| {
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .map_or_else(|| ClientId::Domain("localhost".to_owned()), ClientId::Domain)
}

/// Sends `message` through `smtp`, once.
pub async fn send(smtp: &Smtp, message: &Message) -> Result<(), Error> {
    let mail = build(message)?;
    let server = smtp.server();
    let tls = match smtp.tls {
        Tls::None => LettreTls::None,
        Tls::StartTls | Tls::Opportunistic | Tls::Tls => {
            let parameters =
                TlsParameters::new(smtp.host.clone()).map_err(|e| from_smtp(&server, smtp.timeout, e))?;
            match smtp.tls {
                Tls::StartTls => LettreTls::Required(parameters),
                Tls::Opportunistic => LettreTls::Opportunistic(parameters),
                _ => LettreTls::Wrapper(parameters),
            }
        }
    };
    let mut transport = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str())
        .port(smtp.port)
        .tls(tls)
        .hello_name(hello_name())
        .timeout(Some(smtp.timeout));
    if let Some(c) = &smtp.credentials {
        transport = transport.credentials(LettreCredentials::new(c.user.clone(), c.password.clone()));
    }
    transport.build().send(mail).await.map(drop).map_err(|e| from_smtp(&server, smtp.timeout, e))
}

/// lettre's error, sorted by what can be done about it.
fn from_smtp(server: &str, timeout: Duration, e: lettre::transport::smtp::Error) -> Error {
    use std::error::Error as _;
    if let Some(code) = e.status() {
        let reply = e.source().map(ToString::to_string).unwrap_or_default();
        return Error::SmtpReply { server: server.to_owned(), code: u16::from(code), reply };
    }
    // lettre says so only in words.
    if e.is_client() && e.to_string().contains("STARTTLS is not supported") {
        return Error::StartTlsMissing { server: server.to_owned() };
    }
    if e.is_timeout() {
        return Error::Timeout { target: format!("the SMTP server {server}"), after: timeout };
    }
    if e.is_client() || e.is_response() || e.is_tls() || e.is_transport_shutdown() {
        return Error::Smtp { server: server.to_owned(), source: e };
    }
    // Connecting, or the connection itself.
    Error::io(&format!("the SMTP server {server}"), Box::new(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_id_is_the_notifications_id_at_the_senders_domain() {
        assert_eq!(
            message_id("0123456789abcdef-1-2", "hearth@example.test"),
            "<hearth.0123456789abcdef-1-2@example.test>"
        );
        assert_eq!(message_id("a/b c", "x@y"), "<hearth.a=2Fb=20c@y>");
    }

    #[test]
    fn an_smtp_address_is_host_and_port() {
        let s = Smtp::new("127.0.0.1:2525", Tls::None).unwrap();
        assert_eq!((s.host.as_str(), s.port, s.server()), ("127.0.0.1", 2525, "127.0.0.1:2525".to_owned()));
        let s = Smtp::new("[::1]:25", Tls::StartTls).unwrap();
        assert_eq!((s.host.as_str(), s.server()), ("::1", "[::1]:25".to_owned()));
        assert!(Smtp::new("mail.example.test", Tls::Tls).is_err());
        assert!(Smtp::new(":25", Tls::Tls).is_err());
    }

    #[test]
    fn a_bad_address_is_a_permanent_error_naming_its_field() {
        let message = Message {
            from: "hearth@example.test".into(),
            to: vec!["ops@example.test".into(), "not an address".into()],
            subject: "s".into(),
            body: "b".into(),
            id: "1".into(),
        };
        let e = build(&message).unwrap_err();
        assert!(!e.is_retryable());
        assert_eq!(
            e.to_string(),
            "\"not an address\" is not an email address like ops@example.com; fix the receiver's `to`"
        );
    }

    #[test]
    fn the_password_is_not_in_debug_output() {
        let mut s = Smtp::new("h:1", Tls::Tls).unwrap();
        s.credentials = Some(Credentials { user: "u".into(), password: "hunter2".into() });
        assert!(!format!("{s:?}").contains("hunter2"));
    }
}
