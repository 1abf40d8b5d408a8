//! hearth's transactions as etcd's.

use etcd_client::{DeleteOptions, GetOptions, PutOptions, TxnOp, TxnOpResponse};

use super::{EtcdStore, Kind, header_revision, lease_not_found};
use crate::{Compare, CompareOp, CompareTarget, Error, Op, OpResponse, Txn, TxnResponse};

/// Runs `txn` on etcd and maps the answer back.
pub(super) async fn run(store: &EtcdStore, txn: Txn) -> Result<TxnResponse, Error> {
    let compares: Vec<(&Compare, bool)> = txn.compares.iter().map(|c| (c, false)).collect();
    let success: Vec<TxnOp> = txn.success.iter().map(|op| op_to_etcd(store, op)).collect();
    let failure: Vec<TxnOp> = txn.failure.iter().map(|op| op_to_etcd(store, op)).collect();
    let (request, depth) = build(store, &compares, &success, &failure);
    // A transaction that writes nothing in either branch is a read.
    let writes =
        txn.success.iter().chain(&txn.failure).any(|op| !matches!(op, Op::Get { .. } | Op::Range { .. }));
    let kind = if writes { Kind::Write } else { Kind::Read };

    let response = match store
        .attempt(kind, |c| {
            let request = request.clone();
            async move { super::kv(&c).txn(request).await }
        })
        .await?
    {
        Ok(response) => response,
        Err(e) if lease_not_found(&e) => {
            let lease = txn
                .success
                .iter()
                .chain(&txn.failure)
                .find_map(|op| match op {
                    Op::Put { lease: Some(id), .. } => Some(*id),
                    _ => None,
                })
                .unwrap_or(0);
            return Err(Error::LeaseNotFound(lease));
        }
        Err(e) => return Err(store.error(e)),
    };
    let revision = header_revision(response.header());
    // Down through the nested transactions that decided the disjunctive
    // comparisons: the innermost is the one with the real branches.
    let mut inner = response;
    for _ in 0..depth {
        inner = match inner.op_responses().into_iter().next() {
            Some(TxnOpResponse::Txn(nested)) => nested,
            other => {
                return Err(Error::Corrupt(
                    format!("etcd answered a nested transaction with {other:?}").into(),
                ));
            }
        };
    }
    let succeeded = inner.succeeded();
    let ops = if succeeded { &txn.success } else { &txn.failure };
    let responses = inner
        .op_responses()
        .into_iter()
        .zip(ops)
        .map(|(response, op)| response_from(store, response, op))
        .collect::<Result<_, _>>()?;
    Ok(TxnResponse { succeeded, revision, responses })
}

/// What a value comparison says of a missing key, which hearth takes as an
/// empty value and etcd takes as failing every value comparison.
fn holds_when_missing(compare: &Compare) -> bool {
    let CompareTarget::Value(value) = &compare.target else { return false };
    let empty: &[u8] = &[];
    match compare.op {
        CompareOp::Equal => empty == value.as_slice(),
        CompareOp::NotEqual => empty != value.as_slice(),
        CompareOp::Less => empty < value.as_slice(),
        CompareOp::Greater => false,
    }
}

/// The etcd transaction for `compares`, and how many nested transactions
/// deep its real branches sit. Each comparison that holds for a missing key
/// becomes an outer transaction on whether the key exists: if it does not,
/// the comparison holds and is dropped; if it does, etcd's own value
/// comparison decides. (`native` marks a comparison already split so.)
fn build(
    store: &EtcdStore,
    compares: &[(&Compare, bool)],
    success: &[TxnOp],
    failure: &[TxnOp],
) -> (etcd_client::Txn, usize) {
    let split = compares.iter().position(|(c, native)| !native && holds_when_missing(c));
    let Some(at) = split else {
        let compares: Vec<_> = compares.iter().map(|(c, _)| compare_to_etcd(store, c)).collect();
        return (
            etcd_client::Txn::new().when(compares).and_then(success.to_vec()).or_else(failure.to_vec()),
            0,
        );
    };
    let key = store.key(&compares[at].0.key);
    let mut missing = compares.to_vec();
    missing.remove(at);
    let mut present = compares.to_vec();
    present[at].1 = true;
    let (if_missing, depth) = build(store, &missing, success, failure);
    let (if_present, other_depth) = build(store, &present, success, failure);
    debug_assert_eq!(depth, other_depth, "both sides split the same comparisons");
    let outer = etcd_client::Txn::new()
        .when(vec![etcd_client::Compare::version(key, etcd_client::CompareOp::Equal, 0)])
        .and_then(vec![TxnOp::txn(if_missing)])
        .or_else(vec![TxnOp::txn(if_present)]);
    (outer, depth + 1)
}

fn compare_to_etcd(store: &EtcdStore, compare: &Compare) -> etcd_client::Compare {
    let op = match compare.op {
        CompareOp::Equal => etcd_client::CompareOp::Equal,
        CompareOp::NotEqual => etcd_client::CompareOp::NotEqual,
        CompareOp::Less => etcd_client::CompareOp::Less,
        CompareOp::Greater => etcd_client::CompareOp::Greater,
    };
    let key = store.key(&compare.key);
    match &compare.target {
        CompareTarget::ModRevision(r) => etcd_client::Compare::mod_revision(key, op, *r as i64),
        CompareTarget::CreateRevision(r) => etcd_client::Compare::create_revision(key, op, *r as i64),
        CompareTarget::Version(v) => etcd_client::Compare::version(key, op, *v as i64),
        CompareTarget::Value(v) => etcd_client::Compare::value(key, op, v.clone()),
    }
}

fn op_to_etcd(store: &EtcdStore, op: &Op) -> TxnOp {
    match op {
        Op::Put { key, value, lease } => {
            let mut options = PutOptions::new().with_prev_key();
            if let Some(id) = lease {
                options = options.with_lease(*id as i64);
            }
            TxnOp::put(store.key(key), value.clone(), Some(options))
        }
        Op::Delete { key } => TxnOp::delete(store.key(key), Some(DeleteOptions::new())),
        Op::DeletePrefix { prefix } => {
            TxnOp::delete(store.key(prefix), Some(DeleteOptions::new().with_prefix()))
        }
        Op::Get { key } => TxnOp::get(store.key(key), None),
        Op::Range { prefix } => TxnOp::get(store.key(prefix), Some(GetOptions::new().with_prefix())),
    }
}

fn response_from(store: &EtcdStore, response: TxnOpResponse, op: &Op) -> Result<OpResponse, Error> {
    let kvs =
        |kvs: &[etcd_client::KeyValue]| kvs.iter().map(|kv| store.kv_from(kv)).collect::<Result<Vec<_>, _>>();
    Ok(match (response, op) {
        (TxnOpResponse::Put(put), _) => {
            OpResponse::Put { prev: put.prev_key().map(|kv| store.kv_from(kv)).transpose()? }
        }
        (TxnOpResponse::Delete(delete), _) => OpResponse::Delete { deleted: delete.deleted().max(0) as u64 },
        (TxnOpResponse::Get(get), Op::Range { .. }) => OpResponse::Range { kvs: kvs(get.kvs())? },
        (TxnOpResponse::Get(get), _) => OpResponse::Get { kv: kvs(get.kvs())?.into_iter().next() },
        (TxnOpResponse::Txn(_), _) => {
            return Err(Error::Corrupt("etcd answered an operation with a transaction".into()));
        }
    })
}
