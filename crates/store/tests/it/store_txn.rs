//! Compare-and-swap transactions.

use crate::support::{self, Backend};

use std::sync::Arc;

use hearth_store::{Compare, CompareOp, CompareTarget, EventKind, Op, OpResponse, Txn, TxnResponse};

support::on_both_backends!(
    comparisons,
    cas_runs_success_or_failure,
    empty_transaction_succeeds_without_a_revision,
    all_writes_of_a_transaction_share_one_revision,
    delete_prefix_deletes_exactly_the_prefix,
    range_op_reads_inside_the_transaction,
    unknown_lease_in_the_branch_that_runs_refuses_the_whole_transaction,
    concurrent_cas_increments_lose_nothing,
);

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.as_bytes().to_vec(), lease: None }
}

/// Evaluates each comparison as the only one of a transaction against a
/// store holding `k = "v2"` (created at revision 1, modified at 2, version
/// 2) and no key `m`.
async fn comparisons(backend: Backend) {
    use CompareOp::*;
    use CompareTarget::*;

    let store = backend.store().await;
    store.put("k", b"v1".to_vec(), None).await.unwrap();
    store.put("k", b"v2".to_vec(), None).await.unwrap();

    let value = |v: &str| Value(v.as_bytes().to_vec());
    let cases = [
        ("k", Equal, ModRevision(store.r(2)), true),
        ("k", Equal, ModRevision(store.r(1)), false),
        ("k", NotEqual, ModRevision(store.r(1)), true),
        ("k", Less, ModRevision(store.r(3)), true),
        ("k", Less, ModRevision(store.r(2)), false),
        ("k", Greater, ModRevision(store.r(1)), true),
        ("k", Equal, CreateRevision(store.r(1)), true),
        ("k", Greater, CreateRevision(store.r(1)), false),
        ("k", Equal, Version(2), true),
        ("k", Equal, Version(0), false),
        ("k", Greater, Version(0), true),
        ("k", Equal, value("v2"), true),
        ("k", Equal, value("v1"), false),
        ("k", NotEqual, value("v1"), true),
        ("k", Less, value("v3"), true),
        ("k", Greater, value("v10"), true),
        ("k", Greater, value("v2"), false),
        // A missing key: revisions and version 0, empty value.
        ("m", Equal, Version(0), true),
        ("m", Equal, ModRevision(0), true),
        ("m", Equal, CreateRevision(0), true),
        ("m", Equal, value(""), true),
        ("m", Less, value("a"), true),
        ("m", Greater, Version(0), false),
    ];
    for (key, op, target, expected) in cases {
        let compare = Compare::new(key, op, target);
        let response = store.txn(Txn::new().when(compare.clone())).await.unwrap();
        assert_eq!(response.succeeded, expected, "{compare:?}");
    }
    // Nothing above wrote anything.
    assert_eq!(store.revision().await.unwrap(), store.r(2));
}

async fn cas_runs_success_or_failure(backend: Backend) {
    let store = backend.store().await;
    let create = Txn::new()
        .when(Compare::missing("lock"))
        .and_then(put("lock", "a"))
        .or_else(Op::Get { key: "lock".into() });

    let first = store.txn(create.clone()).await.unwrap();
    assert!(first.succeeded);
    assert_eq!(first.revision, store.r(1));
    assert_eq!(first.responses, [OpResponse::Put { prev: None }]);

    // The second try takes the failure branch, which only reads: the
    // revision stays where it was.
    let second = store.txn(create).await.unwrap();
    assert!(!second.succeeded);
    assert_eq!(second.revision, store.r(1));
    let [OpResponse::Get { kv: Some(kv) }] = second.responses.as_slice() else {
        panic!("unexpected responses {:?}", second.responses);
    };
    assert_eq!((kv.value.as_slice(), kv.mod_revision), (&b"a"[..], store.r(1)));

    // A failure branch that writes advances the revision.
    let swap = Txn::new()
        .when(Compare::mod_revision("lock", 99))
        .and_then(put("lock", "never"))
        .or_else(put("lock", "b"));
    let third = store.txn(swap).await.unwrap();
    assert!(!third.succeeded);
    assert_eq!(third.revision, store.r(2));
    assert_eq!(store.get("lock").await.unwrap().unwrap().value, b"b");
}

async fn empty_transaction_succeeds_without_a_revision(backend: Backend) {
    let store = backend.store().await;
    let response = store.txn(Txn::new()).await.unwrap();
    assert_eq!(response, TxnResponse { succeeded: true, revision: store.r(0), responses: vec![] });
}

async fn all_writes_of_a_transaction_share_one_revision(backend: Backend) {
    let store = backend.store().await;
    store.put("a", b"old".to_vec(), None).await.unwrap();
    store.put("c", b"old".to_vec(), None).await.unwrap();
    let mut watch = store.watch("", store.r(3)).await.unwrap();

    let txn = Txn::new()
        .and_then(put("a", "new"))
        .and_then(put("b", "1"))
        .and_then(Op::Delete { key: "c".into() })
        .and_then(Op::Delete { key: "missing".into() })
        .and_then(Op::Get { key: "b".into() });
    let response = store.txn(txn).await.unwrap();
    assert_eq!(response.revision, store.r(3));
    let [
        OpResponse::Put { prev: Some(prev) },
        OpResponse::Put { prev: None },
        OpResponse::Delete { deleted: 1 },
        OpResponse::Delete { deleted: 0 },
        OpResponse::Get { kv: Some(b) },
    ] = response.responses.as_slice()
    else {
        panic!("unexpected responses {:?}", response.responses);
    };
    assert_eq!(prev.value, b"old");
    // Later ops see the effects of earlier ones.
    assert_eq!((b.value.as_slice(), b.mod_revision), (&b"1"[..], store.r(3)));

    let events: Vec<_> = support::take(&mut watch, 3).await.iter().map(support::brief).collect();
    assert_eq!(
        events,
        [
            (store.r(3), EventKind::Put, "a".into(), "new".into()),
            (store.r(3), EventKind::Put, "b".into(), "1".into()),
            (store.r(3), EventKind::Delete, "c".into(), String::new()),
        ]
    );
    assert_eq!(store.revision().await.unwrap(), store.r(3));
}

/// A put then a delete of one key in one transaction.
fn write_twice() -> Txn {
    Txn::new().and_then(put("a", "new")).and_then(put("b", "1")).and_then(Op::Delete { key: "a".into() })
}

/// The embedded store applies a transaction's writes to one key in order.
#[tokio::test]
async fn redb_applies_two_writes_to_one_key_in_order() {
    let store = Backend::Redb.store().await;
    store.put("a", b"old".to_vec(), None).await.unwrap();
    let mut watch = store.watch("", 2).await.unwrap();
    let response = store.txn(write_twice()).await.unwrap();
    assert_eq!(response.revision, 2);
    let events: Vec<_> = support::take(&mut watch, 3).await.iter().map(support::brief).collect();
    assert_eq!(
        events,
        [
            (2, EventKind::Put, "a".into(), "new".into()),
            (2, EventKind::Put, "b".into(), "1".into()),
            (2, EventKind::Delete, "a".into(), String::new()),
        ]
    );
}

/// etcd refuses a transaction that writes one key twice: the error says
/// so, and nothing is written.
#[tokio::test]
async fn etcd_refuses_two_writes_to_one_key_and_writes_nothing() {
    let store = Backend::Etcd.store().await;
    store.put("a", b"old".to_vec(), None).await.unwrap();
    let error = store.txn(write_twice()).await.unwrap_err();
    assert!(matches!(error, hearth_store::Error::Refused { .. }), "{error}");
    assert!(error.to_string().contains("write each key once per transaction"), "{error}");
    assert_eq!(store.revision().await.unwrap(), store.r(1));
    assert_eq!(store.get("b").await.unwrap(), None);
}

async fn delete_prefix_deletes_exactly_the_prefix(backend: Backend) {
    let store = backend.store().await;
    for key in ["job/1", "job/2", "job/2/x", "jobs", "other"] {
        store.put(key, b"v".to_vec(), None).await.unwrap();
    }
    let response = store.txn(Txn::new().and_then(Op::DeletePrefix { prefix: "job/".into() })).await.unwrap();
    assert_eq!(response.responses, [OpResponse::Delete { deleted: 3 }]);
    assert_eq!(response.revision, store.r(6));
    let left: Vec<_> = store.range("").await.unwrap().kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(left, ["jobs", "other"]);

    // Nothing left to delete: no new revision.
    let again = store.txn(Txn::new().and_then(Op::DeletePrefix { prefix: "job/".into() })).await.unwrap();
    assert_eq!(again.responses, [OpResponse::Delete { deleted: 0 }]);
    assert_eq!(again.revision, store.r(6));
}

async fn range_op_reads_inside_the_transaction(backend: Backend) {
    let store = backend.store().await;
    store.put("p/a", b"1".to_vec(), None).await.unwrap();
    let response = store
        .txn(Txn::new().and_then(put("p/b", "2")).and_then(Op::Range { prefix: "p/".into() }))
        .await
        .unwrap();
    let [_, OpResponse::Range { kvs }] = response.responses.as_slice() else {
        panic!("unexpected responses {:?}", response.responses);
    };
    let keys: Vec<_> = kvs.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["p/a", "p/b"]);
}

async fn unknown_lease_in_the_branch_that_runs_refuses_the_whole_transaction(backend: Backend) {
    let store = backend.store().await;
    let txn = Txn::new().and_then(put("a", "1")).and_then(Op::Put {
        key: "b".into(),
        value: b"2".to_vec(),
        lease: Some(42),
    });
    let error = store.txn(txn).await.unwrap_err();
    assert!(matches!(error, hearth_store::Error::LeaseNotFound(42)), "{error}");
    assert_eq!(store.get("a").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), store.r(0));

    // In the branch that does not run, it does not matter.
    let txn = Txn::new().and_then(put("a", "1")).or_else(Op::Put {
        key: "b".into(),
        value: b"2".to_vec(),
        lease: Some(42),
    });
    assert!(store.txn(txn).await.unwrap().succeeded);
}

/// Many clients increment one counter with CAS. Requests that land in the
/// same group commit must each see the writes of those before them, or two
/// would succeed against the same revision and an increment would be lost.
async fn concurrent_cas_increments_lose_nothing(backend: Backend) {
    let test = backend.store().await;
    let store = test.arc();
    store.put("counter", b"0".to_vec(), None).await.unwrap();

    let clients = 8;
    let increments = 15;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut conflicts = 0;
            let mut done = 0;
            while done < increments {
                let kv = store.get("counter").await.unwrap().unwrap();
                let n: u64 = std::str::from_utf8(&kv.value).unwrap().parse().unwrap();
                let txn = Txn::new()
                    .when(Compare::mod_revision("counter", kv.mod_revision))
                    .and_then(put("counter", &(n + 1).to_string()));
                if store.txn(txn).await.unwrap().succeeded {
                    done += 1;
                } else {
                    conflicts += 1;
                }
            }
            conflicts
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let kv = store.get("counter").await.unwrap().unwrap();
    assert_eq!(kv.value, (clients * increments).to_string().as_bytes());
    assert_eq!(kv.version, 1 + clients * increments);
    assert_eq!(store.revision().await.unwrap(), test.r(1 + clients * increments));
}
