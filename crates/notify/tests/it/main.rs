//! hearth-notify's integration tests, one binary: deliveries to a real
//! HTTP endpoint and a real SMTP server (aiosmtpd) on loopback.

mod email;
mod webhook;
