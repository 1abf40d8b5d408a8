//! Dashboard sessions: one-time sign-in codes, sessions kept in the store
//! by the hash of their secret, and the checks a cookie-authenticated
//! request passes (cookie, CSRF token, `Origin`).
//!
//! The policy:
//! - A sign-in code is 256 random bits, valid for [`CODE_TTL`] and good
//!   once: redeeming it removes it, used or not. Codes live in the
//!   daemon's memory (a restart forgets them, which costs a new
//!   `hearth ui`), at most [`MAX_CODES`] at a time.
//! - A session's secret is 256 random bits, sent to the browser once, in
//!   an HttpOnly, SameSite=Strict cookie. The store keeps only its
//!   SHA-256, under `ui/sessions/ID`, where ID is the first 16 hex digits
//!   of that hash, so a session survives a restart, can be listed and
//!   revoked, and reading the store gives no one a way in.
//! - A session lasts [`SESSION_TTL`]; an expired one is refused, and
//!   deleted when next seen.
//! - The CSRF token is derived from the secret (a hash under a label of its
//!   own), so it is stored nowhere and only a holder of the cookie can
//!   know it.
//! - A response that outlives its request (an event stream) ends when its
//!   session is revoked or expires ([`Sessions::ended`]), so revoking
//!   cuts a browser off at once, not at its next request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hearth_store::{Change, Follower, Store};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// How long a sign-in code is good for.
pub const CODE_TTL: Duration = Duration::from_secs(60);
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 60 * 60);
/// Codes outstanding at once; issuing one more forgets the oldest.
pub const MAX_CODES: usize = 64;
/// The cookie that carries a session's secret.
pub const COOKIE: &str = "hearth_session";
/// Where sessions are kept in the store.
pub const PREFIX: &str = "ui/sessions/";

/// Why a code or a session was refused.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This sign-in link was already used, has expired, or was never issued.
    #[error("this sign-in link was already used or has expired")]
    CodeRefused,
    /// The request carries no session cookie, or one that is not a session's.
    #[error("the request carries no dashboard session")]
    NoSession,
    /// The session was revoked, or is not this daemon's.
    #[error("the dashboard session was revoked or is unknown to this daemon")]
    Unknown,
    /// The session is older than [`SESSION_TTL`].
    #[error("the dashboard session has expired")]
    Expired,
    /// No session has this id.
    #[error("there is no dashboard session {0}")]
    NotFound(String),
    /// A session record in the store could not be read.
    #[error("the session record {key} is not valid JSON")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The store failed.
    #[error("the state store failed")]
    Store(#[from] hearth_store::Error),
}

/// A session as the store keeps it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    /// SHA-256 of the secret, in hex.
    hash: String,
    created_at_ms: u64,
    expires_at_ms: u64,
}

/// A session that a request was made with, or that is listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The public id: the first 16 hex digits of the secret's hash.
    pub id: String,
    pub created_at_ms: u64,
    pub expires_at_ms: u64,
    /// The revision its record was last written at.
    pub revision: u64,
}

/// A session just made from a code: its secret goes into the cookie.
#[derive(Debug)]
pub struct Issued {
    pub secret: String,
    pub session: Session,
}

/// The dashboard's codes and sessions. Cheap to clone.
#[derive(Clone)]
pub struct Sessions {
    store: Arc<dyn Store>,
    codes: Arc<Mutex<Codes>>,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions").finish_non_exhaustive()
    }
}

impl Sessions {
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, codes: Arc::new(Mutex::new(Codes::default())) }
    }

    /// A new sign-in code, good once within [`CODE_TTL`].
    pub fn issue_code(&self) -> String {
        self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).issue(Instant::now())
    }

    /// Redeems a code for a new session, written to the store.
    pub async fn redeem(&self, code: &str) -> Result<Issued, Error> {
        self.codes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).redeem(code, Instant::now())?;
        let secret = random_hex();
        let now = now_ms();
        let hash = hash_hex(&secret);
        let record =
            Record { hash: hash.clone(), created_at_ms: now, expires_at_ms: now + millis(SESSION_TTL) };
        let id = id_of(&hash).to_owned();
        let value = serde_json::to_vec(&record).map_err(|source| Error::Corrupt { key: key(&id), source })?;
        let revision = self.store.put(&key(&id), value, None).await?;
        Ok(Issued { secret, session: record.session(id, revision) })
    }

    /// The session whose secret a cookie carries, if it is valid now.
    pub async fn authenticate(&self, secret: &str) -> Result<Session, Error> {
        self.authenticate_at(secret, now_ms()).await
    }

    async fn authenticate_at(&self, secret: &str, now: u64) -> Result<Session, Error> {
        if !is_secret(secret) {
            return Err(Error::NoSession);
        }
        let hash = hash_hex(secret);
        let id = id_of(&hash);
        let Some(kv) = self.store.get(&key(id)).await? else { return Err(Error::Unknown) };
        let record = parse(&kv.key, &kv.value)?;
        if !same(record.hash.as_bytes(), hash.as_bytes()) {
            return Err(Error::Unknown);
        }
        if record.expires_at_ms <= now {
            // Gone for good: forget it now rather than list it.
            self.store.delete(&kv.key).await?;
            return Err(Error::Expired);
        }
        Ok(record.session(id.to_owned(), kv.mod_revision))
    }

    /// Every session that has not expired, oldest first.
    pub async fn list(&self) -> Result<Vec<Session>, Error> {
        let now = now_ms();
        let range = self.store.range(PREFIX).await?;
        let mut sessions = Vec::new();
        for kv in range.kvs {
            let record = parse(&kv.key, &kv.value)?;
            if record.expires_at_ms > now {
                sessions.push(record.session(kv.key[PREFIX.len()..].to_owned(), kv.mod_revision));
            }
        }
        sessions.sort_by_key(|s| s.created_at_ms);
        Ok(sessions)
    }

    /// Revokes one session by id.
    pub async fn revoke(&self, id: &str) -> Result<(), Error> {
        if !is_id(id) {
            return Err(Error::NotFound(id.to_owned()));
        }
        match self.store.delete(&key(id)).await? {
            (_, true) => Ok(()),
            (_, false) => Err(Error::NotFound(id.to_owned())),
        }
    }

    /// Revokes every session (expired ones too), in one transaction;
    /// returns how many had not expired.
    pub async fn revoke_all(&self) -> Result<usize, Error> {
        use hearth_store::{Op, OpResponse, Txn};
        let txn = Txn::new()
            .and_then(Op::Range { prefix: PREFIX.to_owned() })
            .and_then(Op::DeletePrefix { prefix: PREFIX.to_owned() });
        let response = self.store.txn(txn).await?;
        let now = now_ms();
        let mut live = 0;
        if let Some(OpResponse::Range { kvs }) = response.responses.first() {
            for kv in kvs {
                // A record that cannot be read is gone all the same.
                if parse(&kv.key, &kv.value).is_ok_and(|r| r.expires_at_ms > now) {
                    live += 1;
                }
            }
        }
        Ok(live)
    }
}

impl Sessions {
    /// Resolves when `session` ends: its record is deleted (revoked, by
    /// this daemon or any other on the same store) or it expires.
    pub fn ended(&self, session: &Session) -> impl Future<Output = ()> + Send + 'static {
        // Ids have one length, so the key is a prefix of no other key.
        let mut follower =
            Follower::new(self.store.clone(), key(&session.id), session.revision + 1, "A dashboard session");
        let expiry =
            tokio::time::sleep(Duration::from_millis(session.expires_at_ms.saturating_sub(now_ms())));
        async move {
            let revoked = async {
                loop {
                    match follower.next().await {
                        Change::Event(event) if event.kind == hearth_store::EventKind::Delete => return,
                        Change::Reset(range) if range.kvs.is_empty() => return,
                        Change::Event(_) | Change::Reset(_) => {}
                    }
                }
            };
            tokio::select! {
                () = revoked => {}
                () = expiry => {}
            }
        }
    }
}

impl Record {
    fn session(&self, id: String, revision: u64) -> Session {
        Session { id, created_at_ms: self.created_at_ms, expires_at_ms: self.expires_at_ms, revision }
    }
}

fn parse(key: &str, value: &[u8]) -> Result<Record, Error> {
    serde_json::from_slice(value).map_err(|source| Error::Corrupt { key: key.to_owned(), source })
}

fn key(id: &str) -> String {
    format!("{PREFIX}{id}")
}

fn id_of(hash: &str) -> &str {
    &hash[..16]
}

/// Sign-in codes outstanding, by the hash of the code.
#[derive(Debug, Default)]
struct Codes {
    issued: HashMap<String, Instant>,
}

impl Codes {
    fn issue(&mut self, now: Instant) -> String {
        self.issued.retain(|_, expires| *expires > now);
        if self.issued.len() >= MAX_CODES
            && let Some(oldest) = self.issued.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone())
        {
            self.issued.remove(&oldest);
        }
        let code = random_hex();
        self.issued.insert(hash_hex(&code), now + CODE_TTL);
        code
    }

    /// Takes the code out, whatever happens next: a code is good once.
    fn redeem(&mut self, code: &str, now: Instant) -> Result<(), Error> {
        if !is_secret(code) {
            return Err(Error::CodeRefused);
        }
        match self.issued.remove(&hash_hex(code)) {
            Some(expires) if expires > now => Ok(()),
            _ => Err(Error::CodeRefused),
        }
    }
}

/// The CSRF token of the session whose secret this is.
pub fn csrf_token(secret: &str) -> String {
    hash_hex(&format!("hearth-ui-csrf:{secret}"))
}

/// Whether a presented CSRF token is the session's, in constant time.
pub fn csrf_matches(secret: &str, presented: Option<&str>) -> bool {
    presented.is_some_and(|p| same(csrf_token(secret).as_bytes(), p.trim().as_bytes()))
}

/// The session secret in `Cookie` header values, if any: the first
/// `hearth_session` pair among them.
pub fn session_cookie<'a>(headers: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    headers
        .into_iter()
        .flat_map(|header| header.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().trim_matches('"'))
}

/// The `Set-Cookie` value that carries a new session.
pub fn set_cookie(secret: &str) -> String {
    format!("{COOKIE}={secret}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs())
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The origins (`http://HOST:PORT`) a dashboard on `addr` is reached
/// at: the address itself, and `localhost` with its port.
pub fn origins(addr: std::net::SocketAddr) -> Vec<String> {
    let mut origins = vec![format!("http://{addr}")];
    if addr.ip().is_loopback() {
        origins.push(format!("http://localhost:{}", addr.port()));
    }
    origins
}

/// Whether an `Origin` header is absent or one of `allowed`. `null` and
/// every other origin are refused.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(origin) => allowed.iter().any(|a| a.eq_ignore_ascii_case(origin.trim())),
    }
}

/// Whether a `Host` header names the dashboard's listener (so a page on
/// another name that resolves to loopback, a DNS rebinding, is refused).
pub fn host_allowed(host: Option<&str>, allowed: &[String]) -> bool {
    host.is_some_and(|host| {
        allowed.iter().any(|a| a.strip_prefix("http://").is_some_and(|a| a.eq_ignore_ascii_case(host.trim())))
    })
}

/// 256 random bits, in hex.
fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

fn hash_hex(text: &str) -> String {
    hex(&Sha256::digest(text.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// A secret or a code: 64 lowercase hex digits.
fn is_secret(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A session id: 16 lowercase hex digits.
fn is_id(text: &str) -> bool {
    text.len() == 16 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Compares in time independent of where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(millis).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("a temp dir");
        let store = hearth_store::redb::RedbStore::open(&dir.path().join("store.redb"), Default::default())
            .expect("open a store");
        (dir, Arc::new(store))
    }

    #[test]
    fn a_code_is_good_once() {
        let mut codes = Codes::default();
        let now = Instant::now();
        let code = codes.issue(now);
        assert!(codes.redeem(&code, now).is_ok());
        assert!(matches!(codes.redeem(&code, now), Err(Error::CodeRefused)));
    }

    #[test]
    fn a_code_expires_after_its_ttl_and_is_gone_after_a_late_try() {
        let mut codes = Codes::default();
        let now = Instant::now();
        let code = codes.issue(now);
        let late = now + CODE_TTL + Duration::from_millis(1);
        assert!(matches!(codes.redeem(&code, late), Err(Error::CodeRefused)));
        assert!(
            matches!(codes.redeem(&code, now), Err(Error::CodeRefused)),
            "refused once, refused for good"
        );
    }

    #[test]
    fn codes_never_issued_or_malformed_are_refused() {
        let mut codes = Codes::default();
        let now = Instant::now();
        codes.issue(now);
        for bad in ["", "abc", &"0".repeat(64), &"Z".repeat(64), &"a".repeat(65)] {
            assert!(matches!(codes.redeem(bad, now), Err(Error::CodeRefused)), "{bad:?}");
        }
    }

    #[test]
    fn issuing_past_the_cap_forgets_the_oldest_code() {
        let mut codes = Codes::default();
        let start = Instant::now();
        let first = codes.issue(start);
        for i in 1..=MAX_CODES {
            codes.issue(start + Duration::from_millis(i as u64));
        }
        assert_eq!(codes.issued.len(), MAX_CODES);
        assert!(codes.redeem(&first, start).is_err());
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let secret = "a".repeat(64);
        let header = format!("theme=dark; {COOKIE}={secret}; other=1");
        assert_eq!(session_cookie([header.as_str()]), Some(secret.as_str()));
        assert_eq!(session_cookie(["theme=dark", &format!("{COOKIE}=\"{secret}\"")]), Some(secret.as_str()));
        assert_eq!(session_cookie(["theme=dark; xhearth_session=1"]), None);
        assert_eq!(session_cookie(["garbage;;=;"]), None);
        assert_eq!(session_cookie(std::iter::empty()), None);
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_site_wide() {
        let cookie = set_cookie("s");
        for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
            assert!(cookie.contains(part), "{cookie} lacks {part}");
        }
        assert!(clear_cookie().contains("Max-Age=0"));
    }

    #[test]
    fn the_csrf_token_is_the_sessions_and_no_other() {
        let (a, b) = (random_hex(), random_hex());
        assert!(csrf_matches(&a, Some(&csrf_token(&a))));
        assert!(!csrf_matches(&a, Some(&csrf_token(&b))));
        assert!(!csrf_matches(&a, None));
        assert!(!csrf_matches(&a, Some("")));
        assert_ne!(csrf_token(&a), a, "the token is not the secret");
    }

    #[test]
    fn only_the_listeners_own_origins_and_hosts_pass() {
        let allowed = origins("127.0.0.1:7777".parse().unwrap());
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("http://127.0.0.1:7777"), &allowed));
        assert!(origin_allowed(Some("http://localhost:7777"), &allowed));
        for bad in ["null", "http://127.0.0.1:7778", "https://127.0.0.1:7777", "http://evil.example", ""] {
            assert!(!origin_allowed(Some(bad), &allowed), "{bad}");
        }
        assert!(host_allowed(Some("127.0.0.1:7777"), &allowed));
        assert!(host_allowed(Some("LOCALHOST:7777"), &allowed));
        assert!(!host_allowed(Some("evil.example:7777"), &allowed));
        assert!(!host_allowed(None, &allowed));
        assert_eq!(origins("[::1]:80".parse().unwrap()), ["http://[::1]:80", "http://localhost:80"]);
    }

    #[tokio::test]
    async fn a_redeemed_code_makes_a_session_that_authenticates_and_is_stored_hashed() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store.clone());
        let code = sessions.issue_code();
        let issued = sessions.redeem(&code).await.expect("redeem");
        let session = sessions.authenticate(&issued.secret).await.expect("authenticate");
        assert_eq!(session, issued.session);
        let stored = store.range(PREFIX).await.unwrap();
        assert_eq!(stored.kvs.len(), 1);
        let text = String::from_utf8(stored.kvs[0].value.clone()).unwrap();
        assert!(!text.contains(&issued.secret), "the secret is not stored");
        assert!(matches!(sessions.redeem(&code).await, Err(Error::CodeRefused)));
        assert_eq!(sessions.list().await.unwrap(), vec![issued.session]);
    }

    #[tokio::test]
    async fn a_revoked_session_is_refused() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store);
        let issued = sessions.redeem(&sessions.issue_code()).await.unwrap();
        sessions.revoke(&issued.session.id).await.expect("revoke");
        assert!(matches!(sessions.authenticate(&issued.secret).await, Err(Error::Unknown)));
        assert!(matches!(sessions.revoke(&issued.session.id).await, Err(Error::NotFound(_))));
        assert!(matches!(sessions.revoke("../../kv/x").await, Err(Error::NotFound(_))));
    }

    #[tokio::test]
    async fn a_session_ends_when_it_is_revoked() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store);
        let a = sessions.redeem(&sessions.issue_code()).await.unwrap();
        let b = sessions.redeem(&sessions.issue_code()).await.unwrap();
        let (a_ended, b_ended) = (sessions.ended(&a.session), sessions.ended(&b.session));
        tokio::pin!(b_ended);
        sessions.revoke(&a.session.id).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), a_ended).await.expect("ends once revoked");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut b_ended).await.is_err(),
            "another session's revocation ends nothing else"
        );
        sessions.revoke_all().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), b_ended).await.expect("ends once all are revoked");
    }

    #[tokio::test]
    async fn revoke_all_refuses_every_session() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store);
        let a = sessions.redeem(&sessions.issue_code()).await.unwrap();
        let b = sessions.redeem(&sessions.issue_code()).await.unwrap();
        assert_eq!(sessions.revoke_all().await.unwrap(), 2);
        for issued in [a, b] {
            assert!(sessions.authenticate(&issued.secret).await.is_err());
        }
        assert!(sessions.list().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn an_expired_session_is_refused_and_forgotten() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store.clone());
        let issued = sessions.redeem(&sessions.issue_code()).await.unwrap();
        let later = issued.session.expires_at_ms;
        assert!(matches!(sessions.authenticate_at(&issued.secret, later).await, Err(Error::Expired)));
        assert!(store.range(PREFIX).await.unwrap().kvs.is_empty());
    }

    #[tokio::test]
    async fn unknown_and_malformed_secrets_are_refused() {
        let (_dir, store) = store();
        let sessions = Sessions::new(store);
        sessions.redeem(&sessions.issue_code()).await.unwrap();
        assert!(matches!(sessions.authenticate(&random_hex()).await, Err(Error::Unknown)));
        assert!(matches!(sessions.authenticate("not-a-secret").await, Err(Error::NoSession)));
        assert!(matches!(sessions.authenticate("").await, Err(Error::NoSession)));
    }
}
