//! Handing a notification to its receiver: the [`Deliver`] trait the
//! daemon implements (webhooks, mail and workflow runs need the daemon's
//! clients and config). The wait between attempts is
//! [`hearth_notify::backoff`].

use hearth_alerts::Notification;
use hearth_alerts::rules::Receiver;

/// Why a delivery failed, and whether trying again could help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub retryable: bool,
    pub message: String,
}

impl Failure {
    pub fn retry(message: impl Into<String>) -> Failure {
        Failure { retryable: true, message: message.into() }
    }

    pub fn permanent(message: impl Into<String>) -> Failure {
        Failure { retryable: false, message: message.into() }
    }
}

/// Delivers one notification to one receiver, once. `record` receivers
/// never reach it: the history is the service's own.
#[async_trait::async_trait]
pub trait Deliver: Send + Sync + 'static {
    async fn deliver(&self, receiver: &Receiver, notification: &Notification) -> Result<(), Failure>;
}
