//! Objects in etcd, as a real API server keeps them: one key per object
//! under a prefix, the object's JSON as the value, and etcd's revisions as
//! resourceVersions (one global counter, an object's version is the
//! revision that last wrote it). An etcd snapshot restored therefore brings
//! back the objects, their versions included.

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use serde_json::Value;

use super::resources::ResourceType;
use super::status::ApiError;

#[derive(Clone)]
pub struct Store {
    client: Client,
    prefix: String,
}

/// An object read from etcd: its key, JSON and `mod_revision`.
pub struct Stored {
    pub key: String,
    pub object: Value,
    pub revision: i64,
}

/// One page of a list.
pub struct Page {
    pub items: Vec<Stored>,
    /// More keys follow the last one returned.
    pub more: bool,
    /// The revision the page was read at.
    pub revision: i64,
}

fn etcd(e: etcd_client::Error) -> ApiError {
    let text = e.to_string();
    if text.contains("compacted") {
        ApiError::expired(
            "The provided continue parameter is too old to display a consistent list result. \
             You can start a new list without the continue parameter.",
        )
    } else {
        ApiError::internal(format!("etcd: {text}"))
    }
}

fn parse(kv: &etcd_client::KeyValue) -> Result<Stored, ApiError> {
    let object = serde_json::from_slice(kv.value())
        .map_err(|e| ApiError::internal(format!("stored object is not JSON: {e}")))?;
    Ok(Stored {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        object,
        revision: kv.mod_revision(),
    })
}

impl Store {
    pub fn new(client: Client, prefix: &str) -> Store {
        let mut prefix = prefix.to_string();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Store { client, prefix }
    }

    /// Where all objects of `rt` (in `namespace`, or in all) live.
    pub fn prefix(&self, rt: &ResourceType, namespace: Option<&str>) -> String {
        let group = if rt.group.is_empty() {
            "core"
        } else {
            &rt.group
        };
        match namespace {
            Some(ns) if rt.namespaced => format!("{}{group}/{}/{ns}/", self.prefix, rt.plural),
            _ => format!("{}{group}/{}/", self.prefix, rt.plural),
        }
    }

    pub fn key(&self, rt: &ResourceType, namespace: Option<&str>, name: &str) -> String {
        format!("{}{name}", self.prefix(rt, namespace))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Stored>, ApiError> {
        let mut c = self.client.clone();
        let resp = c.get(key, None).await.map_err(etcd)?;
        resp.kvs().first().map(parse).transpose()
    }

    /// Creates `key`; `None` when it exists.
    pub async fn create(&self, key: &str, object: &Value) -> Result<Option<i64>, ApiError> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, serde_json::to_vec(object).unwrap(), None)]);
        let resp = c.txn(txn).await.map_err(etcd)?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Replaces `key` if it is still at `expected`; `None` when it moved on
    /// (or went away).
    pub async fn update(
        &self,
        key: &str,
        object: &Value,
        expected: i64,
    ) -> Result<Option<i64>, ApiError> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::put(key, serde_json::to_vec(object).unwrap(), None)]);
        let resp = c.txn(txn).await.map_err(etcd)?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes `key` if it is still at `expected`; the revision of the
    /// deletion, `None` when it moved on.
    pub async fn delete(&self, key: &str, expected: i64) -> Result<Option<i64>, ApiError> {
        let mut c = self.client.clone();
        let txn = Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, expected)])
            .and_then([TxnOp::delete(key, None)]);
        let resp = c.txn(txn).await.map_err(etcd)?;
        Ok(resp
            .succeeded()
            .then(|| resp.header().map_or(0, |h| h.revision())))
    }

    /// Deletes everything under `prefix`.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<(), ApiError> {
        let mut c = self.client.clone();
        c.delete(
            prefix,
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .map_err(etcd)?;
        Ok(())
    }

    /// Up to `limit` (0: all) objects under `prefix` from key `from`, at
    /// revision `at` (0: now).
    pub async fn list(
        &self,
        prefix: &str,
        from: &str,
        at: i64,
        limit: i64,
    ) -> Result<Page, ApiError> {
        // A page of big objects exceeds gRPC's default 4 MiB; the real API
        // server lifts the limit the same way.
        let mut c = self
            .client
            .kv_client()
            .max_decoding_message_size(i32::MAX as usize);
        let start = if from.is_empty() { prefix } else { from };
        let mut opts = GetOptions::new()
            .with_range(prefix_end(prefix))
            .with_limit(limit);
        if at > 0 {
            opts = opts.with_revision(at);
        }
        let resp = c.get(start, Some(opts)).await.map_err(etcd)?;
        let items = resp.kvs().iter().map(parse).collect::<Result<_, _>>()?;
        Ok(Page {
            items,
            more: resp.more(),
            revision: resp.header().map_or(0, |h| h.revision()),
        })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }
}

/// The first key after every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}
