//! Config keys, layers and scopes, and where each lives in the store.
//!
//! A key is a dotted path (`db.pool.size`): 1 to 32 segments of ASCII
//! letters, digits, `_` and `-`, at most 256 bytes in all. Each leaf of a
//! layer is one store key, `config/values/LAYER/KEY`, so a change to one leaf
//! is one store event and a watch on a prefix of keys is a watch on a prefix
//! of the store.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// Everything config keeps in the store is under this prefix.
pub const PREFIX: &str = "config/";
/// The leaves of every layer: `config/values/LAYER/KEY`.
pub const VALUES: &str = "config/values/";
/// One record per committed change: `config/history/ID`.
pub const HISTORY: &str = "config/history/";
/// A JSON Schema per key prefix: `config/schemas/PREFIX`.
pub const SCHEMAS: &str = "config/schemas/";
/// Bumped by every config write, so that writes are checked and applied in
/// one order (each is a compare-and-swap on its revision).
pub const HEAD: &str = "config/head";

const MAX_SEGMENTS: usize = 32;
const MAX_KEY_LEN: usize = 256;

/// A dotted config key, checked.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key(String);

impl Key {
    /// Checks a dotted key.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidKey { key: text.to_owned(), reason: reason.to_owned() };
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        if text.len() > MAX_KEY_LEN {
            return Err(bad(&format!("it is longer than {MAX_KEY_LEN} bytes")));
        }
        let segments: Vec<&str> = text.split('.').collect();
        if segments.len() > MAX_SEGMENTS {
            return Err(bad(&format!("it has more than {MAX_SEGMENTS} segments")));
        }
        for segment in &segments {
            if segment.is_empty() {
                return Err(bad("a segment between dots is empty"));
            }
            if !segment.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
                return Err(bad("use ASCII letters, digits, `_` and `-` between the dots"));
            }
        }
        Ok(Self(text.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The key with `child` appended.
    pub fn child(&self, child: &str) -> Result<Self, Error> {
        Self::parse(&format!("{}.{child}", self.0))
    }

    /// Whether `self` is `other` or a key under it (`a.b` is under `a`;
    /// `ab` is not).
    pub fn is_within(&self, other: &Key) -> bool {
        self.0 == other.0 || (self.0.starts_with(&other.0) && self.0.as_bytes()[other.0.len()] == b'.')
    }

    /// The keys above this one, nearest last: `a`, `a.b` for `a.b.c`.
    pub fn ancestors(&self) -> Vec<Key> {
        let mut out = Vec::new();
        for (i, b) in self.0.bytes().enumerate() {
            if b == b'.' {
                out.push(Key(self.0[..i].to_owned()));
            }
        }
        out
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a dotted key (or an empty prefix, for all) covers `key`: the same
/// key, or a key under it.
pub fn covers(prefix: &str, key: &str) -> bool {
    prefix.is_empty()
        || key == prefix
        || (key.starts_with(prefix) && key.as_bytes().get(prefix.len()) == Some(&b'.'))
}

/// Checks a key prefix: empty (everything) or a key.
pub fn check_prefix(prefix: &str) -> Result<(), Error> {
    if prefix.is_empty() { Ok(()) } else { Key::parse(prefix).map(drop) }
}

/// What a consumer reads config as: everything, or one app, service,
/// machine or workflow.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Scope {
    Global,
    App(String),
    Service(String),
    Machine(String),
    Workflow(String),
}

impl Scope {
    fn kind(&self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::App(_) => "app",
            Scope::Service(_) => "service",
            Scope::Machine(_) => "machine",
            Scope::Workflow(_) => "workflow",
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Scope::Global => None,
            Scope::App(n) | Scope::Service(n) | Scope::Machine(n) | Scope::Workflow(n) => Some(n),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            None => f.write_str("global"),
            Some(name) => write!(f, "{}:{name}", self.kind()),
        }
    }
}

impl FromStr for Scope {
    type Err = Error;

    /// `global`, or `app:NAME`, `service:NAME`, `machine:NAME`,
    /// `workflow:NAME`.
    fn from_str(text: &str) -> Result<Self, Error> {
        if text == "global" {
            return Ok(Scope::Global);
        }
        let bad = |reason: String| Error::InvalidScope { scope: text.to_owned(), reason };
        let Some((kind, name)) = text.split_once(':') else {
            return Err(bad("use global, app:NAME, service:NAME, machine:NAME or workflow:NAME".into()));
        };
        let scope = match kind {
            "app" => Scope::App(name.to_owned()),
            "service" => Scope::Service(name.to_owned()),
            "machine" => Scope::Machine(name.to_owned()),
            "workflow" => Scope::Workflow(name.to_owned()),
            _ => {
                return Err(bad(format!(
                    "{kind:?} is not a kind of scope: use app, service, machine or workflow"
                )));
            }
        };
        hearth_store::names::check_label(kind, name, 63).map_err(bad)?;
        Ok(scope)
    }
}

/// Where a value is set. A consumer sees the layers merged in this order,
/// later winning: `files` (what `config import` read from files kept in
/// git), the consumer's own `hearth.toml` `[config]` table (apps and
/// workflows; not kept here), `global`, its scope's layer, `override`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Layer {
    Files,
    Global,
    Scope(Scope),
    Override,
}

impl Layer {
    /// The layer a `set` with this scope writes to.
    pub fn of(scope: Scope) -> Self {
        match scope {
            Scope::Global => Layer::Global,
            scope => Layer::Scope(scope),
        }
    }

    /// The layers a consumer in `scopes` reads (narrower scopes last),
    /// lowest first, without the consumer's own manifest, which sits just
    /// after `files`.
    pub fn stack(scopes: &[Scope]) -> Vec<Layer> {
        let mut stack = vec![Layer::Files, Layer::Global];
        stack.extend(scopes.iter().filter(|s| **s != Scope::Global).cloned().map(Layer::Scope));
        stack.push(Layer::Override);
        stack
    }

    /// `config/values/LAYER/`.
    pub fn store_prefix(&self) -> String {
        format!("{VALUES}{self}/")
    }

    /// The store key of a leaf of this layer.
    pub fn store_key(&self, key: &Key) -> String {
        format!("{VALUES}{self}/{key}")
    }

    /// The layer and key of a store key under [`VALUES`].
    pub fn from_store_key(store_key: &str) -> Option<(Layer, Key)> {
        let rest = store_key.strip_prefix(VALUES)?;
        let (layer, key) = rest.split_once('/')?;
        Some((layer.parse().ok()?, Key::parse(key).ok()?))
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Layer::Files => f.write_str("files"),
            Layer::Global => f.write_str("global"),
            Layer::Scope(scope) => scope.fmt(f),
            Layer::Override => f.write_str("override"),
        }
    }
}

impl FromStr for Layer {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        match text {
            "files" => Ok(Layer::Files),
            "override" => Ok(Layer::Override),
            _ => text.parse::<Scope>().map(Layer::of).map_err(|e| match e {
                Error::InvalidScope { scope, reason } => Error::InvalidLayer {
                    layer: scope,
                    reason: format!("{reason}; the other layers are files and override"),
                },
                other => other,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_dotted_words() {
        for good in ["a", "db.host", "a-b.c_d.E9", &["s"; 32].join(".")] {
            assert!(Key::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("a..b", "empty"),
            (".a", "empty"),
            ("a.", "empty"),
            ("a b", "ASCII"),
            ("a/b", "ASCII"),
            ("é", "ASCII"),
            (&["s"; 33].join("."), "33"),
            (&"x".repeat(257), "256"),
        ] {
            let error = Key::parse(bad).expect_err(bad).to_string();
            assert!(error.contains(why.trim_start_matches("33")), "{bad}: {error}");
        }
    }

    #[test]
    fn a_key_is_within_itself_and_its_ancestors_only() {
        let k = Key::parse("a.b.c").unwrap();
        assert!(k.is_within(&Key::parse("a").unwrap()));
        assert!(k.is_within(&Key::parse("a.b").unwrap()));
        assert!(k.is_within(&k));
        assert!(!k.is_within(&Key::parse("a.bc").unwrap()));
        assert!(!Key::parse("ab").unwrap().is_within(&Key::parse("a").unwrap()));
        assert_eq!(k.ancestors(), vec![Key::parse("a").unwrap(), Key::parse("a.b").unwrap()]);
        assert!(covers("", "x") && covers("a", "a.b") && !covers("a", "ab"));
    }

    #[test]
    fn layers_and_scopes_round_trip_through_their_names() {
        for text in
            ["files", "global", "override", "app:shop", "service:web", "machine:n1", "workflow:approve"]
        {
            let layer: Layer = text.parse().unwrap();
            assert_eq!(layer.to_string(), text);
            let key = Key::parse("db.host").unwrap();
            assert_eq!(Layer::from_store_key(&layer.store_key(&key)), Some((layer, key)));
        }
        for bad in ["app", "app:", "app:Shop", "cluster:x", "app:a/b"] {
            assert!(bad.parse::<Layer>().is_err(), "{bad}");
        }
        assert!("files".parse::<Scope>().is_err());
    }

    #[test]
    fn a_scope_reads_files_then_global_then_its_own_layer_then_override() {
        let app = Scope::App("shop".into());
        assert_eq!(
            Layer::stack(std::slice::from_ref(&app)),
            vec![Layer::Files, Layer::Global, Layer::Scope(app.clone()), Layer::Override]
        );
        assert_eq!(Layer::stack(&[Scope::Global]), vec![Layer::Files, Layer::Global, Layer::Override]);
    }
}
