//! Secrets: values encrypted with age to an X25519 key of the daemon's.
//!
//! The key file (`config.key` in the data dir, mode 0600) holds age
//! identities, one per line: the first is the current one, every value is
//! encrypted to it; the others are retired by `config rekey` and kept only
//! so that what was recorded before (a workflow's journal) can still be
//! read, until `config rekey --forget` drops them. The store, the history,
//! events, listings and logs only ever hold a secret's ciphertext: the
//! plaintext (the value's JSON text) exists in memory while it is delivered
//! to its consumer or checked against a schema.
//!
//! A file made for git by `config encrypt` keeps its keys readable and
//! holds each leaf as the string `age:BASE64` (the same ciphertext), so
//! `config import` stores it as a secret without decrypting it. Anyone
//! with the key file can read it back with the `age` tool:
//! `echo BASE64 | base64 -d | age -d -i config.key`.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use age::secrecy::ExposeSecret;
use age::x25519::{Identity, Recipient};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use crate::Error;

/// The key file's name in the data dir.
pub const KEY_FILE: &str = "config.key";
/// How a secret leaf is written in a file made by `config encrypt`.
pub const FILE_PREFIX: &str = "age:";

/// The daemon's identities: the current one first.
pub struct Keyring {
    path: PathBuf,
    identities: Vec<Identity>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("path", &self.path)
            .field("recipient", &self.recipient().to_string())
            .field("retired", &(self.identities.len() - 1))
            .finish()
    }
}

impl Keyring {
    /// Reads the key file in `dir`, or makes one with a new identity.
    pub fn open(dir: &Path) -> Result<Self, Error> {
        Self::open_file(&dir.join(KEY_FILE))
    }

    /// Reads the key file at `path`, or makes one with a new identity. Hosts
    /// that share a store share one key file (`hearth serve --config-key`):
    /// when several start at once and none finds it, the first to write it
    /// wins and the others read what it wrote.
    pub fn open_file(path: &Path) -> Result<Self, Error> {
        let path = path.to_owned();
        let io = |source| Error::KeyFile { path: path.clone(), source };
        match std::fs::File::open(&path) {
            Ok(mut file) => {
                let mode = file.metadata().map_err(io)?.permissions().mode();
                if mode & 0o077 != 0 {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
                    tracing::warn!(path = %path.display(), "The config key file was readable by others; made it 0600.");
                }
                let mut text = String::new();
                file.read_to_string(&mut text).map_err(io)?;
                let identities = text
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(|l| l.parse::<Identity>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|reason| Error::BadKeyFile { path: path.clone(), reason: reason.to_string() })?;
                if identities.is_empty() {
                    return Err(Error::BadKeyFile { path, reason: "it holds no key".into() });
                }
                Ok(Self { path, identities })
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let ring = Self { path: path.clone(), identities: vec![Identity::generate()] };
                if ring.save_new()? { Ok(ring) } else { Self::open_file(&path) }
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The public key values are encrypted to (`age1...`).
    pub fn recipient(&self) -> Recipient {
        self.identities[0].to_public()
    }

    /// How many retired identities are kept.
    pub fn retired(&self) -> usize {
        self.identities.len() - 1
    }

    /// A value's ciphertext, base64.
    pub fn encrypt(&self, value: &Value) -> Result<String, Error> {
        encrypt_to(&self.recipient(), value)
    }

    /// A value back from its ciphertext, with any identity of the ring.
    pub fn decrypt(&self, ciphertext: &str) -> Result<Value, Error> {
        let bytes = STANDARD
            .decode(ciphertext.trim())
            .map_err(|_| Error::Undecryptable { reason: "it is not base64".into() })?;
        let decryptor = age::Decryptor::new_buffered(&bytes[..])
            .map_err(|e| Error::Undecryptable { reason: e.to_string() })?;
        let mut reader = decryptor
            .decrypt(self.identities.iter().map(|i| i as &dyn age::Identity))
            .map_err(|e| Error::Undecryptable { reason: e.to_string() })?;
        let mut plain = Vec::new();
        reader.read_to_end(&mut plain).map_err(|e| Error::Undecryptable { reason: e.to_string() })?;
        serde_json::from_slice(&plain)
            .map_err(|_| Error::Undecryptable { reason: "its plaintext is not a JSON value".into() })
    }

    /// Whether the current identity (not only a retired one) opens it.
    pub fn is_current(&self, ciphertext: &str) -> bool {
        let Ok(bytes) = STANDARD.decode(ciphertext.trim()) else { return false };
        let Ok(decryptor) = age::Decryptor::new_buffered(&bytes[..]) else { return false };
        decryptor.decrypt(std::iter::once(&self.identities[0] as &dyn age::Identity)).is_ok()
    }

    /// Puts a new current identity in front; the old ones are retired.
    /// Returns the ring as it would be, saved.
    pub fn rotated(&self) -> Result<Self, Error> {
        let mut identities = vec![Identity::generate()];
        identities.extend(self.identities.iter().cloned());
        let ring = Self { path: self.path.clone(), identities };
        ring.save()?;
        Ok(ring)
    }

    /// The ring without its retired identities, saved.
    pub fn forgetting_retired(&self) -> Result<Self, Error> {
        let ring = Self { path: self.path.clone(), identities: vec![self.identities[0].clone()] };
        ring.save()?;
        Ok(ring)
    }

    /// Writes the key file: a new file, 0600, synced, renamed over the old.
    /// Writes a key file that does not exist yet; false if another process
    /// wrote one first (it is kept).
    fn save_new(&self) -> Result<bool, Error> {
        self.write(|tmp, path| match std::fs::hard_link(tmp, path) {
            Ok(()) => {
                let _ = std::fs::remove_file(tmp);
                Ok(true)
            }
            Err(e) => {
                let _ = std::fs::remove_file(tmp);
                if e.kind() == std::io::ErrorKind::AlreadyExists { Ok(false) } else { Err(e) }
            }
        })
    }

    fn save(&self) -> Result<(), Error> {
        self.write(|tmp, path| std::fs::rename(tmp, path).inspect_err(|_| drop(std::fs::remove_file(tmp))))
    }

    /// Writes the ring to a temporary file beside the key file, then
    /// `publish`es it there (rename or link) and syncs the directory.
    fn write<T>(&self, publish: impl FnOnce(&Path, &Path) -> std::io::Result<T>) -> Result<T, Error> {
        let io = |source| Error::KeyFile { path: self.path.clone(), source };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let tmp = dir.join(format!(".{KEY_FILE}.{}.tmp", rand::random::<u64>()));
        let mut text = String::from(
            "# hearth's config key: the first line encrypts, the others (retired) only decrypt.\n\
             # Keep it secret and keep a copy: without it, secrets cannot be read.\n",
        );
        for identity in &self.identities {
            text.push_str(identity.to_string().expose_secret());
            text.push('\n');
        }
        let mut file =
            std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp).map_err(io)?;
        let written = file.write_all(text.as_bytes()).and_then(|()| file.sync_all());
        drop(file);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        let published = publish(&tmp, &self.path).map_err(io)?;
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        Ok(published)
    }
}

/// A value's ciphertext to `recipient`, base64 (what `config encrypt` does
/// with the daemon's public key, without the key file).
pub fn encrypt_to(recipient: &Recipient, value: &Value) -> Result<String, Error> {
    let plain = serde_json::to_vec(value).expect("a JSON value serialises");
    let cipher = age::encrypt(recipient, &plain)
        .map_err(|e| Error::Undecryptable { reason: format!("cannot encrypt: {e}") })?;
    Ok(STANDARD.encode(cipher))
}

/// Parses a public key (`age1...`).
pub fn parse_recipient(text: &str) -> Result<Recipient, Error> {
    text.trim().parse::<Recipient>().map_err(|reason| Error::InvalidValue {
        key: "recipient".into(),
        reason: format!("{text:?} is not an age X25519 public key ({reason})"),
    })
}

/// Encrypts every leaf of a TOML document (`config encrypt`): keys stay
/// readable, each value becomes `age:BASE64` of its JSON text; leaves
/// already encrypted are kept as they are.
pub fn encrypt_toml(text: &str, recipient: &Recipient) -> Result<String, Error> {
    let table: toml::Table = toml::from_str(text).map_err(|e| Error::InvalidValue {
        key: String::new(),
        reason: format!("the file is not TOML: {}", e.message()),
    })?;
    let encrypted = encrypt_table(table, recipient, "")?;
    toml::to_string_pretty(&encrypted)
        .map_err(|e| Error::InvalidValue { key: String::new(), reason: format!("cannot write TOML: {e}") })
}

fn encrypt_table(table: toml::Table, recipient: &Recipient, at: &str) -> Result<toml::Table, Error> {
    let mut out = toml::Table::new();
    for (name, value) in table {
        let path = if at.is_empty() { name.clone() } else { format!("{at}.{name}") };
        let value = match value {
            toml::Value::Table(inner) if !inner.is_empty() => {
                toml::Value::Table(encrypt_table(inner, recipient, &path)?)
            }
            toml::Value::String(s) if s.starts_with(FILE_PREFIX) => toml::Value::String(s),
            leaf => {
                let json = crate::tree::from_toml(leaf).ok_or_else(|| Error::InvalidValue {
                    key: path.clone(),
                    reason: "infinity and NaN have no JSON form".into(),
                })?;
                toml::Value::String(format!("{FILE_PREFIX}{}", encrypt_to(recipient, &json)?))
            }
        };
        out.insert(name, value);
    }
    Ok(out)
}

/// The same for a JSON document.
pub fn encrypt_json(text: &str, recipient: &Recipient) -> Result<String, Error> {
    let value: Value = serde_json::from_str(text).map_err(|e| Error::InvalidValue {
        key: String::new(),
        reason: format!("the file is not JSON: {e}"),
    })?;
    let out = encrypt_leaves(value, recipient)?;
    Ok(format!("{}\n", serde_json::to_string_pretty(&out).expect("JSON serialises")))
}

/// The same for a YAML document (one document; its comments are not kept).
pub fn encrypt_yaml(text: &str, recipient: &Recipient) -> Result<String, Error> {
    let value = from_yaml(text)?;
    let out = encrypt_leaves(value, recipient)?;
    serde_norway::to_string(&out)
        .map_err(|e| Error::InvalidValue { key: String::new(), reason: format!("cannot write YAML: {e}") })
}

/// A YAML document as the JSON value it stands for: mappings (a key that
/// is a number becomes its text), sequences, scalars.
pub fn from_yaml(text: &str) -> Result<Value, Error> {
    serde_norway::from_str(text)
        .map_err(|e| Error::InvalidValue { key: String::new(), reason: format!("the file is not YAML: {e}") })
}

/// Every leaf of `value` as `age:BASE64`; tables stay readable, and leaves
/// already encrypted are kept.
fn encrypt_leaves(value: Value, recipient: &Recipient) -> Result<Value, Error> {
    Ok(match value {
        Value::Object(map) if !map.is_empty() => Value::Object(
            map.into_iter()
                .map(|(k, v)| Ok((k, encrypt_leaves(v, recipient)?)))
                .collect::<Result<_, Error>>()?,
        ),
        Value::String(s) if s.starts_with(FILE_PREFIX) => Value::String(s),
        leaf => Value::String(format!("{FILE_PREFIX}{}", encrypt_to(recipient, &leaf)?)),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_new_key_file_is_private_and_opens_again_to_the_same_key() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = Keyring::open(dir.path()).unwrap();
        assert_eq!(ring.recipient().to_string(), again.recipient().to_string());
        let cipher = ring.encrypt(&json!({"a": [1, "x"]})).unwrap();
        assert_eq!(again.decrypt(&cipher).unwrap(), json!({"a": [1, "x"]}));
    }

    #[test]
    fn ciphertext_holds_no_clear_text_and_differs_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let a = ring.encrypt(&json!("hunter2-password")).unwrap();
        let b = ring.encrypt(&json!("hunter2-password")).unwrap();
        assert_ne!(a, b);
        let raw = STANDARD.decode(&a).unwrap();
        assert!(!String::from_utf8_lossy(&raw).contains("hunter2"));
    }

    #[test]
    fn a_rotated_ring_still_opens_old_values_until_it_forgets() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let old = ring.encrypt(&json!(1)).unwrap();
        let rotated = ring.rotated().unwrap();
        assert_ne!(rotated.recipient().to_string(), ring.recipient().to_string());
        assert_eq!(rotated.retired(), 1);
        assert!(!rotated.is_current(&old));
        assert_eq!(Keyring::open(dir.path()).unwrap().decrypt(&old).unwrap(), json!(1));
        let forgot = rotated.forgetting_retired().unwrap();
        let error = Keyring::open(dir.path()).unwrap().decrypt(&old).unwrap_err();
        assert!(matches!(error, Error::Undecryptable { .. }), "{error}");
        assert!(forgot.is_current(&forgot.encrypt(&json!(2)).unwrap()));
    }

    #[test]
    fn a_value_for_another_key_is_refused_with_a_reason() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let cipher = Keyring::open(a.path()).unwrap().encrypt(&json!("x")).unwrap();
        let error = Keyring::open(b.path()).unwrap().decrypt(&cipher).unwrap_err().to_string();
        assert!(error.contains("cannot be decrypted"), "{error}");
        let error = Keyring::open(b.path()).unwrap().decrypt("not base64!").unwrap_err().to_string();
        assert!(error.contains("base64"), "{error}");
    }

    #[test]
    fn encrypting_a_file_keeps_keys_readable_and_leaves_decryptable() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let text = "name = \"shop\"\n[db]\npassword = \"hunter2\"\nport = 5432\n";
        let out = encrypt_toml(text, &ring.recipient()).unwrap();
        assert!(
            out.contains("[db]") && out.contains("password = \"age:") && !out.contains("hunter2"),
            "{out}"
        );
        let table: toml::Table = toml::from_str(&out).unwrap();
        let port = table["db"]["port"].as_str().unwrap().strip_prefix(FILE_PREFIX).unwrap();
        assert_eq!(ring.decrypt(port).unwrap(), json!(5432));
        // Encrypting again leaves encrypted leaves alone.
        assert_eq!(encrypt_toml(&out, &ring.recipient()).unwrap(), out);
        let json_out = encrypt_json(r#"{"a": {"b": true}}"#, &ring.recipient()).unwrap();
        let v: Value = serde_json::from_str(&json_out).unwrap();
        assert_eq!(
            ring.decrypt(v["a"]["b"].as_str().unwrap().strip_prefix(FILE_PREFIX).unwrap()).unwrap(),
            json!(true)
        );
        assert!(encrypt_toml("x = ", &ring.recipient()).unwrap_err().to_string().contains("not TOML"));
    }

    #[test]
    fn a_yaml_file_is_encrypted_leaf_by_leaf_with_its_keys_readable() {
        let dir = tempfile::tempdir().unwrap();
        let ring = Keyring::open(dir.path()).unwrap();
        let text = "db:\n  password: hunter2\n  hosts: [a, b]\nname: shop\n";
        let out = encrypt_yaml(text, &ring.recipient()).unwrap();
        assert!(out.contains("db:") && out.contains("password: age:") && !out.contains("hunter2"), "{out}");
        let v = from_yaml(&out).unwrap();
        let open = |v: &Value| ring.decrypt(v.as_str().unwrap().strip_prefix(FILE_PREFIX).unwrap()).unwrap();
        assert_eq!(open(&v["db"]["password"]), json!("hunter2"));
        assert_eq!(open(&v["db"]["hosts"]), json!(["a", "b"]));
        assert_eq!(encrypt_yaml(&out, &ring.recipient()).unwrap(), out, "encrypted leaves are kept");
        let error = encrypt_yaml("a: [1\n", &ring.recipient()).unwrap_err().to_string();
        assert!(error.contains("not YAML"), "{error}");
    }
}
