//! Apps' webhooks as guards in front of their routes: which checks each
//! app's serving version carries, and where its deliveries are kept. The
//! checks themselves (signature, path rules, the `Idempotency-Key` claim)
//! are `hearth-triggers`' webhook guard; the ingress applies them.

use std::sync::Arc;
use std::time::Duration;

use hearth_triggers::delivery::{self, Claim};
use hearth_triggers::guard::{self, Guard};

use super::store::manifest_triggers;
use super::{Spec, Trigger};
use crate::Error;
use crate::record::App;
use crate::service::Apps;

/// An app's webhook checks, longest path first, as the ingress applies
/// them.
pub(crate) type Guards = Arc<[Guard]>;

/// The webhook checks of `app`'s active version with the triggers added to
/// it, longest path first: a request meets the most specific one.
pub(crate) fn guards(app: &App, added: &[Trigger]) -> Guards {
    let mut guards: Vec<Guard> = manifest_triggers(app)
        .iter()
        .chain(added)
        .filter_map(|t| match &t.spec {
            Spec::Webhook(w) => {
                Some(Guard { path: w.path.trim_end_matches('/').to_owned(), secret: w.secret.clone() })
            }
            _ => None,
        })
        .collect();
    guard::sort(&mut guards);
    guards.into()
}

/// Deliveries to webhooks, by `Idempotency-Key`: `apps/deliveries/NAME/HASH`,
/// kept about a day.
pub const DELIVERIES: &str = "apps/deliveries/";

/// Where a delivery to `app`'s webhook at `path` with `Idempotency-Key`
/// `key` is remembered: `apps/deliveries/APP/HASH`.
pub fn delivery_key(app: &str, path: &str, key: &str) -> String {
    delivery::key(DELIVERIES, app, path, key)
}

impl Apps {
    /// Claims a delivery's key before the app sees it, so two deliveries
    /// with one key never both reach the app. A claim still pending well
    /// past the app's request timeout (`timeout`) was left by a daemon that
    /// died handling it, and is taken over.
    pub(crate) async fn claim_delivery(
        &self,
        app: &str,
        path: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Claim, Error> {
        let claim = self.inner.deliveries.claim(delivery_key(app, path, key), timeout).await?;
        if let Claim::New(pending) = &claim
            && pending.took_over()
        {
            tracing::info!(app, path, "Took over a webhook delivery left unfinished by an earlier daemon.");
        }
        Ok(claim)
    }
}

impl From<delivery::Error> for Error {
    fn from(e: delivery::Error) -> Self {
        match e {
            delivery::Error::Store(e) => Error::Store(e),
            delivery::Error::Corrupt(key, e) => Error::Corrupt(key, e),
            delivery::Error::Encode(e) => Error::Internal(e.to_string()),
        }
    }
}
