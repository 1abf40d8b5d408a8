//! Webhook deliveries handled once per `Idempotency-Key`: the key is
//! claimed in the store before the subsystem handles the delivery, and the
//! answer's status is remembered (about a day) so that a redelivery is
//! answered with it instead of handled again. A failure (5xx) forgets the
//! key, so the sender's retry is handled; so does a delivery dropped
//! unanswered, and a claim left pending by a daemon that died is taken
//! over once it is well past the handler's timeout.
//!
//! The subsystem supplies where deliveries are kept ([`key`] under a
//! prefix of its own) and what a delivery does; this module owns the
//! claim, its lease and its settling.

use std::sync::Arc;
use std::time::{Duration, Instant};

use hearth_store::{Compare, LeaseId, Op, OpResponse, Store, Txn};
use serde::{Deserialize, Serialize};

use crate::{chain, now_ms};

/// How long a delivery is remembered: a lease of 25 hours, shared by the
/// deliveries of an hour, so each is kept 24 to 25 hours.
const DELIVERY_TTL: Duration = Duration::from_secs(25 * 3600);
const DELIVERY_LEASE_REUSE: Duration = Duration::from_secs(3600);
/// How long past the handler's timeout a pending delivery is taken for
/// one that its daemon dropped.
const STALE_MARGIN: Duration = Duration::from_secs(5);

/// What can go wrong claiming a delivery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] hearth_store::Error),

    /// The delivery record at this key is unreadable.
    #[error("the delivery record {0:?} is unreadable")]
    Corrupt(String, #[source] serde_json::Error),

    /// A delivery record cannot be encoded.
    #[error("a delivery record cannot be encoded: {0}")]
    Encode(#[source] serde_json::Error),
}

/// Where a delivery to `owner`'s webhook at `path` with `Idempotency-Key`
/// `key` is remembered: `PREFIX/OWNER/HASH` (`prefix` ends with `/`).
pub fn key(prefix: &str, owner: &str, path: &str, key: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::new().chain_update(path).chain_update([0]).chain_update(key).finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{owner}/{hex}")
}

/// What became of a delivery's `Idempotency-Key`.
#[derive(Debug)]
pub enum Claim {
    /// First time: handle it, then [`Pending::settle`] the claim.
    New(Pending),
    /// Handled before; the handler answered with this status.
    Done(u16),
    /// Being handled right now.
    InFlight,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Delivery {
    /// 0 while the handler runs.
    status: u16,
    at: u64,
}

/// The deliveries of one subsystem: the store they are kept in, and the
/// lease they are remembered under. Cheap to clone.
#[derive(Clone)]
pub struct Deliveries {
    store: Arc<dyn Store>,
    /// The lease deliveries are remembered under, and when it was granted.
    lease: Arc<tokio::sync::Mutex<Option<(LeaseId, Instant)>>>,
}

impl std::fmt::Debug for Deliveries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deliveries").finish_non_exhaustive()
    }
}

impl Deliveries {
    pub fn new(store: Arc<dyn Store>) -> Deliveries {
        Deliveries { store, lease: Arc::default() }
    }

    /// Claims a delivery's key (made by [`key`]) before it is handled, so
    /// two deliveries with one key are never both handled. A claim still
    /// pending well past the handler's timeout (`timeout`) was left by a
    /// daemon that died handling it, and is taken over.
    pub async fn claim(&self, store_key: String, timeout: Duration) -> Result<Claim, Error> {
        let lease = self.lease().await?;
        let now = now_ms();
        let pending = encode(&Delivery { status: 0, at: now })?;
        let put = Op::Put { key: store_key.clone(), value: pending, lease: Some(lease) };
        let txn = Txn::new()
            .when(Compare::missing(&store_key))
            .and_then(put.clone())
            .or_else(Op::Get { key: store_key.clone() });
        let response = self.store.txn(txn).await?;
        let claimed = |revision, took_over| {
            Claim::New(Pending {
                deliveries: self.clone(),
                key: Some((store_key.clone(), revision)),
                took_over,
            })
        };
        if response.succeeded {
            return Ok(claimed(response.revision, false));
        }
        let Some(OpResponse::Get { kv: Some(kv) }) = response.responses.first() else {
            // Expired between the two: taken as new on the next delivery.
            return Ok(Claim::InFlight);
        };
        let existing: Delivery =
            serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt(store_key.clone(), e))?;
        if existing.status != 0 {
            return Ok(Claim::Done(existing.status));
        }
        let stale_after = timeout.as_millis() as u64 + STALE_MARGIN.as_millis() as u64;
        if now.saturating_sub(existing.at) < stale_after {
            return Ok(Claim::InFlight);
        }
        let takeover = Txn::new().when(Compare::mod_revision(&store_key, kv.mod_revision)).and_then(put);
        let taken = self.store.txn(takeover).await?;
        if taken.succeeded { Ok(claimed(taken.revision, true)) } else { Ok(Claim::InFlight) }
    }

    async fn lease(&self) -> Result<LeaseId, Error> {
        let mut current = self.lease.lock().await;
        if let Some((id, granted)) = *current
            && granted.elapsed() < DELIVERY_LEASE_REUSE
        {
            return Ok(id);
        }
        let lease = self.store.lease_grant(DELIVERY_TTL).await?;
        *current = Some((lease.id, Instant::now()));
        Ok(lease.id)
    }
}

/// A claimed delivery being handled. Settled with the handler's answer
/// (settle it from a task of its own, so a client that goes away does not
/// stop it); dropped unsettled, which only a panic or a runtime shutting
/// down does, it is forgotten if it is still this claim, so the sender's
/// retry is handled.
#[derive(Debug)]
pub struct Pending {
    deliveries: Deliveries,
    /// The store key, and the revision the claim was written at.
    key: Option<(String, u64)>,
    took_over: bool,
}

impl Pending {
    /// Whether this claim took over one left pending by a daemon that died.
    pub fn took_over(&self) -> bool {
        self.took_over
    }

    /// Records how the handler answered. A failure (5xx) forgets the key,
    /// so that the sender's retry is handled again.
    pub async fn settle(mut self, status: u16) {
        let Some((key, _)) = self.key.take() else { return };
        let deliveries = &self.deliveries;
        let result = if status >= 500 {
            deliveries.store.delete(&key).await.map(drop)
        } else {
            match (deliveries.lease().await, encode(&Delivery { status, at: now_ms() })) {
                (Ok(lease), Ok(value)) => deliveries.store.put(&key, value, Some(lease)).await.map(drop),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(error = %chain(&e), "Cannot record a webhook delivery.");
                    return;
                }
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "Cannot record a webhook delivery.");
        }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let Some((key, revision)) = self.key.take() else { return };
        let store = self.deliveries.store.clone();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let forget = Txn::new()
                    .when(Compare::mod_revision(&key, revision))
                    .and_then(Op::Delete { key: key.clone() });
                if let Err(e) = store.txn(forget).await {
                    tracing::warn!(error = %e, "Cannot forget an unfinished webhook delivery.");
                }
            });
        }
    }
}

fn encode(delivery: &Delivery) -> Result<Vec<u8>, Error> {
    serde_json::to_vec(delivery).map_err(Error::Encode)
}
