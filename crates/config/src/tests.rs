//! The [`Config`] handle against a real embedded store.

use std::sync::Arc;
use std::time::Duration;

use hearth_store::Store;
use serde_json::json;

use crate::{Base, Config, Error, HistoryChange, Key, Layer, Scope};

struct Fixture {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    store: Arc<dyn Store>,
    config: Config,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store: Arc<dyn Store> =
        Arc::new(hearth_store::redb::RedbStore::open(&path, Default::default()).unwrap());
    let config = Config::open(store.clone(), dir.path()).unwrap();
    Fixture { _dir: dir, path, store, config }
}

fn key(k: &str) -> Key {
    Key::parse(k).unwrap()
}

fn app(name: &str) -> Scope {
    Scope::App(name.into())
}

#[tokio::test]
async fn a_scope_sees_files_then_global_then_its_own_layer_then_override() {
    let f = fixture();
    let c = &f.config;
    c.import(&[("base.toml".into(), "[db]\nhost = \"files\"\nport = 1\npool = 5\n".into())]).await.unwrap();
    c.set(&Layer::Global, &key("db.port"), json!(2), false).await.unwrap();
    c.set(&Layer::of(app("shop")), &key("db.host"), json!("scoped"), false).await.unwrap();
    c.set(&Layer::Override, &key("db.pool"), json!(9), false).await.unwrap();
    let shop = c.explain(&app("shop"), None).await.unwrap();
    assert_eq!(shop.tree(), json!({"db": {"host": "scoped", "port": 2, "pool": 9}}));
    let from: Vec<(String, String)> =
        shop.leaves.iter().map(|(k, l)| (k.to_string(), l.layer.clone())).collect();
    assert_eq!(
        from,
        vec![
            ("db.host".into(), "app:shop".into()),
            ("db.pool".into(), "override".into()),
            ("db.port".into(), "global".into())
        ]
    );
    // Another app does not see shop's layer.
    let other = c.resolve(&app("blog"), None).await.unwrap();
    assert_eq!(other.at("db.host"), Some(json!("files")));
    assert_eq!(shop.leaves[&key("db.host")].source, None);
    assert_eq!(other.leaves[&key("db.host")].source.as_deref(), Some("base.toml"));
}

#[tokio::test]
async fn a_manifest_sits_above_files_and_below_global() {
    let f = fixture();
    let c = &f.config;
    c.import(&[("a.toml".into(), "greeting = \"files\"\nfarewell = \"files\"\n".into())]).await.unwrap();
    c.set(&Layer::Global, &key("farewell"), json!("global"), false).await.unwrap();
    let manifest = [("greeting".to_string(), "manifest".to_string()), ("farewell".into(), "manifest".into())];
    let base = Base::from_strings("hearth.toml", manifest.iter().map(|(k, v)| (k, v))).unwrap();
    let resolved = c.resolve(&app("shop"), Some(&base)).await.unwrap();
    assert_eq!(resolved.tree(), json!({"greeting": "manifest", "farewell": "global"}));
    assert_eq!(resolved.leaves[&key("greeting")].layer, "hearth.toml");
}

#[tokio::test]
async fn setting_a_table_replaces_what_was_under_its_key_in_that_layer() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::Global, &key("db"), json!({"host": "a", "port": 1}), false).await.unwrap();
    c.set(&Layer::Global, &key("db"), json!({"host": "b"}), false).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().tree(), json!({"db": {"host": "b"}}));
    c.set(&Layer::Global, &key("db.tls.on"), json!(true), false).await.unwrap();
    c.set(&Layer::Global, &key("db"), json!("off"), false).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().tree(), json!({"db": "off"}));
    c.set(&Layer::Global, &key("db.host"), json!("c"), false).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().tree(), json!({"db": {"host": "c"}}));
}

#[tokio::test]
async fn removing_takes_the_key_and_what_is_under_it_and_a_missing_key_is_not_found() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::Global, &key("db"), json!({"host": "a", "port": 1}), false).await.unwrap();
    c.set(&Layer::Global, &key("dbx"), json!(1), false).await.unwrap();
    c.remove(&Layer::Global, &key("db")).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().tree(), json!({"dbx": 1}));
    let error = c.remove(&Layer::Global, &key("db")).await.unwrap_err();
    assert!(matches!(error, Error::NotFound { .. }), "{error}");
}

#[tokio::test]
async fn a_secret_is_never_in_the_store_in_clear_and_is_revealed_only_by_resolve() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::of(app("shop")), &key("db.password"), json!("hunter2-sekrit"), true).await.unwrap();
    c.rollback(&Layer::of(app("shop")), &key("db"), 0).await.unwrap();
    c.set(&Layer::of(app("shop")), &key("db.password"), json!("hunter2-sekrit"), true).await.unwrap();
    let explained = c.explain(&app("shop"), None).await.unwrap();
    assert_eq!(explained.at("db.password"), Some(json!("(secret)")));
    assert!(explained.leaves[&key("db.password")].secret);
    let listed = c.entries(None, "").await.unwrap();
    assert_eq!(listed[0].value, json!("(secret)"));
    let history = c.history("", 10).await.unwrap();
    assert!(format!("{history:?}").contains("(secret)") && !format!("{history:?}").contains("hunter2"));
    let resolved = c.resolve(&app("shop"), None).await.unwrap();
    assert_eq!(resolved.flat()["db.password"], "hunter2-sekrit");
    // Nothing the store holds, at any revision, has it in clear.
    let all = f.store.range("").await.unwrap();
    for kv in all.kvs {
        assert!(!String::from_utf8_lossy(&kv.value).contains("hunter2"), "{}", kv.key);
    }
    drop(f.store);
    drop(f.config);
    let raw = std::fs::read(&f.path).unwrap();
    assert!(!raw.windows(7).any(|w| w == b"hunter2"), "the redb file holds the secret in clear");
}

#[tokio::test]
async fn a_rekey_encrypts_every_secret_again_and_forgetting_drops_the_old_key() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::Global, &key("token"), json!("t0"), true).await.unwrap();
    let (old, _) = c.recipient();
    let (new, count) = c.rekey(true).await.unwrap();
    assert_ne!(old, new);
    assert_eq!(count, 1);
    assert_eq!(c.recipient(), (new, 0));
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().flat()["token"], "t0");
}

#[tokio::test]
async fn imported_files_keep_secrets_encrypted_and_refuse_one_for_another_key() {
    let f = fixture();
    let c = &f.config;
    let (recipient, _) = c.recipient();
    let recipient = crate::secret::parse_recipient(&recipient).unwrap();
    let file = crate::secret::encrypt_toml("[db]\npassword = \"p4ss\"\n", &recipient).unwrap();
    c.import(&[("secrets.toml".into(), file)]).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().flat()["db.password"], "p4ss");
    assert!(c.entries(Some(&Layer::Files), "").await.unwrap()[0].secret);
    let other = tempfile::tempdir().unwrap();
    let foreign = crate::secret::Keyring::open(other.path()).unwrap();
    let file = crate::secret::encrypt_toml("x = 1\n", &foreign.recipient()).unwrap();
    let error = c.import(&[("x.toml".into(), file)]).await.unwrap_err().to_string();
    assert!(error.contains("x.toml") && error.contains("cannot be decrypted"), "{error}");
    let error = c.import(&[("bad.toml".into(), "x = ".into())]).await.unwrap_err().to_string();
    assert!(error.contains("bad.toml") && error.contains("not TOML"), "{error}");
    // A refused import changed nothing.
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().flat()["db.password"], "p4ss");
    // YAML, encrypted or not.
    let file = crate::secret::encrypt_yaml("db:\n  token: t0k\n", &recipient).unwrap();
    c.import(&[("a.yaml".into(), "db:\n  pool: 3\n".into()), ("b.yml".into(), file)]).await.unwrap();
    let flat = c.resolve(&Scope::Global, None).await.unwrap().flat();
    assert_eq!((flat["db.pool"].as_str(), flat["db.token"].as_str()), ("3", "t0k"));
    let error = c.import(&[("bad.yaml".into(), "a: [1\n".into())]).await.unwrap_err().to_string();
    assert!(error.contains("bad.yaml") && error.contains("not YAML"), "{error}");
}

#[tokio::test]
async fn import_replaces_the_files_layer_and_a_later_file_wins() {
    let f = fixture();
    let c = &f.config;
    c.import(&[("a.toml".into(), "x = 1\ny = 1\n".into())]).await.unwrap();
    c.import(&[
        ("a.toml".into(), "x = 2\n".into()),
        ("b.json".into(), r#"{"x": 3, "z": {"w": true}}"#.into()),
    ])
    .await
    .unwrap();
    let r = c.explain(&Scope::Global, None).await.unwrap();
    assert_eq!(r.tree(), json!({"x": 3, "z": {"w": true}}));
    assert_eq!(r.leaves[&key("x")].source.as_deref(), Some("b.json"));
}

#[tokio::test]
async fn a_change_that_breaks_a_schema_is_refused_with_the_key_and_the_reason_and_changes_nothing() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::Global, &key("db.port"), json!(5432), false).await.unwrap();
    let schema = json!({"type": "object", "properties": {"port": {"type": "integer", "maximum": 65535}}});
    c.set_schema("db", schema).await.unwrap();
    let before = f.store.revision().await.unwrap();
    let error = c.set(&Layer::of(app("shop")), &key("db.port"), json!("high"), false).await.unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::SchemaViolation { .. }), "{text}");
    assert!(text.contains("db.port") && text.contains("app:shop") && text.contains("integer"), "{text}");
    assert_eq!(f.store.revision().await.unwrap(), before, "a refused change wrote nothing");
    // A change to a shared layer is checked in every scope's view.
    c.set(&Layer::of(app("shop")), &key("db.host"), json!("h"), false).await.unwrap();
    let error = c.set(&Layer::Global, &key("db.port"), json!(70000), false).await.unwrap_err();
    assert!(error.to_string().contains("70000"), "{error}");
    // A schema that what is set already breaks is refused too.
    let error = c.set_schema("db", json!({"required": ["user"]})).await.unwrap_err();
    assert!(error.to_string().contains("user"), "{error}");
    c.remove_schema("db").await.unwrap();
    c.set(&Layer::Global, &key("db.port"), json!("anything"), false).await.unwrap();
}

#[tokio::test]
async fn a_secret_is_checked_against_its_schema_in_clear_but_never_reported_in_clear() {
    let f = fixture();
    let c = &f.config;
    c.set_schema("token", json!({"type": "string", "pattern": "^long", "minLength": 8})).await.unwrap();
    let error =
        c.set(&Layer::Global, &key("token"), json!("shorty-sekrit"), true).await.unwrap_err().to_string();
    assert!(error.contains("token") && error.contains("pattern"), "{error}");
    assert!(!error.contains("shorty-sekrit"), "{error}");
    // A schema set later over a secret already there says no more.
    c.set(&Layer::Global, &key("other"), json!("other-sekrit"), true).await.unwrap();
    let error = c.set_schema("other", json!({"pattern": "^x"})).await.unwrap_err().to_string();
    assert!(error.contains("other") && !error.contains("other-sekrit"), "{error}");
    c.set(&Layer::Global, &key("token"), json!("long-enough"), true).await.unwrap();
}

#[tokio::test]
async fn history_diff_and_rollback_by_revision() {
    let f = fixture();
    let c = &f.config;
    let r1 = c.set(&Layer::Global, &key("greeting"), json!("hello"), false).await.unwrap();
    let r2 = c.set(&Layer::Global, &key("greeting"), json!("hi"), false).await.unwrap();
    c.set(&Layer::Global, &key("other"), json!(1), false).await.unwrap();
    let history = c.history("greeting", 10).await.unwrap();
    assert_eq!(history.iter().map(|h| h.revision).collect::<Vec<_>>(), vec![r2, r1]);
    let HistoryChange::Value(change) = &history[0].changes[0] else { panic!() };
    assert_eq!((change.before.clone(), change.after.clone()), (Some(json!("hello")), Some(json!("hi"))));
    let (_, diff) = c.diff(r1, None).await.unwrap();
    let keys: Vec<&str> = diff.iter().map(|d| d.key.as_str()).collect();
    assert_eq!(keys, vec!["greeting", "other"]);
    let (_, diff) = c.diff(r1, Some(r2)).await.unwrap();
    assert_eq!(diff.len(), 1);
    let r4 = c.rollback(&Layer::Global, &key("greeting"), r1).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().at("greeting"), Some(json!("hello")));
    assert!(r4 > r2);
    // Back to before it existed: removed.
    c.rollback(&Layer::Global, &key("greeting"), r1 - 1).await.unwrap();
    assert_eq!(c.resolve(&Scope::Global, None).await.unwrap().at("greeting"), None);
    let error = c.diff(r4 + 100, None).await.unwrap_err();
    assert!(matches!(error, Error::FutureRevision { .. }), "{error}");
}

#[tokio::test]
async fn concurrent_writers_each_land_once_in_one_order() {
    let f = fixture();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = f.config.clone();
        tasks.push(tokio::spawn(async move {
            c.set(&Layer::Global, &key(&format!("k{i}")), json!(i), false).await
        }));
    }
    let mut revisions = Vec::new();
    for t in tasks {
        revisions.push(t.await.unwrap().unwrap());
    }
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 8);
    assert_eq!(f.config.history("", 100).await.unwrap().len(), 8);
}

#[tokio::test]
async fn consumers_are_told_at_once_and_then_at_most_once_per_interval() {
    let f = fixture();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let mut changes = f.config.changes();
    let task = tokio::spawn(f.config.clone().run(stop));
    let r = f.config.set(&Layer::Global, &key("a"), json!(1), false).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|seen| *seen >= r)).await.unwrap().unwrap();
    // A burst: every change is told (the last revision arrives), in at
    // most one bump per interval (plus the leading and trailing ones).
    let counter = tokio::spawn({
        let mut changes = changes.clone();
        async move {
            let mut wakes = 0u32;
            while changes.changed().await.is_ok() {
                wakes += 1;
            }
            wakes
        }
    });
    let started = std::time::Instant::now();
    let mut last = 0;
    for i in 0..40 {
        last = f.config.set(&Layer::Global, &key("a"), json!(i + 2), false).await.unwrap();
    }
    let burst = started.elapsed();
    tokio::time::timeout(Duration::from_secs(5), changes.wait_for(|seen| *seen >= last))
        .await
        .unwrap()
        .unwrap();
    stop_tx.send(true).unwrap();
    task.await.unwrap();
    drop(f);
    let wakes = counter.await.unwrap();
    let allowed = (burst.as_millis() / crate::THROTTLE.as_millis()) as u32 + 2;
    assert!(wakes <= allowed, "{wakes} bumps for 40 changes in {burst:?} (at most {allowed})");
}

#[tokio::test]
async fn rekeys_and_secret_writes_at_once_leave_every_secret_readable() {
    let f = fixture();
    let c = &f.config;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            c.set(&Layer::Global, &key(&format!("s{i}")), json!(format!("v{i}")), true).await.map(drop)
        }));
        let c2 = f.config.clone();
        tasks.push(tokio::spawn(async move { c2.rekey(i % 2 == 1).await.map(drop) }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    c.rekey(true).await.unwrap();
    let flat = c.resolve(&Scope::Global, None).await.unwrap().flat();
    for i in 0..6 {
        assert_eq!(flat[&format!("s{i}")], format!("v{i}"));
    }
    // And from the key file alone, as after a restart.
    let again = Config::open(f.store.clone(), f.path.parent().unwrap()).unwrap();
    assert_eq!(again.resolve(&Scope::Global, None).await.unwrap().flat().len(), 6);
}

#[tokio::test]
async fn a_rollback_under_a_value_removes_the_value_above_it() {
    let f = fixture();
    let c = &f.config;
    let r = c.set(&Layer::Global, &key("db.host"), json!("h"), false).await.unwrap();
    c.set(&Layer::Global, &key("db"), json!("off"), false).await.unwrap();
    c.rollback(&Layer::Global, &key("db.host"), r).await.unwrap();
    let entries: Vec<String> = c.entries(None, "").await.unwrap().iter().map(|e| e.key.to_string()).collect();
    assert_eq!(entries, vec!["db.host"]);
}

#[tokio::test]
async fn importing_the_same_files_again_changes_nothing_and_succeeds() {
    let f = fixture();
    let files = [("a.toml".to_string(), "x = 1\n".to_string())];
    let r = f.config.import(&files).await.unwrap();
    assert_eq!(f.config.import(&files).await.unwrap(), r);
    assert_eq!(f.config.history("", 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn bad_input_names_the_field_and_changes_nothing() {
    let f = fixture();
    let c = &f.config;
    let error = c.set(&Layer::Global, &key("a"), json!({"b": null}), false).await.unwrap_err();
    assert!(error.to_string().contains("a.b"), "{error}");
    let error = c.set(&Layer::Global, &key("a"), json!({"bad key": 1}), false).await.unwrap_err();
    assert!(error.to_string().contains("bad key"), "{error}");
    let error = c.set_schema("a", json!({"type": 7})).await.unwrap_err();
    assert!(matches!(error, Error::InvalidSchema { .. }), "{error}");
    assert_eq!(c.entries(None, "").await.unwrap(), vec![]);
    assert!(c.history("", 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_service_machine_reads_its_service_then_its_own_layer() {
    let f = fixture();
    let c = &f.config;
    c.set(&Layer::Global, &key("a"), json!("global"), false).await.unwrap();
    c.set(&Layer::of(Scope::Service("web".into())), &key("a"), json!("service"), false).await.unwrap();
    c.set(&Layer::of(Scope::Service("web".into())), &key("b"), json!("service"), false).await.unwrap();
    c.set(&Layer::of(Scope::Machine("web-1".into())), &key("b"), json!("machine"), false).await.unwrap();
    let scopes = [Scope::Service("web".into()), Scope::Machine("web-1".into())];
    let r = c.resolve_nested(&scopes).await.unwrap();
    assert_eq!(r.tree(), json!({"a": "service", "b": "machine"}));
    assert_eq!(r.scope, Scope::Machine("web-1".into()));
}

#[tokio::test]
async fn a_sealed_value_opens_after_a_rekey_but_not_after_forgetting_or_with_another_key() {
    let f = fixture();
    let c = &f.config;
    let sealed = c.seal(&json!({"token": "hunter2-sekrit"})).unwrap();
    assert!(!sealed.contains("hunter2"), "{sealed}");
    assert_eq!(c.open_sealed(&sealed).unwrap(), json!({"token": "hunter2-sekrit"}));
    c.rekey(false).await.unwrap();
    assert_eq!(c.open_sealed(&sealed).unwrap(), json!({"token": "hunter2-sekrit"}));
    c.rekey(true).await.unwrap();
    let error = c.open_sealed(&sealed).unwrap_err();
    assert!(matches!(error, Error::Undecryptable { .. }), "{error}");
    let other = fixture();
    assert!(matches!(
        c.open_sealed(&other.config.seal(&json!(1)).unwrap()),
        Err(Error::Undecryptable { .. })
    ));
}

#[test]
fn hosts_starting_at_once_on_one_key_file_all_take_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.key");
    let recipients: Vec<String> = std::thread::scope(|scope| {
        let opened: Vec<_> = (0..8)
            .map(|_| {
                scope.spawn(|| crate::secret::Keyring::open_file(&path).unwrap().recipient().to_string())
            })
            .collect();
        opened.into_iter().map(|t| t.join().unwrap()).collect()
    });
    assert!(recipients.iter().all(|r| *r == recipients[0]), "{recipients:?}");
    let again = crate::secret::Keyring::open_file(&path).unwrap().recipient().to_string();
    assert_eq!(again, recipients[0], "the file holds the key they took");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
}
