//! Alert receivers: one delivery attempt of a notification to a webhook or
//! by email, and the wait before the next attempt.
//!
//! The daemon's alert service keeps the outbox and the retry schedule in
//! the store (see [`hearth_alerts`]); for each notification due it calls:
//!
//! - [`webhook::send`] with the notification's JSON
//!   ([`hearth_alerts::webhook::Message`]), the receiver's secret (read from
//!   config), and the notification's id as the `Idempotency-Key`;
//! - or [`render::email`] for a subject and body, then [`email::send`]
//!   with an [`email::Smtp`] made from the receiver ([`email::Smtp::new`]
//!   on its `smtp` and `tls`, the password read from config);
//!
//! and on an error, [`Error::is_retryable`] says whether to try again after
//! [`backoff`]`(attempts so far)`, or to give up and record the error's
//! message, which says what a person should fix.
//!
//! # Policy
//!
//! The tests are named after these sentences.
//!
//! **Retries.** A failure that may pass by itself is retryable: a
//! connection refused or reset, a name that does not resolve, no answer
//! within the timeout, HTTP 5xx, 408 and 429, an SMTP 4xx reply. One that
//! needs a person is not: a bad URL or address, any other HTTP 4xx, a
//! redirect, an SMTP 5xx reply (a refused login among them), a
//! certificate refused, STARTTLS required and not offered.
//!
//! **Back-off.** The first retry waits a second; each wait doubles the one
//! before, up to five minutes, which no wait exceeds. Jitter draws each
//! wait between half and all of it, so that the receivers a restart or an
//! outage left waiting are not all retried at the same instant.
//!
//! **Repeats.** One notification is sent the same on every attempt: the
//! webhook's `Idempotency-Key` and the mail's `Message-ID`
//! ([`email::message_id`]) are its id, so a receiver can drop what an
//! attempt that failed after sending (a timeout, a crash) sends again.
//!
//! **Secrets.** The webhook secret and the SMTP password are config
//! secrets, handed in for one attempt and never written in an error or a
//! `Debug`. A webhook's body is signed with its secret (`X-Hearth-
//! Signature`, [`hearth_triggers::signature`]), never the secret itself.

mod backoff;
pub mod email;
mod error;
pub mod render;
pub mod webhook;

pub use backoff::{FIRST_WAIT, MAX_WAIT, backoff};
pub use error::Error;
