//! The API objects in a scope, read through the API server.
//!
//! [`prepare`] checks the scope against the server (which types it serves,
//! which namespaces exist) before a backup is recorded; [`read`] then lists
//! every selected type page by page and hands each object on as it arrives,
//! namespaced objects first so that the cluster-scoped objects they use
//! (see [`Uses`]) are known when the cluster-scoped types are read.

use std::collections::HashSet;

use futures::StreamExt;
use serde_json::Value;
use tokio::sync::mpsc::Sender;

use crate::cluster::Cluster;
use crate::cluster::discovery::{self, Lister, ResourceType};
use crate::error::{Error, ErrorKind, Result};
use crate::resources::scope::{OPT_OUT_LABEL, RELATED, Scope, TypeName, Uses, opted_out};

/// One object as listed.
pub struct Listed {
    /// Index into [`Reading::types`].
    pub ty: usize,
    pub namespace: Option<String>,
    pub name: String,
    /// Its JSON, as the server sent it plus `apiVersion` and `kind`.
    pub json: Vec<u8>,
}

/// What a backup of a scope will read.
pub struct Reading {
    pub types: Vec<ResourceType>,
    /// The selected namespaces that exist (and did not opt out).
    pub namespaces: Vec<String>,
    /// Their Namespace objects, where drctl may read them.
    namespace_objects: Vec<Value>,
    /// Namespaces left out by their opt-out label.
    pub opted_out_namespaces: Vec<String>,
    /// Whether namespaced types are listed one namespace at a time.
    per_namespace: bool,
}

/// Requests in flight while listing.
const LISTS_IN_FLIGHT: usize = 4;

/// Resolves the scope against the server: the selected types it serves and
/// the namespaces that exist. A named namespace that does not exist is an
/// error: a typo would otherwise back up nothing, successfully.
pub async fn prepare(cluster: &Cluster, scope: &Scope) -> Result<Reading> {
    let served = discovery::discover(cluster).await?;
    let ns_type = served
        .iter()
        .find(|t| t.group.is_empty() && t.plural == "namespaces")
        .cloned()
        .ok_or_else(|| {
            Error::new(
                ErrorKind::Failed,
                format!("the API server at {} serves no namespaces", cluster.url),
            )
        })?;
    let mut seen = HashSet::new();
    let types: Vec<ResourceType> = served
        .into_iter()
        .filter(|t| scope.resource_selected(t))
        // A kind served under two groups (events, events.events.k8s.io) is
        // two types; the same qualified name twice is not.
        .filter(|t| seen.insert(t.qualified()))
        .collect();

    let mut candidates = Vec::new();
    let per_namespace;
    if let Some(names) = scope.literal_namespaces() {
        per_namespace = true;
        for name in names {
            match cluster
                .try_get::<Value>(&ns_type.object(None, &name))
                .await?
            {
                Ok(obj) => candidates.push((name, Some(obj))),
                Err(r) if r.code == 404 => {
                    return Err(Error::new(
                        ErrorKind::NotFound,
                        format!("namespace `{name}` does not exist on {}", cluster.url),
                    )
                    .with_guidance(
                        "check the name (`kubectl get namespaces`), or use a pattern such as \
                         `shop-*` to back up whatever matches",
                    ));
                }
                // Allowed into the namespace but not to read its object:
                // back up its contents, not the Namespace.
                Err(r) if r.code == 403 => {
                    tracing::warn!(namespace = %name, "not allowed to read the Namespace object; backing up its contents only");
                    candidates.push((name, None));
                }
                Err(r) => return Err(cluster.refused("GET", &ns_type.object(None, &name), &r)),
            }
        }
    } else {
        per_namespace = false;
        let mut lister = Lister::new(cluster, &ns_type, None, "");
        while let Some(page) = lister.next().await? {
            for obj in page {
                let name = name_of(&obj).to_string();
                if scope.namespace_selected(&name) {
                    candidates.push((name, Some(obj)));
                }
            }
        }
    }
    let mut reading = Reading {
        types,
        namespaces: Vec::new(),
        namespace_objects: Vec::new(),
        opted_out_namespaces: Vec::new(),
        per_namespace,
    };
    for (name, obj) in candidates {
        if obj.as_ref().is_some_and(opted_out) {
            reading.opted_out_namespaces.push(name);
            continue;
        }
        reading.namespaces.push(name);
        reading.namespace_objects.extend(obj);
    }
    Ok(reading)
}

fn name_of(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
}

fn namespace_of(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// Reads every object in scope into `tx`. Returns the number of objects.
pub async fn read(
    cluster: &Cluster,
    scope: &Scope,
    reading: &Reading,
    tx: &Sender<Listed>,
) -> Result<u64> {
    // Objects that opted out never leave the server.
    let opt_out = format!("{OPT_OUT_LABEL}!=true");
    let selector = match scope.selector() {
        Some(s) => format!("{s},{opt_out}"),
        None => opt_out.clone(),
    };
    let wanted_ns: HashSet<&str> = reading.namespaces.iter().map(String::as_str).collect();
    let send = |ty: usize, obj: &Value| {
        let listed = Listed {
            ty,
            namespace: namespace_of(obj).map(str::to_string),
            name: name_of(obj).to_string(),
            json: serde_json::to_vec(obj).expect("JSON values serialise"),
        };
        let tx = tx.clone();
        async move {
            tx.send(listed)
                .await
                .map_err(|_| Error::new(ErrorKind::Failed, "the backup pipeline stopped"))
        }
    };

    // Namespaced types: one list per type across the cluster, or per type
    // and namespace when namespaces are named.
    let mut units: Vec<(usize, Option<&str>)> = Vec::new();
    for (i, _) in reading
        .types
        .iter()
        .enumerate()
        .filter(|(_, t)| t.namespaced)
    {
        if reading.per_namespace {
            units.extend(reading.namespaces.iter().map(|n| (i, Some(n.as_str()))));
        } else if !reading.namespaces.is_empty() {
            units.push((i, None));
        }
    }
    let uses = std::sync::Mutex::new(Uses::default());
    let count = std::sync::atomic::AtomicU64::new(0);
    let results: Vec<Result<()>> = futures::stream::iter(units)
        .map(|(i, ns)| {
            let (selector, wanted_ns, uses, count, send) =
                (&selector, &wanted_ns, &uses, &count, &send);
            async move {
                let t = &reading.types[i];
                let mut lister = Lister::new(cluster, t, ns, selector);
                while let Some(page) = lister.next().await? {
                    for obj in page {
                        if !namespace_of(&obj).is_some_and(|n| wanted_ns.contains(n)) {
                            continue;
                        }
                        uses.lock().unwrap().note(t, &obj);
                        send(i, &obj).await?;
                        count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Ok(())
            }
        })
        .buffer_unordered(LISTS_IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;

    // Cluster-scoped types, those that make others wanted first.
    let mut uses = uses.into_inner().unwrap();
    let mut cluster_types: Vec<usize> = (0..reading.types.len())
        .filter(|&i| !reading.types[i].namespaced)
        .collect();
    cluster_types.sort_by_key(|&i| Uses::rank(&reading.types[i].qualified()));
    let all = scope.all_cluster_objects();
    let mut n = count.into_inner();
    for i in cluster_types {
        let t = &reading.types[i];
        if scope.cluster == crate::resources::scope::ClusterResources::False {
            break;
        }
        if !all && t.qualified() == "namespaces" {
            // Read already, by prepare.
            for obj in &reading.namespace_objects {
                send(i, obj).await?;
                n += 1;
            }
            continue;
        }
        if !all && !RELATED.contains(&t.qualified().as_str()) {
            continue;
        }
        // In auto mode, related objects come whatever their labels: a
        // restored claim needs its volume.
        let sel = if all {
            selector.as_str()
        } else {
            opt_out.as_str()
        };
        let mut lister = Lister::new(cluster, t, None, sel);
        loop {
            let page = match lister.next().await {
                Ok(Some(page)) => page,
                Ok(None) => break,
                // Someone allowed into namespaces only still gets them
                // backed up, without what they may not read.
                Err(e) if !all && e.kind() == ErrorKind::Permission => {
                    tracing::warn!(resource = %t.qualified(), error = %e.what(), "not allowed to list; the related objects of this type are not backed up");
                    break;
                }
                Err(e) => return Err(e),
            };
            for obj in page {
                if !all && !uses.wants(t, &obj, scope) {
                    continue;
                }
                uses.note(t, &obj);
                send(i, &obj).await?;
                n += 1;
            }
        }
    }
    Ok(n)
}
