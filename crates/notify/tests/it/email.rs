//! Mails to a real SMTP server: aiosmtpd on loopback
//! ([`hearth_testkit::smtp::SmtpSink`]).

use std::collections::BTreeMap;
use std::time::Duration;

use hearth_alerts::engine::NotifiedAlert;
use hearth_alerts::{Notification, Status};
use hearth_notify::email::{self, Smtp, Tls};
use hearth_notify::{Error, render};
use hearth_testkit::smtp::SmtpSink;

fn notification() -> Notification {
    let labels: BTreeMap<String, String> =
        [("rule", "machine-failed"), ("key", "machines/web-1"), ("severity", "critical")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    Notification {
        id: "0123456789abcdef-1-1".into(),
        group_key: "ops/machine-failed{}".into(),
        group_id: "0123456789abcdef-1".into(),
        seq: 1,
        receiver: "ops".into(),
        rule: "machine-failed".into(),
        at: 1_767_225_600_000,
        status: Status::Firing,
        group_labels: BTreeMap::new(),
        alerts: vec![NotifiedAlert {
            fingerprint: "aaaaaaaaaaaaaaaa".into(),
            status: Status::Firing,
            labels,
            annotations: [("summary".to_owned(), "machine machines/web-1 failed: oom".to_owned())].into(),
            starts_at: 1_767_225_600_000,
            ends_at: None,
        }],
    }
}

fn message(n: &Notification) -> email::Message {
    let (subject, body) = render::email(n, "http://127.0.0.1:7070/alerts");
    email::Message {
        from: "hearth@example.test".into(),
        to: vec!["ops@example.test".into(), "oncall@example.test".into()],
        subject,
        body,
        id: n.id.clone(),
    }
}

#[tokio::test]
async fn a_mail_reaches_the_smtp_server_once_with_its_subject_message_id_and_body() {
    let sink = SmtpSink::start().await;
    let n = notification();
    let message = message(&n);
    email::send(&Smtp::new(&sink.address(), Tls::None).unwrap(), &message).await.unwrap();

    let mails = sink.wait_for(1, Duration::from_secs(10)).await;
    // Anything more would have come with the first.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sink.mails().len(), 1, "{mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.header("Subject"), Some("[FIRING:1] machine-failed"));
    assert_eq!(mail.header("Message-ID"), Some("<hearth.0123456789abcdef-1-1@example.test>"));
    assert_eq!(mail.header("From"), Some("hearth@example.test"));
    assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"));
    // aiosmtpd records the envelope's recipients.
    let rcpt = mail.header("X-RcptTo").unwrap_or_default();
    assert!(rcpt.contains("ops@example.test") && rcpt.contains("oncall@example.test"), "{rcpt}");
    assert_eq!(mail.body.replace("\r\n", "\n").trim_end(), message.body.trim_end());
    assert!(mail.body.contains("- machine machines/web-1 failed: oom"), "{}", mail.body);
    assert!(mail.body.contains("started: 2026-01-01T00:00:00.000Z"), "{}", mail.body);
}

#[tokio::test]
async fn a_mail_sent_again_has_the_same_message_id() {
    let sink = SmtpSink::start().await;
    let smtp = Smtp::new(&sink.address(), Tls::Opportunistic).unwrap();
    let message = message(&notification());
    email::send(&smtp, &message).await.unwrap();
    email::send(&smtp, &message).await.unwrap();
    let mails = sink.wait_for(2, Duration::from_secs(10)).await;
    assert_eq!(mails.len(), 2);
    assert_eq!(mails[0].header("Message-ID"), mails[1].header("Message-ID"));
}

#[tokio::test]
async fn starttls_required_against_a_plain_server_is_a_clear_permanent_error() {
    let sink = SmtpSink::start().await;
    let smtp = Smtp::new(&sink.address(), Tls::StartTls).unwrap();
    let e = email::send(&smtp, &message(&notification())).await.unwrap_err();
    assert!(matches!(e, Error::StartTlsMissing { .. }) && !e.is_retryable(), "{e:?}");
    assert!(
        e.to_string().starts_with(&format!(
            "the SMTP server {} does not offer STARTTLS, which the receiver requires",
            sink.address()
        )),
        "{e}"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(sink.mails().is_empty(), "nothing is sent in clear");
}

#[tokio::test]
async fn a_refused_smtp_connection_is_retryable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    drop(listener);
    let e =
        email::send(&Smtp::new(&address, Tls::None).unwrap(), &message(&notification())).await.unwrap_err();
    assert!(e.is_retryable(), "{e:?}");
    assert!(e.to_string().starts_with(&format!("could not talk to the SMTP server {address}")), "{e}");
}
