//! Image references, with Docker's rules: `debian` is
//! `docker.io/library/debian:latest`; the first path component is a registry
//! when it has a `.` or a `:`, is `localhost`, or has an uppercase letter.

use std::fmt;

use super::Error;

/// Docker Hub's canonical name, as people write it.
const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's registry API actually lives.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// `docker.io`, `ghcr.io`, `127.0.0.1:5000`, `[::1]:5000`.
    pub registry: String,
    /// `library/debian`, `o/r`.
    pub repository: String,
    /// The tag; `latest` when neither a tag nor a digest was given.
    pub tag: Option<String>,
    /// `sha256:…`; when set, it is what is pulled and the tag is informative.
    pub digest: Option<String>,
}

impl Reference {
    /// The host (and port) to send API requests to.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB { DOCKER_HUB_API } else { &self.registry }
    }

    /// Whether the registry is on this host: such registries are spoken to
    /// over plain HTTP, as Docker does by default.
    pub fn is_loopback(&self) -> bool {
        let host = match self.registry.rsplit_once(':') {
            Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
            _ => &self.registry,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }

    /// `http://HOST` or `https://HOST`.
    pub fn base_url(&self) -> String {
        let scheme = if self.is_loopback() { "http" } else { "https" };
        format!("{scheme}://{}", self.api_host())
    }

    /// The tag or digest to ask the registry for.
    pub fn manifest_ref(&self) -> &str {
        self.digest.as_deref().or(self.tag.as_deref()).unwrap_or("latest")
    }

    /// The repository as people write it: `debian`, `ghcr.io/o/r`.
    pub fn familiar_repository(&self) -> String {
        if self.registry == DOCKER_HUB {
            self.repository.strip_prefix("library/").unwrap_or(&self.repository).to_owned()
        } else {
            format!("{}/{}", self.registry, self.repository)
        }
    }

    /// The full form: `docker.io/library/debian:bookworm`.
    pub fn canonical(&self) -> String {
        let mut s = format!("{}/{}", self.registry, self.repository);
        self.push_suffix(&mut s);
        s
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(tag) = &self.tag {
            s.push(':');
            s.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            s.push('@');
            s.push_str(digest);
        }
    }
}

/// The familiar form: `debian:bookworm`, `127.0.0.1:5000/test:latest`.
impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = self.familiar_repository();
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl std::str::FromStr for Reference {
    type Err = Error;
    fn from_str(s: &str) -> Result<Reference, Error> {
        parse_reference(s)
    }
}

/// Parses `[REGISTRY/]REPOSITORY[:TAG][@sha256:HEX]`.
pub fn parse_reference(s: &str) -> Result<Reference, Error> {
    let bad = |reason: String| Error::BadReference { input: s.to_owned(), reason };
    if s.is_empty() {
        return Err(bad("it is empty; name an image such as `debian:bookworm`".to_owned()));
    }
    if let Some(c) = s.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("it contains {c:?}")));
    }
    let (name, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(parse_digest(digest).map_err(bad)?)),
        None => (s, None),
    };
    // A `:` after the last `/` starts the tag; one before it is a port.
    let (name, tag) = match name.rfind(':') {
        Some(i) if !name[i..].contains('/') => (&name[..i], Some(&name[i + 1..])),
        _ => (name, None),
    };
    if let Some(tag) = tag {
        check_tag(tag).map_err(bad)?;
    }
    let (registry, path) = match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            check_registry(first).map_err(bad)?;
            let first = if first == "index.docker.io" { DOCKER_HUB } else { first };
            (first.to_owned(), rest)
        }
        _ => (DOCKER_HUB.to_owned(), name),
    };
    check_repository(path).map_err(bad)?;
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    if registry.len() + 1 + repository.len() > 255 {
        return Err(bad("the name is longer than 255 characters".to_owned()));
    }
    let tag = match (tag, &digest) {
        (None, None) => Some("latest".to_owned()),
        (tag, _) => tag.map(str::to_owned),
    };
    Ok(Reference { registry, repository, tag, digest })
}

fn parse_digest(digest: &str) -> Result<String, String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!("the digest `{digest}` has no algorithm; write `sha256:` and 64 hex digits"));
    };
    if algorithm != "sha256" {
        return Err(format!("the digest algorithm `{algorithm}` is not supported; use sha256"));
    }
    if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!("the digest `{digest}` is not `sha256:` and 64 lowercase hex digits"));
    }
    Ok(digest.to_owned())
}

fn check_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .bytes()
            .enumerate()
            .all(|(i, b)| b.is_ascii_alphanumeric() || b == b'_' || (i > 0 && matches!(b, b'.' | b'-')));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "the tag `{tag}` is not valid; tags are up to 128 letters, digits, `_`, `.` and `-`, not starting with `.` or `-`"
        ))
    }
}

fn check_registry(registry: &str) -> Result<(), String> {
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        // An IPv6 address: `[::1]` or `[::1]:5000`.
        let (addr, after) =
            rest.split_once(']').ok_or_else(|| format!("the registry `{registry}` lacks a `]`"))?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(format!("`{addr}` in the registry is not an IPv6 address"));
        }
        match after {
            "" => (None, None),
            _ => (
                None,
                Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| format!("the registry `{registry}` is not valid"))?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        }
    };
    if let Some(port) = port
        && (port.is_empty() || port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!("the registry port `{port}` is not a number"));
    }
    if let Some(host) = host {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if !host.split('.').all(label_ok) {
            return Err(format!("the registry host `{host}` is not a valid host name"));
        }
    }
    Ok(())
}

/// Components are lowercase alphanumerics separated by `.`, `_`, `__` or
/// runs of `-`, joined by `/`.
fn check_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("the repository name is empty".to_owned());
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(format!("repository names must be lowercase (`{}`)", path.to_ascii_lowercase()));
    }
    for component in path.split('/') {
        if !component_ok(component) {
            return Err(format!(
                "`{component}` is not a valid repository name component; use lowercase letters and digits, separated by `.`, `_`, `__` or `-`"
            ));
        }
    }
    Ok(())
}

fn component_ok(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator: `.`, `_`, `__`, or one or more `-`.
        let start = i;
        match b[i] {
            b'.' => i += 1,
            b'_' => i += if b.get(i + 1) == Some(&b'_') { 2 } else { 1 },
            b'-' => {
                while b.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        if i == start || !b.get(i).copied().is_some_and(alnum) {
            return false;
        }
    }
    true
}
