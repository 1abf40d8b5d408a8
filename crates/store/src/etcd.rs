//! The multi-host backend: the store on a real etcd cluster.
//!
//! etcd's model is the store's model, so most calls map one to one. What
//! needs a word:
//!
//! - **Namespace.** Every key lives under a prefix (default `/hearth/`), so a
//!   cloud can share etcd with other users; ranges, watches and responses
//!   carry keys with the prefix stripped. The prefix is never empty and
//!   always ends in `/` (one is added): `/hearth` would also take the keys
//!   of `/hearth2/`, and an empty one every key of the cluster. Leases are
//!   not keyed, so they are not namespaced: [`Store::leases`] lists every
//!   lease of the etcd cluster.
//! - **Revisions** are etcd's own (the response header's revision), shared
//!   by everything that writes to the cluster. A fresh etcd is at revision 1,
//!   not 0. A delete that matches nothing, like a transaction that writes
//!   nothing, leaves the revision alone, as in the embedded store.
//! - **Compaction** is etcd's business (run it with
//!   `--auto-compaction-retention`, or call [`EtcdStore::compact`]). etcd has
//!   no call that says how far it compacted, so [`Store::compacted_revision`]
//!   finds the oldest revision a read at a revision still succeeds at, by
//!   bisection between the last compaction seen and the current revision
//!   (one request when nothing moved), and remembers what watches and reads
//!   learn on the way.
//! - **Transactions.** hearth's comparisons take a missing key as an empty
//!   value; etcd fails every value comparison on a missing key. A value
//!   comparison that holds for a missing key (`value == ""`, `value < "x"`,
//!   `value != "x"`) is sent as a nested transaction that first asks whether
//!   the key exists, so the answer is the embedded store's, atomically.
//!   etcd refuses a transaction that writes one key twice (a put and a
//!   delete of the same key, or a put under a deleted prefix); that comes
//!   back as [`Error::Refused`] saying so, where the embedded store would
//!   apply both in order.
//! - **Watches** survive a broken connection, a restarted member and a
//!   leader change: the stream opens the watch again from the revision after
//!   the last one it handed out, for up to [`Options::reconnect_for`], so the
//!   caller sees every change once, in order. (etcd sends all events of one
//!   revision in one response, so no revision is ever half handed out.)
//! - **Leases.** etcd's TTLs are whole seconds: a TTL is rounded up to the
//!   next second (and etcd itself raises it to its minimum, 1.5 × the
//!   election timeout rounded up: 2 s with etcd's defaults). Keep-alives are
//!   one request each, on whatever connection is up, so a lease kept alive
//!   by its owner stays alive across reconnects and leader changes.
//!   [`Store::leases`] reports the time left in whole seconds, rounded down,
//!   as etcd does.
//! - **Unanswered requests.** A write is tried again, until
//!   [`Options::request_timeout`], only when it provably reached no member:
//!   the connection to the member picked could not be made (tonic's
//!   `ConnectError` in the error's chain: the client balances over every
//!   endpoint, so the next try may find another), or the member refused it
//!   before handling it because it has no leader (exactly
//!   `etcdserver: no leader`, the require-leader check). Any other failure
//!   of a write is handed to the caller, who cannot know whether it was
//!   applied, as with any network store: etcd's "request timed out,
//!   possibly due to connection lost" is unavailable too, yet the write may
//!   still commit, and sending it again could apply it twice. Reads, and
//!   lease renewals (a second renewal changes nothing the first did not),
//!   are tried again on any unavailable answer.
//! - **Authentication.** With a user and password, the client asks for a
//!   new token when etcd says the one it has expired (etcd's
//!   `--auth-token-ttl`, 5 minutes by default), and sends the request again:
//!   a refused token is refused before the request is handled.

mod options;
mod txn;
mod watch;

pub use options::{DEFAULT_NAMESPACE, EmptyNamespace, InvalidUrl, Options, Tls, namespace};

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, DeleteOptions, GetOptions, KvClient, PutOptions};

use crate::{
    Error, EventKind, KeyValue, Lease, LeaseId, Range, Revision, Store, Txn, TxnResponse, WatchStream,
    validate,
};

/// The store on etcd: a cheap-to-clone handle to one client connection
/// (balanced over the endpoints).
#[derive(Clone)]
pub struct EtcdStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    namespace: String,
    /// The endpoints as given, for error messages.
    endpoints: String,
    /// The highest compaction revision seen so far.
    compacted: AtomicU64,
    request_timeout: Duration,
    reconnect_for: Duration,
}

impl std::fmt::Debug for EtcdStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStore")
            .field("endpoints", &self.inner.endpoints)
            .field("namespace", &self.inner.namespace)
            .finish_non_exhaustive()
    }
}

/// etcd's responses carry revisions as `i64`; they are never negative.
fn rev(revision: i64) -> Revision {
    revision.max(0) as Revision
}

fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> Revision {
    header.map_or(0, |h| rev(h.revision()))
}

/// How long a request that reached no member waits before it tries again.
const RETRY: Duration = Duration::from_millis(20);

/// A KV client on `client` that takes large answers: ranges of many large
/// values exceed gRPC's default 4 MiB.
fn kv(client: &Client) -> KvClient {
    client.kv_client().max_decoding_message_size(usize::MAX)
}

/// What a request does, which says when it may be sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A read, or a write that changes nothing more when applied twice (a
    /// lease renewal): sent again after any unavailable answer.
    Read,
    /// A write: sent again only when it provably reached no member.
    Write,
}

/// What a member answers, before handling a request, when it has no leader
/// and the request requires one (etcd's `ErrGRPCNoLeader`).
const NO_LEADER: &str = "etcdserver: no leader";

/// Whether a request that failed with `error` was handled by no member:
/// the connection to the member could not be made (tonic's
/// `ConnectError`, found in the error's chain: refused, unreachable, a
/// failed TLS handshake), or the member has no leader and said so before
/// handling it. Never a guess from words in a message: etcd's "request
/// timed out, possibly due to connection lost" is unavailable too, and the
/// write may still commit.
fn never_handled(error: &etcd_client::Error) -> bool {
    match error {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                && (status.message() == NO_LEADER || connect_failed(status))
        }
        etcd_client::Error::TransportError(e) => connect_failed(e),
        _ => false,
    }
}

/// Whether `error`, or any error in its chain, is tonic's failure to
/// connect.
fn connect_failed(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<tonic::ConnectError>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// Whether a request of `kind` that failed with `error` may be sent again.
fn retryable(error: &etcd_client::Error, kind: Kind) -> bool {
    never_handled(error)
        || (kind == Kind::Read
            && matches!(error, etcd_client::Error::GRpcStatus(status) if status.code() == tonic::Code::Unavailable))
}

/// An unavailable answer made up for a stream that ended without one.
fn closed(what: &str) -> etcd_client::Error {
    etcd_client::Error::GRpcStatus(tonic::Status::unavailable(format!(
        "etcd closed {what} without an answer"
    )))
}

/// What an etcd error means, for the calls that care.
fn says(error: &etcd_client::Error, what: &str) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status) if status.message().contains(what))
}

fn lease_not_found(error: &etcd_client::Error) -> bool {
    says(error, "requested lease not found")
        || matches!(error, etcd_client::Error::LeaseKeepAliveError(m) if m.contains("not found"))
}

fn compacted(error: &etcd_client::Error) -> bool {
    says(error, "required revision has been compacted")
}

impl EtcdStore {
    /// Connects to etcd and checks that it answers.
    pub async fn connect(options: Options) -> Result<EtcdStore, Error> {
        let endpoints_text = options.endpoints.join(",");
        let unavailable = |source: Box<dyn std::error::Error + Send + Sync>| Error::Unavailable {
            endpoints: endpoints_text.clone(),
            source,
        };
        if options.endpoints.is_empty() {
            return Err(unavailable("no endpoint was given".into()));
        }
        let namespace = namespace(&options.namespace).map_err(|_| Error::InvalidKey {
            key: options.namespace.clone(),
            reason: "an empty etcd namespace would take every key of the etcd cluster; give a prefix such as /hearth/",
        })?;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = options
            .endpoints
            .iter()
            .map(|e| if e.contains("://") { e.clone() } else { format!("{scheme}://{e}") })
            .collect();
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(options.connect_timeout)
            // Notice a member that stopped answering without closing the
            // connection (a partition), not only one that died.
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(3))
            .with_keep_alive_while_idle(true)
            // A member cut off from its leader refuses, rather than serving
            // stale reads or holding watches that see nothing.
            .with_require_leader(true);
        if let Some(tls) = &options.tls {
            let mut config = etcd_client::TlsOptions::new();
            if let Some(ca) = &tls.ca {
                config = config.ca_certificate(etcd_client::Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &tls.identity {
                config = config.identity(etcd_client::Identity::from_pem(cert, key));
            }
            connect = connect.with_tls(config);
        }
        if let Some((user, password)) = &options.user {
            // etcd's tokens expire (`--auth-token-ttl`, 5 minutes by
            // default): without this every request fails from then on.
            connect = connect.with_user(user.clone(), password.clone()).with_auto_token_refresh(true);
        }
        let client =
            tokio::time::timeout(options.connect_timeout, Client::connect(&endpoints, Some(connect)))
                .await
                .map_err(|_| unavailable(format!("no answer within {:?}", options.connect_timeout).into()))?
                .map_err(|e| match &e {
                    etcd_client::Error::GRpcStatus(status)
                        if matches!(
                            status.code(),
                            tonic::Code::Unauthenticated
                                | tonic::Code::PermissionDenied
                                | tonic::Code::InvalidArgument
                                | tonic::Code::FailedPrecondition
                        ) =>
                    {
                        Error::Denied {
                            reason: format!("{}; check the etcd user name and password", status.message()),
                        }
                    }
                    _ => unavailable(Box::new(e)),
                })?;
        let store = EtcdStore {
            inner: Arc::new(Inner {
                client,
                namespace,
                endpoints: endpoints_text.clone(),
                compacted: AtomicU64::new(0),
                request_timeout: options.request_timeout,
                reconnect_for: options.reconnect_for,
            }),
        };
        // The client connects lazily: make sure someone answers now, so a
        // wrong address fails here and not at the first write.
        let revision = tokio::time::timeout(options.connect_timeout, store.revision())
            .await
            .map_err(|_| unavailable(format!("no answer within {:?}", options.connect_timeout).into()))??;
        tracing::debug!(endpoints = store.inner.endpoints, revision, "Connected to etcd.");
        Ok(store)
    }

    /// The endpoints, as given.
    pub fn endpoints(&self) -> &str {
        &self.inner.endpoints
    }

    /// The namespace keys live under.
    pub fn namespace(&self) -> &str {
        &self.inner.namespace
    }

    /// Compacts etcd's history up to `revision`: watches can no longer start
    /// before it. This compacts the whole cluster, every namespace.
    pub async fn compact(&self, revision: Revision) -> Result<(), Error> {
        let options = etcd_client::CompactionOptions::new().with_physical();
        self.call(Kind::Write, |c| {
            let options = options.clone();
            async move { kv(&c).compact(revision as i64, Some(options)).await }
        })
        .await?;
        self.note_compacted(revision);
        Ok(())
    }

    fn key(&self, key: &str) -> Vec<u8> {
        let mut full = Vec::with_capacity(self.inner.namespace.len() + key.len());
        full.extend_from_slice(self.inner.namespace.as_bytes());
        full.extend_from_slice(key.as_bytes());
        full
    }

    /// A key as etcd reports it, with the namespace stripped.
    fn kv_from(&self, kv: &etcd_client::KeyValue) -> Result<KeyValue, Error> {
        Ok(KeyValue {
            key: self.strip(kv.key())?,
            value: kv.value().to_vec(),
            create_revision: rev(kv.create_revision()),
            mod_revision: rev(kv.mod_revision()),
            version: rev(kv.version()),
            lease: (kv.lease() != 0).then_some(kv.lease() as LeaseId),
        })
    }

    fn strip(&self, key: &[u8]) -> Result<String, Error> {
        let key = key.strip_prefix(self.inner.namespace.as_bytes()).ok_or_else(|| {
            Error::Corrupt(
                format!("etcd returned key {:?} outside the namespace", String::from_utf8_lossy(key)).into(),
            )
        })?;
        String::from_utf8(key.to_vec()).map_err(|e| Error::Corrupt(Box::new(e)))
    }

    fn note_compacted(&self, revision: Revision) {
        self.inner.compacted.fetch_max(revision, Ordering::Relaxed);
    }

    /// Runs one request with the request timeout, sending it again, on
    /// whichever member answers, while it fails in a way [`retryable`]
    /// allows for its `kind`: a write only when no member handled it, so
    /// that it is never applied twice. The outer error is the timeout; the
    /// inner one is etcd's answer, for callers that look.
    async fn attempt<T, F, Fut>(
        &self,
        kind: Kind,
        mut request: F,
    ) -> Result<Result<T, etcd_client::Error>, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.inner.request_timeout;
        loop {
            match tokio::time::timeout_at(deadline, request(self.inner.client.clone())).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Err(e)) if retryable(&e, kind) && tokio::time::Instant::now() + RETRY < deadline => {
                    tracing::debug!(error = %e, ?kind, "An etcd request was not answered; trying again.");
                    tokio::time::sleep(RETRY).await;
                }
                Ok(result) => return Ok(result),
            }
        }
    }

    /// [`EtcdStore::attempt`], with etcd's errors mapped to the store's.
    async fn call<T, F, Fut>(&self, kind: Kind, request: F) -> Result<T, Error>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        self.attempt(kind, request).await?.map_err(|e| self.error(e))
    }

    fn timed_out(&self) -> Error {
        Error::Unavailable {
            endpoints: self.inner.endpoints.clone(),
            source: format!("no answer within {:?}", self.inner.request_timeout).into(),
        }
    }

    /// An etcd error as the store's.
    fn error(&self, error: etcd_client::Error) -> Error {
        let refused = |reason: &str| Error::Refused { reason: reason.to_owned() };
        if says(&error, "duplicate key given in txn request") {
            return refused(
                "a transaction writes one key twice (or puts a key under a prefix it deletes), which etcd does not allow; write each key once per transaction",
            );
        }
        if says(&error, "request is too large") {
            return refused(
                "the request is larger than etcd accepts; run etcd with --max-request-bytes=2097152 or more (hearth accepts values up to 1.5 MiB)",
            );
        }
        if says(&error, "too many operations in txn request") {
            return refused("the transaction has more operations than etcd's --max-txn-ops allows; raise it");
        }
        if says(&error, "user name is empty") {
            return Error::Denied {
                reason:
                    "etcd has authentication on, and no etcd user was given; give a user and its password"
                        .to_owned(),
            };
        }
        match &error {
            etcd_client::Error::GRpcStatus(status) => match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                    self.unavailable(error)
                }
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => Error::Denied {
                    reason: format!("{}; check the etcd user name, password and role", status.message()),
                },
                _ => Error::Backend(Box::new(error)),
            },
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => self.unavailable(error),
            _ => Error::Backend(Box::new(error)),
        }
    }

    fn unavailable(&self, error: etcd_client::Error) -> Error {
        Error::Unavailable { endpoints: self.inner.endpoints.clone(), source: Box::new(error) }
    }

    /// Whether a read at `revision` still works (false: compacted away).
    async fn readable(&self, revision: Revision) -> Result<bool, Error> {
        let key = self.key("");
        let options = GetOptions::new().with_count_only().with_revision(revision as i64);
        match self
            .attempt(Kind::Read, |c| {
                let (key, options) = (key.clone(), options.clone());
                async move { kv(&c).get(key, Some(options)).await }
            })
            .await?
        {
            Ok(_) => Ok(true),
            Err(e) if compacted(&e) => Ok(false),
            Err(e) => Err(self.error(e)),
        }
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, Error> {
        validate::key(key)?;
        let key = self.key(key);
        let response = self
            .call(Kind::Read, |c| {
                let key = key.clone();
                async move { kv(&c).get(key, None).await }
            })
            .await?;
        response.kvs().first().map(|kv| self.kv_from(kv)).transpose()
    }

    async fn range(&self, prefix: &str) -> Result<Range, Error> {
        validate::prefix(prefix)?;
        let key = self.key(prefix);
        let response = self
            .call(Kind::Read, |c| {
                let key = key.clone();
                async move { kv(&c).get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let kvs = response.kvs().iter().map(|kv| self.kv_from(kv)).collect::<Result<_, _>>()?;
        Ok(Range { kvs, revision: header_revision(response.header()) })
    }

    async fn put(&self, key: &str, value: Vec<u8>, lease: Option<LeaseId>) -> Result<Revision, Error> {
        validate::key(key)?;
        validate::value(key, &value)?;
        let options = lease.map(|id| PutOptions::new().with_lease(id as i64));
        let key = self.key(key);
        match self
            .attempt(Kind::Write, |c| {
                let (key, value, options) = (key.clone(), value.clone(), options.clone());
                async move { kv(&c).put(key, value, options).await }
            })
            .await?
        {
            Ok(response) => Ok(header_revision(response.header())),
            Err(e) if lease_not_found(&e) => Err(Error::LeaseNotFound(lease.unwrap_or(0))),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(Revision, bool), Error> {
        validate::key(key)?;
        let key = self.key(key);
        let response = self
            .call(Kind::Write, |c| {
                let key = key.clone();
                async move { kv(&c).delete(key, Some(DeleteOptions::new())).await }
            })
            .await?;
        Ok((header_revision(response.header()), response.deleted() > 0))
    }

    async fn txn(&self, txn: Txn) -> Result<TxnResponse, Error> {
        validate::txn(&txn)?;
        txn::run(self, txn).await
    }

    async fn revision(&self) -> Result<Revision, Error> {
        let key = self.key("");
        let response = self
            .call(Kind::Read, |c| {
                let key = key.clone();
                async move { kv(&c).get(key, Some(GetOptions::new().with_count_only())).await }
            })
            .await?;
        Ok(header_revision(response.header()))
    }

    async fn compacted_revision(&self) -> Result<Revision, Error> {
        let current = self.revision().await?;
        let mut low = self.inner.compacted.load(Ordering::Relaxed).max(1);
        if low >= current || self.readable(low).await? {
            return Ok(low.min(current.max(1)));
        }
        // `low` is compacted away and `current` never is: find the first
        // readable revision in between.
        let mut high = current;
        while high - low > 1 {
            let mid = low + (high - low) / 2;
            if self.readable(mid).await? {
                high = mid;
            } else {
                low = mid;
            }
        }
        self.note_compacted(high);
        Ok(high)
    }

    async fn watch(&self, prefix: &str, from: Revision) -> Result<WatchStream, Error> {
        validate::prefix(prefix)?;
        let current = self.revision().await?;
        let from = if from == 0 { current + 1 } else { from };
        if from > current + 1 {
            return Err(Error::FutureRevision { requested: from, current });
        }
        if from <= current && !self.readable(from).await? {
            return Err(Error::Compacted { requested: from, oldest: self.compacted_revision().await? });
        }
        Ok(watch::stream(self.clone(), self.key(prefix), from))
    }

    async fn lease_grant(&self, ttl: Duration) -> Result<Lease, Error> {
        validate::ttl(ttl)?;
        // Whole seconds, rounded up: a lease lives at least as long as asked.
        let seconds = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
        let response = self
            .call(Kind::Write, |c| async move { c.lease_client().grant(seconds as i64, None).await })
            .await?;
        let ttl = Duration::from_secs(rev(response.ttl()));
        Ok(Lease { id: response.id() as LeaseId, ttl, remaining: ttl })
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<Lease, Error> {
        let renew = |c: Client| async move {
            // Opening the stream renews once and fails for a lease that is
            // gone; one more renewal tells the TTL. A stream that ends
            // without an answer says nothing of the lease: unavailable.
            let (mut keeper, mut responses) =
                c.lease_client().keep_alive(id as i64).await.map_err(|e| match e {
                    etcd_client::Error::WatchError(_) => closed("the keep-alive stream"),
                    e => e,
                })?;
            keeper.keep_alive().await.map_err(|_| closed("the keep-alive stream"))?;
            responses.message().await?.ok_or_else(|| closed("the keep-alive stream"))
        };
        // Renewing twice is renewing once: sent again like a read.
        match self.attempt(Kind::Read, renew).await? {
            Ok(response) if response.ttl() > 0 => {
                let ttl = Duration::from_secs(rev(response.ttl()));
                Ok(Lease { id, ttl, remaining: ttl })
            }
            Ok(_) => Err(Error::LeaseNotFound(id)),
            Err(e) if lease_not_found(&e) => Err(Error::LeaseNotFound(id)),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<Revision, Error> {
        match self.attempt(Kind::Write, |c| async move { c.lease_client().revoke(id as i64).await }).await? {
            Ok(response) => Ok(header_revision(response.header())),
            Err(e) if lease_not_found(&e) => Err(Error::LeaseNotFound(id)),
            Err(e) => Err(self.error(e)),
        }
    }

    async fn leases(&self) -> Result<Vec<Lease>, Error> {
        let listed = self.call(Kind::Read, |c| async move { c.lease_client().leases().await }).await?;
        let mut leases = Vec::new();
        for status in listed.leases() {
            let id = status.id();
            match self
                .attempt(Kind::Read, |c| async move { c.lease_client().time_to_live(id, None).await })
                .await
            {
                // etcd truncates the time left to whole seconds: 0 is a
                // lease with less than a second to go, -1 one that is gone.
                Ok(Ok(response)) if response.ttl() >= 0 => leases.push(Lease {
                    id: id as LeaseId,
                    ttl: Duration::from_secs(rev(response.granted_ttl())),
                    remaining: Duration::from_secs(rev(response.ttl())),
                }),
                // Expired between the listing and now.
                Ok(Ok(_)) => {}
                Ok(Err(e)) if lease_not_found(&e) => {}
                Ok(Err(e)) => return Err(self.error(e)),
                Err(timed_out) => return Err(timed_out),
            }
        }
        leases.sort_by_key(|lease| lease.id);
        Ok(leases)
    }
}

/// An etcd event as the store's.
fn event_from(store: &EtcdStore, event: &etcd_client::Event) -> Result<crate::Event, Error> {
    let kv = event.kv().ok_or_else(|| Error::Corrupt("etcd sent an event without its key".into()))?;
    let kind = match event.event_type() {
        etcd_client::EventType::Put => EventKind::Put,
        etcd_client::EventType::Delete => EventKind::Delete,
    };
    let mut kv = store.kv_from(kv)?;
    if kind == EventKind::Delete {
        // As the embedded store reports a deletion.
        kv.create_revision = 0;
        kv.version = 0;
        kv.value.clear();
        kv.lease = None;
    }
    Ok(crate::Event { kind, kv })
}

#[cfg(test)]
mod tests {
    use super::{Kind, closed, retryable};
    use etcd_client::Error;
    use tonic::{Code, Status};

    fn status(code: Code, message: &str) -> Error {
        Error::GRpcStatus(Status::new(code, message))
    }

    /// An error that wraps another, as the balancer and the buffer wrap
    /// the connector's.
    #[derive(Debug)]
    struct Wrapped(Box<dyn std::error::Error + Send + Sync>);

    impl std::fmt::Display for Wrapped {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "service error")
        }
    }

    impl std::error::Error for Wrapped {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&*self.0)
        }
    }

    /// A status as tonic makes it from a failed connection: unavailable,
    /// with the connect error in its chain, `depth` wrappers down.
    fn connect_failed(depth: usize) -> Error {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let mut error: Box<dyn std::error::Error + Send + Sync> =
            Box::new(tonic::ConnectError(Box::new(refused)));
        for _ in 0..depth {
            error = Box::new(Wrapped(error));
        }
        let status = Status::from_error(error);
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        Error::GRpcStatus(status)
    }

    /// (read, write): whether each kind of request is sent again.
    fn retried(error: &Error) -> (bool, bool) {
        (retryable(error, Kind::Read), retryable(error, Kind::Write))
    }

    #[test]
    fn a_write_is_sent_again_only_when_no_member_handled_it() {
        // Never handled: sent again, read or write.
        assert_eq!(retried(&connect_failed(0)), (true, true));
        assert_eq!(retried(&connect_failed(3)), (true, true));
        assert_eq!(retried(&status(Code::Unavailable, "etcdserver: no leader")), (true, true));

        // Unavailable, but perhaps applied: reads only.
        for message in [
            "etcdserver: request timed out, possibly due to connection lost",
            "etcdserver: request timed out",
            "etcdserver: leader changed",
            // Words are not proof: no connect error in the chain.
            "tcp connect error: Connection refused (os error 111)",
            "etcdserver: no leader; connect again",
            "error trying to connect",
        ] {
            assert_eq!(retried(&status(Code::Unavailable, message)), (true, false), "{message}");
        }
        assert_eq!(retried(&closed("the keep-alive stream")), (true, false));

        // Anything else: neither.
        for (code, message) in [
            (Code::DeadlineExceeded, "context deadline exceeded"),
            (Code::Cancelled, "operation was canceled"),
            (Code::Unknown, "connection closed before message completed"),
            (Code::PermissionDenied, "etcdserver: permission denied"),
            (Code::InvalidArgument, "etcdserver: no leader"),
            (Code::NotFound, "etcdserver: requested lease not found"),
        ] {
            assert_eq!(retried(&status(code, message)), (false, false), "{code:?} {message}");
        }
        assert_eq!(retried(&Error::LeaseKeepAliveError("lease not found".into())), (false, false));
        let bad_uri = tonic::transport::Endpoint::from_shared(vec![0xff_u8]).expect_err("not UTF-8");
        assert_eq!(retried(&Error::TransportError(bad_uri)), (false, false));
    }

    #[test]
    fn a_namespace_is_a_prefix_of_its_own() {
        assert_eq!(super::namespace("/hearth/").unwrap(), "/hearth/");
        assert_eq!(super::namespace("/hearth").unwrap(), "/hearth/");
        assert_eq!(super::namespace("a").unwrap(), "a/");
        assert_eq!(super::namespace("/").unwrap(), "/");
        assert!(super::namespace("").is_err());
    }
}
