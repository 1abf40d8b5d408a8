//! `/v1/kv`: the user's key space, a namespace of the store under `kv/`.
//!
//! Subsystems keep their state in other namespaces, which this endpoint cannot
//! reach, so a stray `hearth kv rm` cannot corrupt a machine's record.

use axum::extract::State;
use hearth_client::types::{
    DeleteKvQuery, DeleteResult, Encoding, ErrorBody, KvEntry, KvList, KvListQuery, PutKv, WriteResult,
};
use hearth_store::{Compare, KeyValue, Op, OpResponse, Txn};

use super::AppState;
use crate::error::ApiError;
use crate::extract::{ApiJson, ApiPath, ApiQuery};

/// The store namespace that `/v1/kv` maps onto.
pub(crate) const NAMESPACE: &str = "kv/";

/// The longest key a path can name: the store's limit, less the namespace.
const MAX_KEY: usize = hearth_store::limits::MAX_KEY_LEN - NAMESPACE.len();

fn store_key(key: &str) -> Result<String, ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_field",
            "the key is empty",
            "name a key in the path: /v1/kv/KEY",
        ));
    }
    Ok(format!("{NAMESPACE}{key}"))
}

fn entry(kv: KeyValue) -> KvEntry {
    let (value, encoding) = Encoding::encode(kv.value);
    KvEntry {
        key: kv.key.strip_prefix(NAMESPACE).unwrap_or(&kv.key).to_owned(),
        value,
        encoding,
        create_revision: kv.create_revision,
        mod_revision: kv.mod_revision,
        version: kv.version,
        lease: kv.lease,
    }
}

/// Lists keys, optionally under a prefix.
#[utoipa::path(get, path = "/v1/kv", tag = "kv", params(KvListQuery),
    responses((status = 200, body = KvList), (status = 400, body = ErrorBody)))]
pub(crate) async fn list(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<KvListQuery>,
) -> Result<axum::Json<KvList>, ApiError> {
    let prefix = format!("{NAMESPACE}{}", query.prefix.unwrap_or_default());
    let range = state.store().range(&prefix).await?;
    Ok(axum::Json(KvList { revision: range.revision, entries: range.kvs.into_iter().map(entry).collect() }))
}

/// Reads one key.
#[utoipa::path(get, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key; may contain `/`")),
    responses((status = 200, body = KvEntry), (status = 404, body = ErrorBody)))]
pub(crate) async fn get(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String, MAX_KEY>,
) -> Result<axum::Json<KvEntry>, ApiError> {
    let kv = state.store().get(&store_key(&key)?).await?;
    kv.map(|kv| axum::Json(entry(kv))).ok_or_else(|| {
        ApiError::not_found(format!("key {key:?} does not exist"), "list keys with `hearth kv ls`")
    })
}

/// Writes one key, optionally only if it is unchanged since a revision.
#[utoipa::path(put, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key; may contain `/`")),
    request_body = PutKv,
    responses((status = 200, body = WriteResult), (status = 400, body = ErrorBody),
        (status = 404, description = "The lease does not exist", body = ErrorBody),
        (status = 409, description = "`if_mod_revision` did not match", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
pub(crate) async fn put(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String, MAX_KEY>,
    ApiJson(body): ApiJson<PutKv>,
) -> Result<axum::Json<WriteResult>, ApiError> {
    let skey = store_key(&key)?;
    let value = body.encoding.decode(body.value).map_err(|e| {
        ApiError::bad_request(
            "invalid_field",
            format!("field `value`: not valid base64 ({e})"),
            "encode the value with standard base64, or drop `encoding` to send text",
        )
    })?;
    let Some(expected) = body.if_mod_revision else {
        let revision = state.store().put(&skey, value, body.lease).await?;
        return Ok(axum::Json(WriteResult { revision }));
    };
    let txn = Txn::new()
        .when(Compare::mod_revision(&skey, expected))
        .and_then(Op::Put { key: skey.clone(), value, lease: body.lease })
        .or_else(Op::Get { key: skey });
    let response = state.store().txn(txn).await?;
    if response.succeeded {
        Ok(axum::Json(WriteResult { revision: response.revision }))
    } else {
        Err(cas_conflict(&key, expected, response.responses.into_iter().next()))
    }
}

/// Deletes one key, optionally only if it is unchanged since a revision.
#[utoipa::path(delete, path = "/v1/kv/{key}", tag = "kv",
    params(("key" = String, Path, description = "The key; may contain `/`"), DeleteKvQuery),
    responses((status = 200, body = DeleteResult), (status = 409, body = ErrorBody)))]
pub(crate) async fn delete(
    State(state): State<AppState>,
    ApiPath(key): ApiPath<String, MAX_KEY>,
    ApiQuery(query): ApiQuery<DeleteKvQuery>,
) -> Result<axum::Json<DeleteResult>, ApiError> {
    let skey = store_key(&key)?;
    let Some(expected) = query.if_mod_revision else {
        let (revision, deleted) = state.store().delete(&skey).await?;
        return Ok(axum::Json(DeleteResult { revision, deleted }));
    };
    let txn = Txn::new()
        .when(Compare::mod_revision(&skey, expected))
        .and_then(Op::Delete { key: skey.clone() })
        .or_else(Op::Get { key: skey });
    let response = state.store().txn(txn).await?;
    if !response.succeeded {
        return Err(cas_conflict(&key, expected, response.responses.into_iter().next()));
    }
    let deleted = matches!(response.responses.first(), Some(OpResponse::Delete { deleted }) if *deleted > 0);
    Ok(axum::Json(DeleteResult { revision: response.revision, deleted }))
}

fn cas_conflict(key: &str, expected: u64, current: Option<OpResponse>) -> ApiError {
    let actual = match current {
        Some(OpResponse::Get { kv: Some(kv) }) => format!("was last written at revision {}", kv.mod_revision),
        _ => "does not exist".to_owned(),
    };
    ApiError::conflict(
        format!("key {key:?} {actual}, not at revision {expected}"),
        "read the key again and retry with its current mod_revision",
    )
}
