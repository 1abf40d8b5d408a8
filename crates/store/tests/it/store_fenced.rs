//! A leader's writes through a `Fenced` store: made while its key stands
//! with the create revision it was elected with, refused (and nothing
//! changed) once it does not.

use crate::support::{self, Backend, TestStore};

use std::sync::Arc;
use std::time::Duration;

use hearth_store::{Compare, Error, Fenced, KeyValue, Op, OpResponse, Revision, Store, Txn};

support::on_both_backends!(
    a_leaders_put_delete_and_txn_go_through_while_its_key_stands,
    once_its_key_is_deleted_every_write_is_fenced_and_changes_nothing,
    once_its_lease_is_revoked_every_write_is_fenced_and_changes_nothing,
    a_new_leaders_key_does_not_let_the_old_token_write,
    a_txn_whose_own_compare_fails_returns_exactly_the_callers_failure_responses,
    a_txn_that_writes_in_its_failure_branch_is_refused_before_reaching_the_store,
    a_delete_of_a_missing_key_returns_what_the_inner_store_returns,
);

const LEADER: &str = "hosts/leader";

fn put(key: &str, value: &str) -> Op {
    Op::Put { key: key.into(), value: value.as_bytes().to_vec(), lease: None }
}

/// Elects a leader: its key on a lease of its own, and the store fenced
/// by that key's create revision.
async fn elect(store: &TestStore, host: &str) -> (Fenced, Revision, u64) {
    let lease = store.lease_grant(Duration::from_secs(60)).await.unwrap();
    store.put(LEADER, host.as_bytes().to_vec(), Some(lease.id)).await.unwrap();
    let token = store.get(LEADER).await.unwrap().unwrap().create_revision;
    (Fenced::new(store.arc(), LEADER, token), token, lease.id)
}

fn assert_fenced<T: std::fmt::Debug>(result: Result<T, Error>, token: Revision) {
    match result {
        Err(Error::Fenced { key, token: t }) if key == LEADER && t == token => {}
        other => panic!("expected Fenced {{ {LEADER:?}, {token} }}, got {other:?}"),
    }
}

/// Every kind of write through `fenced` fails with `Fenced`, and the store
/// is left as it was: same revision, same `x`. Reads still answer.
async fn assert_every_write_is_fenced(store: &TestStore, fenced: &Fenced, token: Revision) {
    let revision = store.revision().await.unwrap();
    let x: Option<KeyValue> = store.get("x").await.unwrap();

    assert_fenced(fenced.put("x", b"late".to_vec(), None).await, token);
    assert_fenced(fenced.put("new", b"late".to_vec(), None).await, token);
    assert_fenced(fenced.delete("x").await, token);
    assert_fenced(fenced.txn(Txn::new().and_then(put("x", "late"))).await, token);
    // Even when the caller's own comparison fails too, the fence is what
    // the caller must hear of.
    let txn = Txn::new()
        .when(Compare::mod_revision("x", 999))
        .and_then(put("x", "late"))
        .or_else(Op::Get { key: "x".into() });
    assert_fenced(fenced.txn(txn).await, token);

    assert_eq!(store.revision().await.unwrap(), revision);
    assert_eq!(store.get("x").await.unwrap(), x);
    assert_eq!(store.get("new").await.unwrap(), None);
    assert_eq!(fenced.get("x").await.unwrap(), x);
    assert_eq!(fenced.revision().await.unwrap(), revision);
}

async fn a_leaders_put_delete_and_txn_go_through_while_its_key_stands(backend: Backend) {
    let store = backend.store().await;
    let (fenced, token, _) = elect(&store, "a").await;
    assert_eq!(token, store.r(1));

    assert_eq!(fenced.put("x", b"1".to_vec(), None).await.unwrap(), store.r(2));
    assert_eq!(store.get("x").await.unwrap().unwrap().value, b"1");
    assert_eq!(fenced.delete("x").await.unwrap(), (store.r(3), true));
    assert_eq!(store.get("x").await.unwrap(), None);

    let txn = Txn::new()
        .when(Compare::missing("y"))
        .and_then(put("y", "2"))
        .and_then(Op::Get { key: "y".into() })
        .or_else(Op::Get { key: "y".into() });
    let response = fenced.txn(txn).await.unwrap();
    assert!(response.succeeded);
    assert_eq!(response.revision, store.r(4));
    let [OpResponse::Put { prev: None }, OpResponse::Get { kv: Some(y) }] = response.responses.as_slice()
    else {
        panic!("unexpected responses {:?}", response.responses);
    };
    assert_eq!(y.value, b"2");

    // The leader may rewrite its own key: it keeps its create revision.
    fenced.put(LEADER, b"a, still".to_vec(), None).await.unwrap();
    assert_eq!(fenced.put("z", b"3".to_vec(), None).await.unwrap(), store.r(6));
}

async fn once_its_key_is_deleted_every_write_is_fenced_and_changes_nothing(backend: Backend) {
    let store = backend.store().await;
    let (fenced, token, _) = elect(&store, "a").await;
    fenced.put("x", b"1".to_vec(), None).await.unwrap();

    store.delete(LEADER).await.unwrap();
    assert_every_write_is_fenced(&store, &fenced, token).await;
}

async fn once_its_lease_is_revoked_every_write_is_fenced_and_changes_nothing(backend: Backend) {
    let store = backend.store().await;
    let (fenced, token, lease) = elect(&store, "a").await;
    fenced.put("x", b"1".to_vec(), None).await.unwrap();

    // Through the fenced store: a revoke is not fenced.
    fenced.lease_revoke(lease).await.unwrap();
    assert_eq!(store.get(LEADER).await.unwrap(), None);
    assert_every_write_is_fenced(&store, &fenced, token).await;
}

async fn a_new_leaders_key_does_not_let_the_old_token_write(backend: Backend) {
    let store = backend.store().await;
    let (old, old_token, old_lease) = elect(&store, "a").await;
    store.lease_revoke(old_lease).await.unwrap();
    // The same host name, even: only the create revision tells them apart.
    let (new, new_token, _) = elect(&store, "a").await;
    assert!(new_token > old_token, "{new_token} > {old_token}");

    assert_every_write_is_fenced(&store, &old, old_token).await;
    let revision = new.put("x", b"new".to_vec(), None).await.unwrap();
    assert_eq!(revision, store.revision().await.unwrap());
    assert_eq!(store.get("x").await.unwrap().unwrap().value, b"new");
    assert_every_write_is_fenced(&store, &old, old_token).await;
}

async fn a_txn_whose_own_compare_fails_returns_exactly_the_callers_failure_responses(backend: Backend) {
    let store = backend.store().await;
    let (fenced, _, _) = elect(&store, "a").await;
    fenced.put("p/a", b"1".to_vec(), None).await.unwrap();
    fenced.put("x", b"1".to_vec(), None).await.unwrap();

    let txn = Txn::new()
        .when(Compare::mod_revision("x", 999))
        .and_then(put("x", "2"))
        .or_else(Op::Get { key: "x".into() })
        .or_else(Op::Range { prefix: "p/".into() })
        .or_else(Op::Get { key: "missing".into() });
    let response = fenced.txn(txn.clone()).await.unwrap();
    assert!(!response.succeeded);
    assert_eq!(response.responses.len(), 3, "{:?}", response.responses);
    // Exactly what the inner store answers, the fence's read taken off.
    assert_eq!(response, store.txn(txn).await.unwrap());
    assert_eq!(response.revision, store.r(3));

    // A failure branch with nothing in it answers nothing.
    let response = fenced.txn(Txn::new().when(Compare::missing("x"))).await.unwrap();
    assert!(!response.succeeded);
    assert_eq!(response.responses, []);
}

async fn a_txn_that_writes_in_its_failure_branch_is_refused_before_reaching_the_store(backend: Backend) {
    let store = backend.store().await;
    let (fenced, _, _) = elect(&store, "a").await;
    let revision = store.revision().await.unwrap();

    for (write, key) in [
        (put("x", "1"), "x"),
        (Op::Delete { key: "y".into() }, "y"),
        (Op::DeletePrefix { prefix: "p/".into() }, "p/"),
    ] {
        // Its success branch would run and write, were it sent.
        let txn = Txn::new().and_then(put("ran", "1")).or_else(Op::Get { key: "x".into() }).or_else(write);
        match fenced.txn(txn).await {
            Err(Error::UnfencedWrite { key: refused }) => assert_eq!(refused, key),
            other => panic!("expected UnfencedWrite for {key:?}, got {other:?}"),
        }
    }
    assert_eq!(store.get("ran").await.unwrap(), None);
    assert_eq!(store.revision().await.unwrap(), revision);
}

async fn a_delete_of_a_missing_key_returns_what_the_inner_store_returns(backend: Backend) {
    let store = backend.store().await;
    let (fenced, _, _) = elect(&store, "a").await;
    let revision = store.revision().await.unwrap();

    assert_eq!(fenced.delete("missing").await.unwrap(), (revision, false));
    assert_eq!(store.delete("missing").await.unwrap(), (revision, false));
    assert_eq!(store.revision().await.unwrap(), revision);
}

/// A `Fenced` is a `Store`, for the subsystems that take one.
#[tokio::test]
async fn a_fenced_store_is_handed_around_as_a_store() {
    let store = Backend::Redb.store().await;
    let (fenced, _, _) = elect(&store, "a").await;
    let shared: Arc<dyn Store> = Arc::new(fenced);
    assert_eq!(shared.put("x", b"1".to_vec(), None).await.unwrap(), store.r(2));
}
