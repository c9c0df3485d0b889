//! What the API server serves: every resource type at its group's preferred
//! version, and paginated lists of their objects.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Cluster;
use crate::error::{Error, ErrorKind, Result};
use crate::resources::scope::TypeName;

/// A served resource type.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ResourceType {
    /// `""` for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The plural in URLs: `deployments`.
    pub plural: String,
    pub namespaced: bool,
}

impl TypeName for ResourceType {
    fn group(&self) -> &str {
        &self.group
    }
    fn plural(&self) -> &str {
        &self.plural
    }
    fn kind(&self) -> &str {
        &self.kind
    }
}

impl ResourceType {
    /// `apps/v1`, or `v1` in the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// The collection URL, in one namespace or (namespace `None`) across
    /// all of them.
    pub fn collection(&self, namespace: Option<&str>) -> String {
        let base = if self.group.is_empty() {
            format!("/api/{}", self.version)
        } else {
            format!("/apis/{}/{}", self.group, self.version)
        };
        match namespace.filter(|_| self.namespaced) {
            Some(ns) => format!("{base}/namespaces/{ns}/{}", self.plural),
            None => format!("{base}/{}", self.plural),
        }
    }

    /// An object's URL.
    pub fn object(&self, namespace: Option<&str>, name: &str) -> String {
        format!("{}/{name}", self.collection(namespace))
    }
}

/// Every listable resource type the server serves, at the preferred
/// version of its group, in discovery order.
pub async fn discover(cluster: &Cluster) -> Result<Vec<ResourceType>> {
    let mut out = Vec::new();
    let core = cluster.get("/api/v1").await?;
    add(&mut out, "", "v1", &core);
    let groups = cluster.get("/apis").await?;
    for g in groups
        .get("groups")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let name = g.get("name").and_then(Value::as_str).unwrap_or_default();
        let Some(version) = g
            .pointer("/preferredVersion/version")
            .or_else(|| g.pointer("/versions/0/version"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let list = cluster.get(&format!("/apis/{name}/{version}")).await?;
        add(&mut out, name, version, &list);
    }
    Ok(out)
}

fn add(out: &mut Vec<ResourceType>, group: &str, version: &str, list: &Value) {
    for r in list
        .get("resources")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
        let listable = r
            .get("verbs")
            .and_then(Value::as_array)
            .is_some_and(|v| v.iter().any(|v| v == "list"));
        // Subresources (`deployments/status`) are parts of their objects.
        if !listable || s("name").contains('/') {
            continue;
        }
        out.push(ResourceType {
            group: group.to_string(),
            version: version.to_string(),
            kind: s("kind").to_string(),
            plural: s("name").to_string(),
            namespaced: r
                .get("namespaced")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        });
    }
}

#[derive(Deserialize)]
struct Page {
    #[serde(default)]
    metadata: PageMeta,
    #[serde(default)]
    items: Vec<Value>,
}

#[derive(Deserialize, Default)]
struct PageMeta {
    #[serde(rename = "continue", default)]
    next: Option<String>,
}

/// Objects per page: large enough that a list is a few round trips, small
/// enough that a page of big objects stays a few MiB.
pub const PAGE: usize = 500;

/// A list of one type (in one namespace, or everywhere), read page by
/// page, each object with its `apiVersion` and `kind` filled in (list items
/// of built-in types carry neither).
pub struct Lister<'a> {
    cluster: &'a Cluster,
    t: &'a ResourceType,
    base: String,
    selector: String,
    token: Option<String>,
    done: bool,
}

impl<'a> Lister<'a> {
    /// `selector` is a label selector for the server (empty: everything).
    pub fn new(
        cluster: &'a Cluster,
        t: &'a ResourceType,
        namespace: Option<&str>,
        selector: &str,
    ) -> Self {
        Lister {
            cluster,
            t,
            base: t.collection(namespace),
            selector: selector.to_string(),
            token: None,
            done: false,
        }
    }

    /// The next page; `None` after the last.
    pub async fn next(&mut self) -> Result<Option<Vec<Value>>> {
        if self.done {
            return Ok(None);
        }
        // The serializer is not Send: built and dropped before the await.
        let query = {
            let mut q = url::form_urlencoded::Serializer::new(String::new());
            q.append_pair("limit", &PAGE.to_string());
            if !self.selector.is_empty() {
                q.append_pair("labelSelector", &self.selector);
            }
            if let Some(t) = &self.token {
                q.append_pair("continue", t);
            }
            q.finish()
        };
        let path = format!("{}?{query}", self.base);
        let page: Page = match self.cluster.try_get(&path).await? {
            Ok(p) => p,
            Err(r) if r.code == 410 => {
                return Err(Error::new(
                    ErrorKind::Unavailable,
                    format!(
                        "the list of {} expired while it was read ({}): the cluster changed faster than drctl read it",
                        self.t.qualified(),
                        r.message
                    ),
                )
                .with_guidance("run the backup again"));
            }
            Err(r) => return Err(self.cluster.refused("list", &self.base, &r)),
        };
        let api_version = self.t.api_version();
        let mut items = page.items;
        for item in &mut items {
            if let Some(o) = item.as_object_mut() {
                o.entry("apiVersion")
                    .or_insert_with(|| Value::String(api_version.clone()));
                o.entry("kind")
                    .or_insert_with(|| Value::String(self.t.kind.clone()));
            }
        }
        match page.metadata.next.filter(|t| !t.is_empty()) {
            Some(t) => self.token = Some(t),
            None => self.done = true,
        }
        Ok(Some(items))
    }
}
