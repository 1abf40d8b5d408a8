//! Puts, gets, deletes and ranges: values and revision bookkeeping.

use crate::support::{self, Backend};

use std::time::Duration;

use hearth_store::{Error, KeyValue, Op, Txn, limits};

/// One step of a bookkeeping script on a single key.
enum Step {
    Put(&'static str),
    Delete,
}

/// After a step: the store's revision, and the key as
/// `(value, create_revision, mod_revision, version)` or `None` if missing.
type Expect = (u64, Option<(&'static str, u64, u64, u64)>);

/// Runs `script` on key `k`, checking the revision and the key after each
/// step.
async fn check(backend: Backend, script: &[(Step, Expect)]) {
    let store = backend.store().await;
    let r = |n| store.r(n);
    for (i, (step, (revision, kv))) in script.iter().enumerate() {
        let returned = match step {
            Step::Put(value) => store.put("k", value.as_bytes().to_vec(), None).await.unwrap(),
            Step::Delete => store.delete("k").await.unwrap().0,
        };
        assert_eq!(returned, r(*revision), "step {i}: revision returned");
        assert_eq!(store.revision().await.unwrap(), r(*revision), "step {i}: current revision");
        let got = store.get("k").await.unwrap();
        let expected = kv.map(|(value, create_revision, mod_revision, version)| KeyValue {
            key: "k".into(),
            value: value.as_bytes().to_vec(),
            create_revision: r(create_revision),
            mod_revision: r(mod_revision),
            version,
            lease: None,
        });
        assert_eq!(got, expected, "step {i}: key after the step");
    }
}

support::on_both_backends!(
    put_get_delete_bookkeeping,
    delete_reports_whether_the_key_existed,
    other_keys_keep_their_bookkeeping,
    range_returns_the_prefix_in_key_order_at_a_revision,
    empty_values_are_values,
    limits_are_inclusive,
    invalid_requests_are_refused_without_a_write,
);

/// Revisions in the scripts count from the empty store (0), whatever the
/// backend's own first revision.
async fn put_get_delete_bookkeeping(backend: Backend) {
    use Step::*;
    check(
        backend,
        &[
            (Put("1"), (1, Some(("1", 1, 1, 1)))),
            (Put("2"), (2, Some(("2", 1, 2, 2)))),
            (Put("2"), (3, Some(("2", 1, 3, 3)))),
            (Delete, (4, None)),
            // Deleting a missing key changes nothing, not even the revision.
            (Delete, (4, None)),
            // A re-created key starts over: new create revision, version 1.
            (Put("3"), (5, Some(("3", 5, 5, 1)))),
        ],
    )
    .await;
}

async fn delete_reports_whether_the_key_existed(backend: Backend) {
    let store = backend.store().await;
    assert_eq!(store.delete("nope").await.unwrap(), (store.r(0), false));
    store.put("k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(store.delete("k").await.unwrap(), (store.r(2), true));
    assert_eq!(store.delete("k").await.unwrap(), (store.r(2), false));
}

async fn other_keys_keep_their_bookkeeping(backend: Backend) {
    let store = backend.store().await;
    store.put("a", b"1".to_vec(), None).await.unwrap();
    store.put("b", b"1".to_vec(), None).await.unwrap();
    store.put("a", b"2".to_vec(), None).await.unwrap();
    let b = store.get("b").await.unwrap().unwrap();
    assert_eq!((b.create_revision, b.mod_revision, b.version), (store.r(2), store.r(2), 1));
    let a = store.get("a").await.unwrap().unwrap();
    assert_eq!((a.create_revision, a.mod_revision, a.version), (store.r(1), store.r(3), 2));
}

async fn range_returns_the_prefix_in_key_order_at_a_revision(backend: Backend) {
    let store = backend.store().await;
    for key in ["app/b", "app/a", "apq", "ap", "app/c/d", "b"] {
        store.put(key, key.as_bytes().to_vec(), None).await.unwrap();
    }
    store.delete("app/c/d").await.unwrap();

    let range = store.range("app/").await.unwrap();
    let keys: Vec<_> = range.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["app/a", "app/b"]);
    assert_eq!(range.revision, store.r(7));
    assert_eq!(range.kvs[0].value, b"app/a");

    let all = store.range("").await.unwrap();
    let keys: Vec<_> = all.kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["ap", "app/a", "app/b", "apq", "b"]);

    assert!(store.range("zzz").await.unwrap().kvs.is_empty());
}

async fn empty_values_are_values(backend: Backend) {
    let store = backend.store().await;
    store.put("k", Vec::new(), None).await.unwrap();
    assert_eq!(store.get("k").await.unwrap().unwrap().value, b"");
}

async fn limits_are_inclusive(backend: Backend) {
    let store = backend.store().await;
    let key = "k".repeat(limits::MAX_KEY_LEN);
    store.put(&key, vec![7; limits::MAX_VALUE_LEN], None).await.unwrap();
    assert_eq!(store.get(&key).await.unwrap().unwrap().value.len(), limits::MAX_VALUE_LEN);
}

/// What a request should fail with, by variant name.
fn variant(error: &Error) -> &'static str {
    match error {
        Error::InvalidKey { .. } => "InvalidKey",
        Error::ValueTooLarge { .. } => "ValueTooLarge",
        Error::InvalidTtl(_) => "InvalidTtl",
        other => panic!("unexpected error {other:?}"),
    }
}

async fn invalid_requests_are_refused_without_a_write(backend: Backend) {
    let store = backend.store().await;
    let long_key = "k".repeat(limits::MAX_KEY_LEN + 1);
    let big = vec![0; limits::MAX_VALUE_LEN + 1];
    let put =
        |key: &str, value: Vec<u8>| Txn::new().and_then(Op::Put { key: key.into(), value, lease: None });

    let cases: Vec<(&str, Result<(), Error>, &str)> = vec![
        ("put empty key", store.put("", b"v".to_vec(), None).await.map(drop), "InvalidKey"),
        ("put long key", store.put(&long_key, b"v".to_vec(), None).await.map(drop), "InvalidKey"),
        ("put big value", store.put("k", big.clone(), None).await.map(drop), "ValueTooLarge"),
        ("get empty key", store.get("").await.map(drop), "InvalidKey"),
        ("delete empty key", store.delete("").await.map(drop), "InvalidKey"),
        ("range long prefix", store.range(&long_key).await.map(drop), "InvalidKey"),
        ("watch long prefix", store.watch(&long_key, 0).await.map(drop), "InvalidKey"),
        ("txn big value", store.txn(put("k", big.clone())).await.map(drop), "ValueTooLarge"),
        // Checked in the branch that does not run, too.
        (
            "txn failure branch",
            store.txn(Txn::new().or_else(Op::Delete { key: String::new() })).await.map(drop),
            "InvalidKey",
        ),
        (
            "txn compare key",
            store.txn(Txn::new().when(hearth_store::Compare::missing(""))).await.map(drop),
            "InvalidKey",
        ),
        ("lease too short", store.lease_grant(Duration::from_millis(999)).await.map(drop), "InvalidTtl"),
        (
            "lease too long",
            store.lease_grant(limits::MAX_LEASE_TTL + Duration::from_secs(1)).await.map(drop),
            "InvalidTtl",
        ),
    ];
    for (name, result, expected) in cases {
        let error = result.expect_err(name);
        assert_eq!(variant(&error), expected, "{name}: {error}");
    }
    assert_eq!(store.revision().await.unwrap(), store.r(0));
    assert!(store.leases().await.unwrap().is_empty());
}
