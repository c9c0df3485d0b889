//! What a resource backup or restore covers: which namespaces, which
//! resource types, which labels, and which cluster-scoped objects.
//!
//! The same [`Scope`] filters the API server's objects when backing up and a
//! backup's objects when restoring, so `--include-namespaces shop` means the
//! same on both sides. Everything is validated when the scope is built, before
//! a backup row exists or an object is applied.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::Value;

use super::selector::LabelSelector;
use crate::error::{Error, Result};

/// An object labelled `drctl.io/exclude-from-backup=true` is left out of
/// backups; on a Namespace, so is everything in it.
pub const OPT_OUT_LABEL: &str = "drctl.io/exclude-from-backup";

/// Kinds left out unless an include pattern names them exactly: Events and
/// Leases are ephemeral (a restored Event is noise, a restored Lease a stale
/// leader claim), and Nodes belong to the machines, not to the backup.
pub const DEFAULT_EXCLUDED: &[&str] = &[
    "events",
    "events.events.k8s.io",
    "leases.coordination.k8s.io",
    "nodes",
];

/// `--include-cluster-resources`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClusterResources {
    /// All of them when no namespace filter is given; otherwise only those
    /// the chosen namespaces use: their Namespace objects, the PVs bound to
    /// their claims, the StorageClasses those name, the CRDs of their custom
    /// resources, ClusterRoles their bindings refer to and ClusterRoleBindings
    /// whose subjects live in them.
    Auto,
    /// Every cluster-scoped object of the selected resource types.
    True,
    /// None.
    False,
}

/// Whether a resource pattern names type `t`: its qualified name
/// (`deployments.apps`), or without a dot its plural or kind in any group.
fn type_hit(g: &Glob, t: &(impl TypeName + ?Sized)) -> bool {
    let kind = t.kind().to_ascii_lowercase();
    g.matches(&t.qualified())
        || (!g.as_str().contains('.') && (g.matches(t.plural()) || g.matches(&kind)))
}

/// A shell-style pattern: `*` is any run of characters, `?` one character.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn is_literal(&self) -> bool {
        !self.0.contains(['*', '?'])
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn matches(&self, s: &str) -> bool {
        fn m(p: &[u8], s: &[u8]) -> bool {
            match (p.first(), s.first()) {
                (None, None) => true,
                (Some(b'*'), _) => m(&p[1..], s) || (!s.is_empty() && m(p, &s[1..])),
                (Some(b'?'), Some(_)) => m(&p[1..], &s[1..]),
                (Some(a), Some(b)) if a == b => m(&p[1..], &s[1..]),
                _ => false,
            }
        }
        m(self.0.as_bytes(), s.as_bytes())
    }
}

/// Whether `s` is a valid namespace name (an RFC 1123 label).
pub fn is_namespace_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

fn bad_namespace(flag: &str, s: &str) -> Error {
    Error::config(format!("{flag}: `{s}` is not a namespace name")).with_guidance(
        "namespace names are lowercase letters, digits and '-', start and end with a letter \
         or digit, and are at most 63 characters; patterns may use * and ?",
    )
}

fn namespace_globs(flag: &str, given: &[String]) -> Result<Vec<Glob>> {
    given
        .iter()
        .map(|s| {
            let s = s.trim();
            // A pattern is valid when some name matches it: its literal
            // characters are those of a name.
            let ok = if s.contains(['*', '?']) {
                s.len() <= 63
                    && s.bytes().all(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || b"-*?".contains(&c)
                    })
            } else {
                is_namespace_name(s)
            };
            ok.then(|| Glob(s.to_string()))
                .ok_or_else(|| bad_namespace(flag, s))
        })
        .collect()
}

fn resource_globs(flag: &str, given: &[String]) -> Result<Vec<Glob>> {
    given
        .iter()
        .map(|s| {
            let s = s.trim();
            let ok = !s.is_empty()
                && s.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-.*?".contains(&c));
            ok.then(|| Glob(s.to_string())).ok_or_else(|| {
                Error::config(format!("{flag}: `{s}` is not a resource pattern")).with_guidance(
                    "name resources as `kubectl api-resources` does, in lowercase: `configmaps`, \
                     `deployments.apps`, `*.example.com`",
                )
            })
        })
        .collect()
}

/// A resource type as scopes see it.
pub trait TypeName {
    fn group(&self) -> &str;
    fn plural(&self) -> &str;
    fn kind(&self) -> &str;

    /// `deployments.apps`, or `configmaps` in the core group.
    fn qualified(&self) -> String {
        if self.group().is_empty() {
            self.plural().to_string()
        } else {
            format!("{}.{}", self.plural(), self.group())
        }
    }
}

/// The scope flags as given, before validation.
#[derive(Debug, Clone, Default)]
pub struct ScopeFlags {
    pub include_namespaces: Vec<String>,
    pub exclude_namespaces: Vec<String>,
    pub include_resources: Vec<String>,
    pub exclude_resources: Vec<String>,
    pub selector: Option<String>,
    pub cluster_resources: Option<ClusterResources>,
}

/// A validated scope.
#[derive(Debug, Clone)]
pub struct Scope {
    include_namespaces: Vec<Glob>,
    exclude_namespaces: Vec<Glob>,
    include_resources: Vec<Glob>,
    exclude_resources: Vec<Glob>,
    /// The selector as given (sent to the API server) and parsed (to filter
    /// a backup's objects on restore).
    selector: Option<(String, LabelSelector)>,
    pub cluster: ClusterResources,
}

impl Scope {
    pub fn new(f: &ScopeFlags) -> Result<Scope> {
        let selector = match f.selector.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(s) => Some((
                s.to_string(),
                LabelSelector::parse(s).map_err(|e| {
                    Error::config(format!("--selector: {e}")).with_guidance(
                        "write it as kubectl does: `app=web`, `tier in (front,back)`, `!canary`",
                    )
                })?,
            )),
        };
        Ok(Scope {
            include_namespaces: namespace_globs("--include-namespaces", &f.include_namespaces)?,
            exclude_namespaces: namespace_globs("--exclude-namespaces", &f.exclude_namespaces)?,
            include_resources: resource_globs("--include-resources", &f.include_resources)?,
            exclude_resources: resource_globs("--exclude-resources", &f.exclude_resources)?,
            selector,
            cluster: f.cluster_resources.unwrap_or(ClusterResources::Auto),
        })
    }

    /// Whether no include pattern narrows the namespaces.
    pub fn all_namespaces(&self) -> bool {
        self.include_namespaces.is_empty()
    }

    /// The namespaces named when every include pattern is a plain name:
    /// those can be read one by one, without the right to list namespaces
    /// or to read across the cluster.
    pub fn literal_namespaces(&self) -> Option<Vec<String>> {
        (!self.include_namespaces.is_empty()
            && self.include_namespaces.iter().all(Glob::is_literal))
        .then(|| {
            self.include_namespaces
                .iter()
                .map(|g| g.as_str().to_string())
                .filter(|n| self.namespace_selected(n))
                .collect()
        })
    }

    pub fn namespace_selected(&self, ns: &str) -> bool {
        (self.include_namespaces.is_empty()
            || self.include_namespaces.iter().any(|g| g.matches(ns)))
            && !self.exclude_namespaces.iter().any(|g| g.matches(ns))
    }

    /// Whether a resource type is in scope. A pattern matches the qualified
    /// name (`deployments.apps`); one without a dot also matches the plural
    /// or the kind in any group (`deployments`, `deployment`).
    pub fn resource_selected(&self, t: &impl TypeName) -> bool {
        let qualified = t.qualified();
        let hit = |g: &Glob| type_hit(g, t);
        if self.exclude_resources.iter().any(hit) {
            return false;
        }
        if DEFAULT_EXCLUDED.contains(&qualified.as_str()) {
            // Only an exact include brings these back, not a wildcard.
            return self
                .include_resources
                .iter()
                .any(|g| g.is_literal() && hit(g));
        }
        self.include_resources.is_empty() || self.include_resources.iter().any(hit)
    }

    /// The `--include-namespaces` patterns that match none of `names`:
    /// on restore, a typo that would otherwise restore nothing.
    pub fn unmatched_namespaces<'a>(&'a self, names: &[&str]) -> Vec<&'a str> {
        self.include_namespaces
            .iter()
            .filter(|g| !names.iter().any(|n| g.matches(n)))
            .map(Glob::as_str)
            .collect()
    }

    /// The `--include-resources` patterns that match none of `types`.
    pub fn unmatched_resources<'a, T: TypeName>(&'a self, types: &[&T]) -> Vec<&'a str> {
        self.include_resources
            .iter()
            .filter(|g| !types.iter().any(|t| type_hit(g, *t)))
            .map(Glob::as_str)
            .collect()
    }

    /// Whether every cluster-scoped object of a selected type is in scope
    /// (rather than only those the namespaces use).
    pub fn all_cluster_objects(&self) -> bool {
        match self.cluster {
            ClusterResources::True => true,
            ClusterResources::False => false,
            ClusterResources::Auto => self.all_namespaces(),
        }
    }

    pub fn selector(&self) -> Option<&str> {
        self.selector.as_ref().map(|(s, _)| s.as_str())
    }

    /// Whether an object's labels pass the selector.
    pub fn labels_match(&self, obj: &Value) -> bool {
        self.selector.as_ref().is_none_or(|(_, s)| s.matches(obj))
    }
}

/// Whether an object opted out of backups.
pub fn opted_out(obj: &Value) -> bool {
    obj.pointer("/metadata/labels")
        .and_then(|l| l.get(OPT_OUT_LABEL))
        .and_then(Value::as_str)
        == Some("true")
}

/// The cluster-scoped objects that namespaced objects use, gathered as the
/// namespaced objects go by (see [`ClusterResources::Auto`]).
#[derive(Debug, Default)]
pub struct Uses {
    /// (qualified resource, name)
    wanted: HashSet<(String, String)>,
}

fn str_at<'a>(obj: &'a Value, path: &str) -> Option<&'a str> {
    obj.pointer(path).and_then(Value::as_str)
}

impl Uses {
    /// Notes what a namespaced object (or an included cluster-scoped one)
    /// refers to.
    pub fn note(&mut self, t: &impl TypeName, obj: &Value) {
        let mut want = |res: &str, name: Option<&str>| {
            if let Some(n) = name.filter(|n| !n.is_empty()) {
                self.wanted.insert((res.to_string(), n.to_string()));
            }
        };
        if !t.group().is_empty() {
            // Custom resources need their definition; for built-in types
            // no CRD of that name exists, so this costs nothing.
            want(
                "customresourcedefinitions.apiextensions.k8s.io",
                Some(&t.qualified()),
            );
        }
        match t.qualified().as_str() {
            "persistentvolumeclaims" => {
                want("persistentvolumes", str_at(obj, "/spec/volumeName"));
                want(
                    "storageclasses.storage.k8s.io",
                    str_at(obj, "/spec/storageClassName"),
                );
            }
            "persistentvolumes" => want(
                "storageclasses.storage.k8s.io",
                str_at(obj, "/spec/storageClassName"),
            ),
            "rolebindings.rbac.authorization.k8s.io"
            | "clusterrolebindings.rbac.authorization.k8s.io"
                if str_at(obj, "/roleRef/kind") == Some("ClusterRole") =>
            {
                want(
                    "clusterroles.rbac.authorization.k8s.io",
                    str_at(obj, "/roleRef/name"),
                )
            }
            _ => {}
        }
    }

    /// Whether a cluster-scoped object is used by the selected namespaces.
    pub fn wants(&self, t: &impl TypeName, obj: &Value, scope: &Scope) -> bool {
        let name = str_at(obj, "/metadata/name").unwrap_or("");
        let q = t.qualified();
        match q.as_str() {
            "namespaces" => return scope.namespace_selected(name),
            "persistentvolumes"
                if str_at(obj, "/spec/claimRef/namespace")
                    .is_some_and(|ns| scope.namespace_selected(ns)) =>
            {
                return true;
            }
            "clusterrolebindings.rbac.authorization.k8s.io" => {
                let subjects = obj.get("subjects").and_then(Value::as_array);
                if subjects
                    .into_iter()
                    .flatten()
                    .any(|s| str_at(s, "/namespace").is_some_and(|ns| scope.namespace_selected(ns)))
                {
                    return true;
                }
            }
            _ => {}
        }
        self.wanted.contains(&(q, name.to_string()))
    }

    /// The order cluster-scoped types are gone through so that every
    /// object that makes another wanted comes before it.
    pub fn rank(qualified: &str) -> u8 {
        match qualified {
            "namespaces" => 0,
            "clusterrolebindings.rbac.authorization.k8s.io" => 1,
            "persistentvolumes" => 2,
            _ => 3,
        }
    }
}

/// The cluster-scoped types whose objects [`Uses::wants`] can take: in
/// `auto` mode no other cluster-scoped type is read or restored.
pub const RELATED: &[&str] = &[
    "namespaces",
    "persistentvolumes",
    "storageclasses.storage.k8s.io",
    "customresourcedefinitions.apiextensions.k8s.io",
    "clusterroles.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
];

/// `--namespace-mapping old=new,...`: restore the objects of `old` into `new`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct NamespaceMapping(BTreeMap<String, String>);

impl NamespaceMapping {
    pub fn parse(given: &[String]) -> Result<NamespaceMapping> {
        let mut map = BTreeMap::new();
        let mut targets = HashSet::new();
        for pair in given.iter().flat_map(|g| g.split(',')).map(str::trim) {
            if pair.is_empty() {
                continue;
            }
            let (old, new) = pair.split_once('=').ok_or_else(|| {
                Error::config(format!("--namespace-mapping: `{pair}` is not OLD=NEW"))
                    .with_guidance("write pairs like `shop=shop-restored,db=db-restored`")
            })?;
            let (old, new) = (old.trim(), new.trim());
            for n in [old, new] {
                if !is_namespace_name(n) {
                    return Err(bad_namespace("--namespace-mapping", n));
                }
            }
            if map.insert(old.to_string(), new.to_string()).is_some() {
                return Err(Error::config(format!(
                    "--namespace-mapping: `{old}` is mapped twice"
                )));
            }
            if !targets.insert(new.to_string()) {
                return Err(Error::config(format!(
                    "--namespace-mapping: two namespaces map to `{new}`"
                ))
                .with_guidance("objects of the same name would overwrite each other; map each to its own namespace"));
            }
        }
        Ok(NamespaceMapping(map))
    }

    /// Where objects of namespace `ns` go.
    pub fn map<'a>(&'a self, ns: &'a str) -> &'a str {
        self.0.get(ns).map_or(ns, String::as_str)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A target that is also a source namespace left where it is: the two
    /// namespaces' objects would land in one and overwrite each other.
    pub fn collides_with<'a>(&self, sources: impl IntoIterator<Item = &'a str>) -> Option<&str> {
        let sources: HashSet<&str> = sources.into_iter().collect();
        self.0
            .values()
            .find(|to| sources.contains(to.as_str()) && !self.0.contains_key(to.as_str()))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct T(&'static str, &'static str, &'static str);
    impl TypeName for T {
        fn group(&self) -> &str {
            self.0
        }
        fn plural(&self) -> &str {
            self.1
        }
        fn kind(&self) -> &str {
            self.2
        }
    }

    fn scope(f: ScopeFlags) -> Scope {
        Scope::new(&f).unwrap()
    }

    fn strings(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn globs_match_like_a_shell() {
        let g = |p: &str| Glob(p.into());
        assert!(g("shop-*").matches("shop-eu"));
        assert!(g("shop-*").matches("shop-"));
        assert!(!g("shop-*").matches("shop"));
        assert!(g("*.example.com").matches("widgets.example.com"));
        assert!(!g("*.example.com").matches("widgets.example.org"));
        assert!(g("db-?").matches("db-1") && !g("db-?").matches("db-10"));
        assert!(g("*").matches(""));
    }

    #[test]
    fn resource_patterns_match_qualified_names_plurals_and_kinds() {
        let deploy = T("apps", "deployments", "Deployment");
        let cm = T("", "configmaps", "ConfigMap");
        let widget = T("example.com", "widgets", "Widget");
        let s = scope(ScopeFlags {
            include_resources: strings(&["deployments.apps", "*.example.com"]),
            ..Default::default()
        });
        assert!(s.resource_selected(&deploy) && s.resource_selected(&widget));
        assert!(!s.resource_selected(&cm));
        let s = scope(ScopeFlags {
            include_resources: strings(&["deployment", "configmaps"]),
            ..Default::default()
        });
        assert!(s.resource_selected(&deploy) && s.resource_selected(&cm));
        let s = scope(ScopeFlags {
            exclude_resources: strings(&["secrets"]),
            ..Default::default()
        });
        assert!(!s.resource_selected(&T("", "secrets", "Secret")));
        assert!(s.resource_selected(&cm));
    }

    #[test]
    fn events_are_left_out_unless_named_exactly() {
        let ev = T("", "events", "Event");
        assert!(!scope(ScopeFlags::default()).resource_selected(&ev));
        let star = scope(ScopeFlags {
            include_resources: strings(&["*"]),
            ..Default::default()
        });
        assert!(!star.resource_selected(&ev));
        let named = scope(ScopeFlags {
            include_resources: strings(&["events"]),
            ..Default::default()
        });
        assert!(named.resource_selected(&ev));
    }

    #[test]
    fn namespace_flags_are_checked_and_matched() {
        let s = scope(ScopeFlags {
            include_namespaces: strings(&["shop-*", "db"]),
            exclude_namespaces: strings(&["shop-test"]),
            ..Default::default()
        });
        assert!(s.namespace_selected("shop-eu") && s.namespace_selected("db"));
        assert!(!s.namespace_selected("shop-test") && !s.namespace_selected("other"));
        assert_eq!(s.literal_namespaces(), None);
        let lit = scope(ScopeFlags {
            include_namespaces: strings(&["a", "b"]),
            ..Default::default()
        });
        assert_eq!(lit.literal_namespaces(), Some(strings(&["a", "b"])));
        for bad in ["Shop", "-a", "a_b", "", &"x".repeat(64)] {
            let e = Scope::new(&ScopeFlags {
                include_namespaces: strings(&[bad]),
                ..Default::default()
            })
            .unwrap_err();
            assert!(e.what().contains("is not a namespace name"), "{bad}");
        }
        assert!(
            Scope::new(&ScopeFlags {
                selector: Some("app in web".into()),
                ..Default::default()
            })
            .is_err()
        );
    }

    #[test]
    fn mappings_are_pairs_of_names_each_target_once() {
        let m = NamespaceMapping::parse(&strings(&["shop=shop2,db=db2"])).unwrap();
        assert_eq!(m.map("shop"), "shop2");
        assert_eq!(m.map("other"), "other");
        for bad in ["shop", "shop=", "Shop=x", "a=x,b=x", "a=x,a=y"] {
            assert!(NamespaceMapping::parse(&strings(&[bad])).is_err(), "{bad}");
        }
    }

    #[test]
    fn auto_takes_what_the_namespaces_use() {
        let s = scope(ScopeFlags {
            include_namespaces: strings(&["shop"]),
            ..Default::default()
        });
        assert!(!s.all_cluster_objects());
        let mut uses = Uses::default();
        let pvc = serde_json::json!({"spec": {"volumeName": "pv-1", "storageClassName": "fast"}});
        uses.note(
            &T("", "persistentvolumeclaims", "PersistentVolumeClaim"),
            &pvc,
        );
        uses.note(
            &T("example.com", "widgets", "Widget"),
            &serde_json::json!({}),
        );
        let rb = serde_json::json!({"roleRef": {"kind": "ClusterRole", "name": "view"}});
        uses.note(
            &T("rbac.authorization.k8s.io", "rolebindings", "RoleBinding"),
            &rb,
        );
        let named = |n: &str| serde_json::json!({"metadata": {"name": n}});
        let pv = T("", "persistentvolumes", "PersistentVolume");
        assert!(uses.wants(&pv, &named("pv-1"), &s));
        assert!(!uses.wants(&pv, &named("pv-2"), &s));
        let crd = T(
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            "CustomResourceDefinition",
        );
        assert!(uses.wants(&crd, &named("widgets.example.com"), &s));
        assert!(!uses.wants(&crd, &named("gadgets.example.com"), &s));
        let cr = T("rbac.authorization.k8s.io", "clusterroles", "ClusterRole");
        assert!(uses.wants(&cr, &named("view"), &s) && !uses.wants(&cr, &named("admin"), &s));
        let ns = T("", "namespaces", "Namespace");
        assert!(uses.wants(&ns, &named("shop"), &s) && !uses.wants(&ns, &named("db"), &s));
        let sc = T("storage.k8s.io", "storageclasses", "StorageClass");
        assert!(uses.wants(&sc, &named("fast"), &s));
    }
}
