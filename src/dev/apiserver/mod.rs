//! A stand-in Kubernetes API server for tests and the demo.
//!
//! No real kube-apiserver can be installed on the machines drctl is
//! developed and tested on, and every resource backup and restore needs one.
//! This serves enough of the real protocol that the real `kubectl` and the
//! `kube` crate work against it unmodified: legacy discovery, OpenAPI v3
//! enough for `kubectl apply` to validate, CRUD with resourceVersions and
//! conflicts, lists with selectors and pagination, merge, JSON, strategic
//! and server-side-apply patches with managedFields, finalizers, status
//! subresources, watches with bookmarks, custom resources from their
//! definitions, and errors as `Status` objects.
//!
//! Objects live in a real etcd under a key prefix ([`store`]), with etcd's
//! revisions as resourceVersions, so an etcd snapshot backed up by drctl and
//! restored brings back the objects the server then serves.
//!
//! What it does not do: authorization (every request it authenticates is
//! allowed, and SelfSubjectAccessReviews say so), admission, defaulting
//! beyond the server-set metadata, schema validation of built-in kinds,
//! controllers (a Deployment makes no ReplicaSet), protobuf output and
//! Table output (clients fall back to JSON). Protobuf request bodies are
//! read for the kinds kubectl's imperative commands send (`protobuf`).

mod handlers;
pub mod openapi;
pub mod patch;
mod protobuf;
pub mod resources;
mod selector;
mod status;
mod store;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::Router;
use serde_json::{Value, json};

use crate::error::{Error, ErrorKind, Result};
pub use resources::ResourceType;
use status::ApiError;
use store::Store;

/// What the server knows: the store and the served types.
pub(crate) struct State {
    store: Store,
    builtins: Vec<ResourceType>,
    /// Types from CustomResourceDefinitions, by CRD name.
    custom: RwLock<Vec<(String, Vec<ResourceType>)>>,
}

impl State {
    /// Every served type.
    fn types(&self) -> Vec<ResourceType> {
        let mut all = self.builtins.clone();
        for (_, ts) in self.custom.read().unwrap().iter() {
            all.extend(ts.iter().cloned());
        }
        all
    }

    /// The type served at `group`/`version` as `plural`.
    fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceType> {
        self.types()
            .into_iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// The built-in type of `kind` (one the server always has).
    fn builtin(&self, kind: &str) -> &ResourceType {
        self.builtins
            .iter()
            .find(|t| t.kind == kind)
            .expect("a built-in kind")
    }

    /// Registers (or replaces) the types a CRD defines.
    fn register_crd(&self, crd: &Value) {
        let name = crd
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let types = crd_types(crd);
        let mut custom = self.custom.write().unwrap();
        custom.retain(|(n, _)| *n != name);
        if !types.is_empty() {
            custom.push((name, types));
        }
    }

    fn unregister_crd(&self, name: &str) {
        self.custom.write().unwrap().retain(|(n, _)| n != name);
    }
}

/// The resource types a CRD serves.
fn crd_types(crd: &Value) -> Vec<ResourceType> {
    let s = |p: &str| {
        crd.pointer(p)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let group = s("/spec/group");
    let names = &crd["spec"]["names"];
    let plural = names["plural"].as_str().unwrap_or("").to_string();
    let kind = names["kind"].as_str().unwrap_or("").to_string();
    if group.is_empty() || plural.is_empty() || kind.is_empty() {
        return Vec::new();
    }
    let singular = names["singular"]
        .as_str()
        .map_or_else(|| kind.to_ascii_lowercase(), str::to_string);
    let short_names: Vec<String> = names["shortNames"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let namespaced = s("/spec/scope") != "Cluster";
    crd["spec"]["versions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["served"].as_bool().unwrap_or(true))
        .filter_map(|v| {
            Some(ResourceType {
                group: group.clone(),
                version: v["name"].as_str()?.to_string(),
                plural: plural.clone(),
                singular: singular.clone(),
                kind: kind.clone(),
                namespaced,
                short_names: short_names.clone(),
                status: v.pointer("/subresources/status").is_some(),
                builtin: false,
            })
        })
        .collect()
}

/// The bearer token every request must carry; the kubeconfig the server
/// writes has it. A fixed value: the server is for tests and demos on
/// loopback, and the token is there so that refused credentials can be
/// tested, not to protect anything.
pub const TOKEN: &str = "drctl-dev";

/// Where the server is and how to reach it.
pub struct Running {
    pub url: String,
    pub addr: SocketAddr,
    pub kubeconfig: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops serving (connections in flight are dropped).
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How to start the server.
pub struct Options {
    /// etcd client URL(s), plain http (a throwaway etcd on loopback).
    pub etcd: Vec<String>,
    /// Key prefix of the objects in etcd, e.g. `/registry/`.
    pub prefix: String,
    /// Address to bind; port 0 picks one.
    pub listen: SocketAddr,
    /// Where to write the kubeconfig.
    pub kubeconfig: PathBuf,
}

/// Starts the server on the current tokio runtime: connects to etcd, loads
/// the CRDs stored there, makes the namespaces every cluster has, binds,
/// and writes a kubeconfig pointing at it.
pub async fn start(opts: Options) -> Result<Running> {
    let client = etcd_client::Client::connect(&opts.etcd, None)
        .await
        .map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("cannot connect to etcd at {}: {e}", opts.etcd.join(", ")),
            )
        })?;
    serve(client, &opts.prefix, opts.listen, opts.kubeconfig).await
}

/// Starts the server over an etcd client made elsewhere (a drill's, over
/// the throwaway etcd's Unix socket).
pub async fn serve(
    client: etcd_client::Client,
    prefix: &str,
    listen: SocketAddr,
    kubeconfig: PathBuf,
) -> Result<Running> {
    let state = Arc::new(State {
        store: Store::new(client, prefix),
        builtins: resources::builtins(),
        custom: RwLock::new(Vec::new()),
    });
    let unavailable =
        |e: ApiError| Error::new(ErrorKind::Unavailable, format!("etcd: {}", e.message));
    let prefix = state
        .store
        .prefix(state.builtin("CustomResourceDefinition"), None);
    for s in state
        .store
        .list(&prefix, "", 0, 0)
        .await
        .map_err(unavailable)?
        .items
    {
        state.register_crd(&s.object);
    }
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        handlers::ensure_namespace(&state, ns)
            .await
            .map_err(unavailable)?;
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| Error::io(e, ErrorKind::Failed, format!("cannot bind {listen}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot read the bound address"))?;
    let url = format!("http://{addr}");
    write_kubeconfig(&kubeconfig, &url)?;
    let app = Router::new().fallback(handlers::handle).with_state(state);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Running {
        url,
        addr,
        kubeconfig,
        task,
    })
}

fn write_kubeconfig(path: &Path, url: &str) -> Result<()> {
    let config = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "drctl-dev", "cluster": {"server": url}}],
        "users": [{"name": "drctl-dev", "user": {"token": TOKEN}}],
        "contexts": [{"name": "drctl-dev", "context": {
            "cluster": "drctl-dev", "user": "drctl-dev", "namespace": "default"}}],
        "current-context": "drctl-dev",
        "preferences": {},
    });
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot create {}", dir.display()),
            )
        })?;
    }
    // JSON is YAML: kubectl and kube read it as a kubeconfig.
    std::fs::write(path, serde_json::to_vec_pretty(&config).unwrap()).map_err(|e| {
        Error::io(
            e,
            ErrorKind::Failed,
            format!("cannot write the kubeconfig {}", path.display()),
        )
    })
}
