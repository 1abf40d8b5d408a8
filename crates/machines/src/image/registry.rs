//! A client for the OCI distribution (registry v2) API: manifests and blobs,
//! anonymously or with credentials, through Bearer tokens or Basic auth.

use std::io::{Read, Write};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use ureq::http::Response;

use super::{Credentials, Error, Progress, Reference, sha256_digest};

const INDEX_TYPES: &[&str] =
    &["application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json"];
const MANIFEST_TYPES: &[&str] =
    &["application/vnd.oci.image.manifest.v1+json", "application/vnd.docker.distribution.manifest.v2+json"];
const CONFIG_TYPES: &[&str] =
    &["application/vnd.oci.image.config.v1+json", "application/vnd.docker.container.image.v1+json"];

/// Manifests and indexes are small; anything bigger is not one.
const MANIFEST_LIMIT: u64 = 4 << 20;
/// How often a download reports progress.
const PROGRESS_EVERY: u64 = 1 << 20;

/// A content descriptor: what a manifest says about a blob.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Descriptor {
    #[serde(default)]
    pub(super) media_type: String,
    pub(super) digest: String,
    #[serde(default)]
    pub(super) size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Debug, Clone, Deserialize)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    #[serde(default)]
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
}

/// An image manifest for linux/amd64, with the digests that name it.
#[derive(Debug)]
pub(super) struct Resolved {
    /// The image manifest's digest: the image's identity.
    pub(super) digest: String,
    /// The digest of the index it was chosen from, if any.
    pub(super) index_digest: Option<String>,
    pub(super) config: Descriptor,
    pub(super) layers: Vec<Descriptor>,
}

/// The part of an OCI image config hearth uses.
#[derive(Debug, Deserialize)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) architecture: String,
    #[serde(default)]
    pub(super) os: String,
    #[serde(default)]
    pub(super) config: Option<RawContainerConfig>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct RawContainerConfig {
    #[serde(default)]
    pub(super) entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub(super) cmd: Option<Vec<String>>,
    #[serde(default)]
    pub(super) env: Option<Vec<String>>,
    #[serde(default)]
    pub(super) working_dir: Option<String>,
    #[serde(default)]
    pub(super) user: Option<String>,
}

/// A manifest's bytes, its media type from the response and its digest.
type Fetched = Result<(Vec<u8>, Option<String>, String), Error>;

/// A session with one repository of one registry. It keeps the token it
/// gets, so each request after the first goes straight through.
pub(super) struct Client<'a> {
    agent: ureq::Agent,
    reference: &'a Reference,
    base: String,
    credentials: Option<&'a Credentials>,
    authorization: Option<String>,
}

impl std::fmt::Debug for Client<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).field("reference", &self.reference).finish()
    }
}

impl<'a> Client<'a> {
    pub(super) fn new(reference: &'a Reference, credentials: Option<&'a Credentials>) -> Client<'a> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .user_agent(concat!("hearth/", env!("CARGO_PKG_VERSION")))
            .timeout_connect(Some(Duration::from_secs(15)))
            .timeout_recv_response(Some(Duration::from_secs(60)))
            .timeout_per_read(Some(Duration::from_secs(60)));
        if reference.is_loopback() {
            // A proxy from the environment cannot reach our loopback.
            config = config.proxy(None);
        }
        Client {
            agent: config.build().new_agent(),
            reference,
            base: reference.base_url(),
            credentials,
            authorization: None,
        }
    }

    /// Fetches the manifest the reference names and, for an index, the
    /// linux/amd64 manifest in it.
    pub(super) fn resolve(&mut self) -> Result<Resolved, Error> {
        self.resolve_with(Self::manifest)
    }

    /// [`resolve`](Self::resolve), getting manifests with `fetch` (as
    /// [`manifest`](Self::manifest) does), so the fuzz targets can run it offline.
    fn resolve_with(&mut self, mut fetch: impl FnMut(&mut Self, &str) -> Fetched) -> Result<Resolved, Error> {
        let (bytes, media_type, digest) = fetch(self, self.reference.manifest_ref())?;
        let raw = self.parse_manifest(&bytes)?;
        // The manifest's own `mediaType` is part of what the digest covers;
        // the Content-Type header is only the server's opinion.
        let media_type = raw.media_type.clone().or(media_type).unwrap_or_default();
        let is_index = if INDEX_TYPES.contains(&media_type.as_str()) {
            true
        } else if MANIFEST_TYPES.contains(&media_type.as_str()) {
            false
        } else if raw.schema_version == 1 || media_type.contains("prettyjws") {
            return Err(self.bad("it has an old Docker schema 1 manifest; push it again with a current tool"));
        } else if raw.manifests.is_some() {
            true
        } else if raw.layers.is_some() {
            false
        } else {
            return Err(self.bad(&format!("its manifest has the media type `{media_type}`, not an image's")));
        };
        if !is_index {
            return self.image_manifest(raw, digest, None);
        }
        let entries = raw.manifests.unwrap_or_default();
        let chosen = entries
            .iter()
            .find(|d| d.platform.as_ref().is_some_and(|p| p.os == "linux" && p.architecture == "amd64"));
        let Some(chosen) = chosen else {
            let available: Vec<String> = entries
                .iter()
                .filter_map(|d| d.platform.as_ref())
                .filter(|p| p.os != "unknown")
                .map(|p| match &p.variant {
                    Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
                    None => format!("{}/{}", p.os, p.architecture),
                })
                .collect();
            let available = if available.is_empty() { "none".to_owned() } else { available.join(", ") };
            return Err(Error::NoPlatform { reference: self.reference.to_string(), available });
        };
        check_digest(&chosen.digest, self.reference)?;
        let (bytes, _, manifest_digest) = fetch(self, &chosen.digest)?;
        let raw = self.parse_manifest(&bytes)?;
        if raw.manifests.is_some() {
            return Err(self.bad("its index points to another index"));
        }
        self.image_manifest(raw, manifest_digest, Some(digest))
    }

    fn image_manifest(
        &self,
        raw: RawManifest,
        digest: String,
        index: Option<String>,
    ) -> Result<Resolved, Error> {
        let (Some(config), Some(layers)) = (raw.config, raw.layers) else {
            return Err(self.bad("its manifest has no config or no layers"));
        };
        if !config.media_type.is_empty() && !CONFIG_TYPES.contains(&config.media_type.as_str()) {
            return Err(self.bad(&format!(
                "it is an OCI artifact of type `{}`, not a container image",
                config.media_type
            )));
        }
        check_digest(&config.digest, self.reference)?;
        for layer in &layers {
            check_digest(&layer.digest, self.reference)?;
            let t = layer.media_type.as_str();
            if !(t.is_empty() || t.contains(".layer.") || t.contains(".rootfs.diff.tar")) {
                return Err(self.bad(&format!("it has a layer of type `{t}`")));
            }
            if t.contains("foreign") {
                return Err(self.bad("it has a foreign (Windows) layer"));
            }
        }
        Ok(Resolved { digest, index_digest: index, config, layers })
    }

    fn parse_manifest(&self, bytes: &[u8]) -> Result<RawManifest, Error> {
        serde_json::from_slice(bytes).map_err(|e| self.bad(&format!("its manifest is not valid JSON ({e})")))
    }

    fn bad(&self, reason: &str) -> Error {
        Error::BadImage { reference: self.reference.to_string(), reason: reason.to_owned() }
    }

    /// GETs a manifest by tag or digest: its bytes, its media type, and its
    /// digest (checked against the one asked for).
    fn manifest(&mut self, tag_or_digest: &str) -> Fetched {
        let accept = [INDEX_TYPES, MANIFEST_TYPES].concat().join(", ");
        let mut response = self.get(&format!("manifests/{tag_or_digest}"), Some(&accept), true)?;
        let media_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned());
        let url = self.url(&format!("manifests/{tag_or_digest}"));
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MANIFEST_LIMIT)
            .read_to_vec()
            .map_err(|source| transport(&url, source))?;
        let digest = sha256_digest(&Sha256::digest(&bytes));
        if tag_or_digest.starts_with("sha256:") && digest != tag_or_digest {
            return Err(Error::DigestMismatch {
                what: "the manifest",
                expected: tag_or_digest.to_owned(),
                actual: digest,
            });
        }
        Ok((bytes, media_type, digest))
    }

    /// Downloads a blob into `out`, checking its size and digest.
    pub(super) fn blob(
        &mut self,
        blob: &Descriptor,
        out: &mut dyn Write,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(), Error> {
        let path = format!("blobs/{}", blob.digest);
        let url = self.url(&path);
        let response = self.get(&path, None, false)?;
        let total = match blob.size {
            0 => response.body().content_length().unwrap_or(0),
            size => size,
        };
        let mut reader = response.into_body().into_reader();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 << 10];
        let (mut done, mut reported) = (0u64, 0u64);
        progress(Progress::Downloading { digest: blob.digest.clone(), done: 0, total });
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(transport(&url, ureq::Error::Io(e))),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|source| Error::Io { path: "the blob cache".into(), source })?;
            done += n as u64;
            if blob.size > 0 && done > blob.size {
                break;
            }
            if done - reported >= PROGRESS_EVERY {
                reported = done;
                progress(Progress::Downloading { digest: blob.digest.clone(), done, total });
            }
        }
        let actual = sha256_digest(&hasher.finalize());
        if actual != blob.digest || (blob.size > 0 && done != blob.size) {
            return Err(Error::DigestMismatch { what: "the blob", expected: blob.digest.clone(), actual });
        }
        progress(Progress::Downloading { digest: blob.digest.clone(), done, total });
        Ok(())
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.reference.repository)
    }

    /// GETs `/v2/REPO/PATH`, authenticating once if the registry asks.
    fn get(
        &mut self,
        path: &str,
        accept: Option<&str>,
        is_manifest: bool,
    ) -> Result<Response<ureq::Body>, Error> {
        let url = self.url(path);
        for attempt in 0..2 {
            let mut request = self.agent.get(&url);
            if let Some(accept) = accept {
                request = request.header("accept", accept);
            }
            if let Some(authorization) = &self.authorization {
                request = request.header("authorization", authorization);
            }
            let mut response = request.call().map_err(|e| self.transport(&url, e))?;
            let status = response.status().as_u16();
            match status {
                200..=299 => return Ok(response),
                401 if attempt == 0 => self.authenticate(&response)?,
                401 | 403 => {
                    let reason = match (status, self.credentials) {
                        (403, _) => "the account may not pull this repository".to_owned(),
                        (_, Some(c)) => format!(
                            "it rejected the credentials of `{}`; check the user name and password",
                            c.username
                        ),
                        (_, None) => {
                            "it requires credentials, or the repository does not exist; check the name, or pass a user name and password".to_owned()
                        }
                    };
                    return Err(self.unauthorized(reason));
                }
                404 if is_manifest => {
                    return Err(Error::NotFound {
                        reference: self.reference.to_string(),
                        registry: self.reference.registry.clone(),
                    });
                }
                _ => {
                    let detail = error_detail(&mut response);
                    return Err(Error::Registry {
                        registry: self.reference.registry.clone(),
                        url,
                        status,
                        detail,
                    });
                }
            }
        }
        unreachable!("the second attempt always returns")
    }

    /// Answers a 401's challenge: Basic with the credentials, or Bearer with
    /// a token from the realm (anonymous when there are no credentials).
    fn authenticate(&mut self, response: &Response<ureq::Body>) -> Result<(), Error> {
        let challenges: Vec<&str> =
            response.headers().get_all("www-authenticate").iter().filter_map(|v| v.to_str().ok()).collect();
        let bearer = challenges.iter().find_map(|c| strip_scheme(c, "bearer"));
        if let Some(params) = bearer {
            let params = parse_params(params);
            let param = |name: &str| {
                params.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
            };
            let Some(realm) = param("realm") else {
                return Err(self.unauthorized("its Bearer challenge names no token realm".to_owned()));
            };
            let scope = format!("repository:{}:pull", self.reference.repository);
            let mut url = realm.to_owned();
            let mut sep = if realm.contains('?') { '&' } else { '?' };
            if let Some(service) = param("service") {
                url.push_str(&format!("{sep}service={}", percent_encode(service)));
                sep = '&';
            }
            url.push_str(&format!("{sep}scope={}", percent_encode(param("scope").unwrap_or(&scope))));
            let mut request = self.agent.get(&url);
            if let Some(c) = self.credentials {
                request = request.header("authorization", basic(c));
            }
            let mut answer = request.call().map_err(|e| self.transport(realm, e))?;
            match answer.status().as_u16() {
                200..=299 => {}
                401 | 403 => {
                    let reason = match self.credentials {
                        Some(c) => format!(
                            "its token service {realm} rejected the credentials of `{}`; check the user name and password",
                            c.username
                        ),
                        None => {
                            format!("its token service {realm} refused an anonymous token; pass credentials")
                        }
                    };
                    return Err(self.unauthorized(reason));
                }
                status => {
                    let detail = error_detail(&mut answer);
                    return Err(Error::Registry {
                        registry: self.reference.registry.clone(),
                        url,
                        status,
                        detail,
                    });
                }
            }
            #[derive(Deserialize)]
            struct Token {
                token: Option<String>,
                access_token: Option<String>,
            }
            let body = answer
                .body_mut()
                .with_config()
                .limit(MANIFEST_LIMIT)
                .read_to_vec()
                .map_err(|e| transport(realm, e))?;
            let token: Token = serde_json::from_slice(&body)
                .map_err(|e| self.unauthorized(format!("its token service {realm} sent no token ({e})")))?;
            let Some(token) = token.token.or(token.access_token).filter(|t| !t.is_empty()) else {
                return Err(self.unauthorized(format!("its token service {realm} sent no token")));
            };
            self.authorization = Some(format!("Bearer {token}"));
            return Ok(());
        }
        if challenges.iter().any(|c| strip_scheme(c, "basic").is_some()) {
            let Some(c) = self.credentials else {
                return Err(
                    self.unauthorized("it requires a user name and password; pass credentials".to_owned())
                );
            };
            self.authorization = Some(basic(c));
            return Ok(());
        }
        Err(self.unauthorized("it asked for authentication of a kind hearth does not speak".to_owned()))
    }

    fn unauthorized(&self, reason: String) -> Error {
        Error::Unauthorized {
            registry: self.reference.registry.clone(),
            repository: self.reference.familiar_repository(),
            reason,
        }
    }

    fn transport(&self, url: &str, source: ureq::Error) -> Error {
        match transport(url, source) {
            Error::Unreachable { source, .. } => Error::Unreachable {
                url: if url.starts_with(&self.base) { self.base.clone() } else { url.to_owned() },
                source,
            },
            other => other,
        }
    }
}

/// Sorts a failed exchange into "cannot connect" and "failed part-way".
fn transport(url: &str, source: ureq::Error) -> Error {
    use std::io::ErrorKind as K;
    let unreachable = match &source {
        ureq::Error::Io(e) => matches!(
            e.kind(),
            K::ConnectionRefused | K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable
        ),
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(t) => matches!(t, ureq::Timeout::Resolve | ureq::Timeout::Connect),
        _ => false,
    };
    if unreachable {
        Error::Unreachable { url: url.to_owned(), source }
    } else {
        Error::Transport { url: url.to_owned(), source }
    }
}

fn check_digest(digest: &str, reference: &Reference) -> Result<(), Error> {
    if super::digest_hex(digest).is_some() {
        Ok(())
    } else {
        Err(Error::BadImage {
            reference: reference.to_string(),
            reason: format!("it refers to `{digest}`, which is not a sha256 digest"),
        })
    }
}

/// The registry's error messages (`{"errors":[{"message":…}]}`), or the
/// start of the body.
fn error_detail(response: &mut Response<ureq::Body>) -> String {
    let body = response.body_mut().with_config().limit(64 << 10).read_to_vec().unwrap_or_default();
    #[derive(Deserialize)]
    struct Errors {
        errors: Vec<ErrorItem>,
    }
    #[derive(Deserialize)]
    struct ErrorItem {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    if let Ok(errors) = serde_json::from_slice::<Errors>(&body)
        && !errors.errors.is_empty()
    {
        return errors
            .errors
            .iter()
            .map(|e| format!("{} ({})", e.message, e.code))
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&body);
    let text = text.trim();
    if text.is_empty() { "no details".to_owned() } else { text.chars().take(200).collect() }
}

fn basic(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

/// The parameters of a challenge if it uses `scheme` (case-insensitive).
fn strip_scheme<'h>(challenge: &'h str, scheme: &str) -> Option<&'h str> {
    let challenge = challenge.trim_start();
    let (first, rest) = challenge.split_once(' ').unwrap_or((challenge, ""));
    first.eq_ignore_ascii_case(scheme).then_some(rest)
}

/// Parses `a="x", b=y` (RFC 7235 auth-params).
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace() || *c == ',') {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect::<String>().trim().to_owned();
        if key.is_empty() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| *c != ',') {
                value.push(c);
            }
            value = value.trim().to_owned();
        }
        out.push((key, value));
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature).
#[cfg(feature = "fuzzing")]
pub mod fuzzing {
    use super::*;

    /// Resolves `reference` offline: `first` is what the registry answers
    /// for its tag (with `content_type`), `second` what it answers for the
    /// manifest an index points to (taken to have the digest asked for).
    /// Returns the digests of the config and the layers, in that order.
    pub fn resolve(
        reference: &Reference,
        first: &[u8],
        content_type: Option<&str>,
        second: &[u8],
    ) -> Result<Vec<String>, Error> {
        let mut client = Client::new(reference, None);
        let mut calls = 0;
        let resolved = client.resolve_with(|_, tag_or_digest| {
            calls += 1;
            Ok(match calls {
                1 => (first.to_vec(), content_type.map(str::to_owned), sha256_digest(&Sha256::digest(first))),
                _ => (second.to_vec(), None, tag_or_digest.to_owned()),
            })
        })?;
        let config = std::iter::once(resolved.config.digest);
        Ok(config.chain(resolved.layers.into_iter().map(|l| l.digest)).collect())
    }

    /// An image config as the store reads it: architecture, os, entrypoint.
    pub fn config(bytes: &[u8]) -> Option<(String, String, Vec<String>)> {
        let raw: RawConfig = serde_json::from_slice(bytes).ok()?;
        Some((raw.architecture, raw.os, raw.config.and_then(|c| c.entrypoint).unwrap_or_default()))
    }

    /// A `WWW-Authenticate` header's Bearer parameters, and the token URL's
    /// encoding of each value.
    pub fn challenge(header: &str) -> Option<Vec<(String, String, String)>> {
        let params = parse_params(strip_scheme(header, "bearer")?);
        Some(params.into_iter().map(|(k, v)| (k, percent_encode(&v), v)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenge_params() {
        let c = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/debian:pull""#;
        let params = parse_params(strip_scheme(c, "bearer").unwrap());
        assert_eq!(
            params,
            [
                ("realm".to_owned(), "https://auth.docker.io/token".to_owned()),
                ("service".to_owned(), "registry.docker.io".to_owned()),
                ("scope".to_owned(), "repository:library/debian:pull".to_owned()),
            ]
        );
        assert_eq!(
            parse_params(r#"realm="a\"b", x=y"#),
            [("realm".into(), "a\"b".into()), ("x".into(), "y".into())]
        );
        assert!(strip_scheme("Basic realm=x", "bearer").is_none());
        assert_eq!(percent_encode("repository:a/b:pull"), "repository%3Aa%2Fb%3Apull");
    }
}
