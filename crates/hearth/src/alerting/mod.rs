//! What joins the alerting service to the rest of the daemon: the
//! receivers (webhooks and mail through `hearth_notify`, workflow runs),
//! and the inputs (log lines and metric samples, in [`inputs`]).

mod inputs;

pub(crate) use inputs::{feed_samples, tail_machine_logs, tap_logs};

use async_trait::async_trait;
use hearth_alerts::Notification;
use hearth_alerts::rules::{Receiver, ReceiverKind};
use hearth_alerts::webhook::Message;
use hearth_monitor::{Deliver, Failure};

/// Delivers notifications for the daemon.
pub(crate) struct Receivers {
    pub(crate) config: hearth_config::Config,
    pub(crate) workflows: hearth_workflows::Workflows,
    /// Where a person sees alerts: the payload's `externalURL`.
    pub(crate) external_url: String,
}

impl Receivers {
    /// A config secret named by a receiver (`alerts.hook_secret`), from
    /// the global scope, decrypted.
    async fn secret(&self, key: &str) -> Result<String, Failure> {
        let resolved = self
            .config
            .resolve(&hearth_config::Scope::Global, None)
            .await
            .map_err(|e| Failure::retry(format!("cannot read config: {}", hearth_store::chain(&e))))?;
        match resolved.at(key) {
            Some(serde_json::Value::String(text)) => Ok(text),
            Some(other) => Ok(other.to_string()),
            None => Err(Failure::permanent(format!(
                "config key {key:?} is not set: set it with `hearth config set {key} --secret`"
            ))),
        }
    }

    async fn start_workflow(
        &self,
        name: &str,
        field: &str,
        notification: &Notification,
    ) -> Result<(), Failure> {
        let mut input = serde_json::Map::new();
        input.insert(
            field.to_owned(),
            serde_json::to_value(Message::new(notification, &self.external_url)).unwrap_or_default(),
        );
        let request = hearth_workflows::StartRequest {
            workflow: name.to_owned(),
            input: serde_json::Value::Object(input).to_string(),
            // One run per notification, however often it is delivered; the
            // id in every key the run writes keeps them from its own rule.
            id: Some(hearth_monitor::run_id(&notification.rule, &notification.id)),
            started_by: "alert".to_owned(),
            parent: None,
        };
        self.workflows.start(request).await.map(|_| ()).map_err(|e| {
            let message = format!("cannot start workflow {name:?}: {e}");
            match e.kind() {
                hearth_workflows::ErrorKind::NotFound | hearth_workflows::ErrorKind::Invalid => {
                    Failure::permanent(message)
                }
                _ => Failure::retry(message),
            }
        })
    }
}

#[async_trait]
impl Deliver for Receivers {
    async fn deliver(&self, receiver: &Receiver, notification: &Notification) -> Result<(), Failure> {
        match &receiver.kind {
            ReceiverKind::Webhook { url, secret } => {
                let secret = match secret {
                    Some(key) => Some(self.secret(key).await?),
                    None => None,
                };
                let body = serde_json::to_vec(&Message::new(notification, &self.external_url))
                    .map_err(|e| Failure::permanent(e.to_string()))?;
                hearth_notify::webhook::send(url, secret.as_deref(), &notification.id, &body)
                    .await
                    .map_err(failure)
            }
            ReceiverKind::Email { to, from, smtp, tls, user, password } => {
                let mut server = hearth_notify::email::Smtp::new(smtp, *tls).map_err(failure)?;
                if let (Some(user), Some(key)) = (user, password) {
                    let password = self.secret(key).await?;
                    server.credentials =
                        Some(hearth_notify::email::Credentials { user: user.clone(), password });
                }
                let (subject, body) = hearth_notify::render::email(notification, &self.external_url);
                let message = hearth_notify::email::Message {
                    from: from.clone(),
                    to: to.clone(),
                    subject,
                    body,
                    id: notification.id.clone(),
                };
                hearth_notify::email::send(&server, &message).await.map_err(failure)
            }
            ReceiverKind::Workflow { name, input } => self.start_workflow(name, input, notification).await,
            ReceiverKind::Record => Ok(()),
        }
    }
}

fn failure(error: hearth_notify::Error) -> Failure {
    let message = hearth_store::chain(&error);
    if error.is_retryable() { Failure::retry(message) } else { Failure::permanent(message) }
}
