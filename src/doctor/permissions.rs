//! What each role may do in the Kubernetes API, asked of the API server
//! itself with SelfSubjectAccessReviews: one review per verb, resource and
//! API group the role's ClusterRole in `deploy/` grants, so a missing
//! binding, a ClusterRole an overlay trimmed or an aggregation that did not
//! happen shows up as the exact verbs and resources that are refused, before
//! a backup meets the first 403.
//!
//! The rules below are the ones in `deploy/base/*/rbac.yaml` and
//! `deploy/base/restore/clusterrole.yaml`, copied (the image is built
//! without `deploy/`); a unit test reads the manifests and fails when the
//! two differ. Rules a site adds (custom resource groups, the opt-in helper
//! pod role) are not checked.

use std::path::Path;

use futures::StreamExt;
use serde_json::{Value, json};

use super::{Check, Options, Role, describe};
use crate::cluster::{Cluster, ConnectOptions};
use crate::config::Config;

/// One RBAC rule: every verb on every resource of every group listed.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];

/// ClusterRole `drctl-server-read-builtin` (deploy/base/server/rbac.yaml).
const SERVER: &[Rule] = &[
    Rule {
        groups: &[""],
        resources: &[
            "configmaps",
            "endpoints",
            "events",
            "limitranges",
            "namespaces",
            "nodes",
            "persistentvolumeclaims",
            "persistentvolumes",
            "pods",
            "podtemplates",
            "replicationcontrollers",
            "resourcequotas",
            "secrets",
            "serviceaccounts",
            "services",
        ],
        verbs: READ,
    },
    Rule {
        groups: &[
            "admissionregistration.k8s.io",
            "apiextensions.k8s.io",
            "apiregistration.k8s.io",
            "apps",
            "autoscaling",
            "batch",
            "certificates.k8s.io",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "events.k8s.io",
            "flowcontrol.apiserver.k8s.io",
            "metrics.k8s.io",
            "networking.k8s.io",
            "node.k8s.io",
            "policy",
            "rbac.authorization.k8s.io",
            "scheduling.k8s.io",
            "storage.k8s.io",
        ],
        resources: &["*"],
        verbs: READ,
    },
];

/// ClusterRole `drctl-drill-worker-builtin` (deploy/base/worker/rbac.yaml).
const WORKER: &[Rule] = &[
    Rule {
        groups: &[""],
        resources: &[
            "configmaps",
            "endpoints",
            "limitranges",
            "namespaces",
            "persistentvolumeclaims",
            "pods",
            "podtemplates",
            "replicationcontrollers",
            "resourcequotas",
            "secrets",
            "serviceaccounts",
            "services",
        ],
        verbs: WRITE,
    },
    Rule {
        groups: &[
            "apps",
            "autoscaling",
            "batch",
            "coordination.k8s.io",
            "discovery.k8s.io",
            "networking.k8s.io",
            "policy",
        ],
        resources: &["*"],
        verbs: WRITE,
    },
    Rule {
        groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "rolebindings"],
        verbs: WRITE,
    },
    Rule {
        groups: &["apiextensions.k8s.io"],
        resources: &["customresourcedefinitions"],
        verbs: READ,
    },
];

/// ClusterRole `drctl-agent` (deploy/base/agent/rbac.yaml).
const AGENT: &[Rule] = &[Rule {
    groups: &[""],
    resources: &["pods", "persistentvolumeclaims", "persistentvolumes"],
    verbs: &["get"],
}];

/// ClusterRole `drctl-restore` (deploy/base/restore/clusterrole.yaml).
const RESTORE: &[Rule] = &[
    Rule {
        groups: &["*"],
        resources: &["*"],
        verbs: WRITE,
    },
    Rule {
        groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "clusterroles"],
        verbs: &["escalate"],
    },
    Rule {
        groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "clusterroles"],
        verbs: &["bind"],
    },
];

/// The rules `role` is granted in deploy/, and the ClusterRole that holds them.
pub fn rules(role: Role) -> (&'static str, &'static [Rule]) {
    match role {
        Role::Server => ("drctl-server-read-builtin", SERVER),
        Role::Worker => ("drctl-drill-worker-builtin", WORKER),
        Role::Agent => ("drctl-agent", AGENT),
        Role::Restore => ("drctl-restore", RESTORE),
    }
}

/// Every (group, resource, verb) the rules grant.
fn triples(rules: &[Rule]) -> Vec<(&'static str, &'static str, &'static str)> {
    let mut out = Vec::new();
    for r in rules {
        for g in r.groups {
            for res in r.resources {
                for v in r.verbs {
                    out.push((*g, *res, *v));
                }
            }
        }
    }
    out
}

/// What fixes a refusal: the binding deploy/ makes for the role.
fn fix(role: Role) -> &'static str {
    match role {
        Role::Server => {
            "apply deploy/base/server/rbac.yaml: ClusterRole drctl-server-read (aggregating \
             drctl-server-read-builtin) bound to ServiceAccount drctl-system/drctl-server, the \
             account drctl server runs as"
        }
        Role::Worker => {
            "apply deploy/base/worker/rbac.yaml: ClusterRole drctl-drill-worker (aggregating \
             drctl-drill-worker-builtin) bound to ServiceAccount drctl-system/drctl-drill-worker"
        }
        Role::Agent => {
            "apply deploy/base/agent/rbac.yaml: ClusterRole drctl-agent bound to ServiceAccount \
             drctl-node/drctl-agent"
        }
        Role::Restore => {
            "bind drctl-restore for the incident: kubectl create clusterrolebinding \
             drctl-restore-oncall --clusterrole=drctl-restore --user=YOU (docs/operations.md)"
        }
    }
}

const NAME: &str = "kubernetes";
const REVIEWS: &str = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";

/// Connects as the role would and asks a review for every permission its
/// ClusterRole grants. Without any cluster configured, skipped.
pub(super) async fn check(config: &Config, opts: &Options) -> Check {
    let kubeconfig = opts
        .kubeconfig
        .clone()
        .or_else(|| config.kubernetes.kubeconfig.clone());
    if let Some(why) = no_cluster(kubeconfig.is_some()) {
        return Check::skip(NAME, why);
    }
    let cluster = match Cluster::connect(&ConnectOptions {
        kubeconfig,
        context: opts.context.clone(),
    })
    .await
    {
        Ok(c) => c,
        Err(e) => {
            return Check::from_error(
                NAME,
                &e,
                "check the kubeconfig (kubernetes.kubeconfig, --kubeconfig) and that the API \
                 server is reachable",
            );
        }
    };
    let (role_name, rules) = rules(opts.role);
    let wanted = triples(rules);
    let answers: Vec<_> = futures::stream::iter(wanted.iter().copied())
        .map(|t| {
            let cluster = &cluster;
            async move { (t, review(cluster, t).await) }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut denied = Vec::new();
    for (t, answer) in answers {
        match answer {
            Ok(true) => {}
            Ok(false) => denied.push(t),
            Err(check) => return check,
        }
    }
    let who = format!("{} at {}", cluster.credentials.source.as_str(), cluster.url);
    if denied.is_empty() {
        return Check::pass(
            NAME,
            format!(
                "all {} permissions of {role_name} (role {}) are allowed to {who}",
                wanted.len(),
                opts.role.as_str()
            ),
        );
    }
    denied.sort();
    let shown: Vec<String> = denied.iter().take(8).map(|t| permission(*t)).collect();
    let more = denied.len().saturating_sub(shown.len());
    Check::fail(
        NAME,
        format!(
            "{} of {} permissions of {role_name} (role {}) are not allowed to {who}: {}{}",
            denied.len(),
            wanted.len(),
            opts.role.as_str(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ),
        fix(opts.role),
    )
}

/// `list secrets`, `create deployments.apps`, `bind clusterroles.rbac…`.
fn permission((group, resource, verb): (&str, &str, &str)) -> String {
    match group {
        "" => format!("{verb} {resource}"),
        g => format!("{verb} {resource}.{g}"),
    }
}

/// Why there is no cluster to ask, when there is none: no kubeconfig
/// (configured, given, `$KUBECONFIG` or `~/.kube/config`) and not in a pod.
/// The same order `Cluster::connect` looks in.
fn no_cluster(kubeconfig_given: bool) -> Option<String> {
    if kubeconfig_given {
        return None;
    }
    let env = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty());
    let home = std::env::var_os("HOME")
        .map(|h| Path::new(&h).join(".kube/config"))
        .filter(|p| p.exists());
    let in_pod = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
        && Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token").exists();
    if env.is_some() || home.is_some() || in_pod {
        return None;
    }
    Some(
        "no cluster configured: no kubernetes.kubeconfig, --kubeconfig, $KUBECONFIG or \
         ~/.kube/config, and not in a pod"
            .to_string(),
    )
}

/// Asks whether the caller may `verb` `resource` in `group` in every
/// namespace. A server that cannot answer is a failed check (the Err).
async fn review(
    cluster: &Cluster,
    (group, resource, verb): (&str, &str, &str),
) -> Result<bool, Check> {
    let body = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"group": group, "resource": resource, "verb": verb}},
    });
    let answer = cluster
        .send::<Value>(
            "POST",
            REVIEWS,
            Some("application/json"),
            serde_json::to_vec(&body).expect("JSON serialises"),
        )
        .await
        .map_err(|e| {
            Check::from_error(NAME, &e, "check that the API server is reachable from here")
        })?;
    match answer {
        Ok(review) => Ok(review
            .pointer("/status/allowed")
            .and_then(Value::as_bool)
            .unwrap_or(false)),
        Err(r) if r.code == 404 => Err(Check::fail(
            NAME,
            format!(
                "the API server at {} does not answer SelfSubjectAccessReview (404 on {REVIEWS}), \
                 so the permissions cannot be checked",
                cluster.url
            ),
            "check them by hand: kubectl auth can-i --list (as the account drctl runs as)",
        )),
        Err(r) => {
            let e = cluster.refused("POST", REVIEWS, &r);
            Err(Check::fail(
                NAME,
                describe(&e),
                "every authenticated user may ask SelfSubjectAccessReviews (ClusterRole \
                 system:basic-user); check the credentials in the kubeconfig",
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Deserialize;

    use super::*;

    /// The (group, resource, verb) triples the ClusterRole `name` in the
    /// manifest `file` (under deploy/base/) grants.
    fn granted(file: &str, name: &str) -> BTreeSet<(String, String, String)> {
        let path = format!("{}/deploy/base/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut out = BTreeSet::new();
        let mut found = false;
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).expect("a YAML document");
            if v["kind"] != "ClusterRole" || v["metadata"]["name"] != name {
                continue;
            }
            found = true;
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .into_iter()
                    .flatten()
                    .map(|s| s.as_str().expect("a string").to_string())
                    .collect()
            };
            for rule in v["rules"].as_array().expect("rules") {
                for g in strings(&rule["apiGroups"]) {
                    for r in strings(&rule["resources"]) {
                        for verb in strings(&rule["verbs"]) {
                            out.insert((g.clone(), r.clone(), verb));
                        }
                    }
                }
            }
        }
        assert!(found, "{path} has no ClusterRole {name}");
        out
    }

    /// The doctor checks exactly what deploy/ grants each role: a rule
    /// added to or removed from a manifest must be added here too.
    #[test]
    fn the_rules_are_the_manifests() {
        for (role, file) in [
            (Role::Server, "server/rbac.yaml"),
            (Role::Worker, "worker/rbac.yaml"),
            (Role::Agent, "agent/rbac.yaml"),
            (Role::Restore, "restore/clusterrole.yaml"),
        ] {
            let (name, rules) = rules(role);
            let ours: BTreeSet<(String, String, String)> = triples(rules)
                .into_iter()
                .map(|(g, r, v)| (g.to_string(), r.to_string(), v.to_string()))
                .collect();
            assert_eq!(ours, granted(file, name), "{role:?}: {name} in {file}");
        }
    }

    #[test]
    fn permissions_read_as_kubectl_writes_them() {
        assert_eq!(permission(("", "secrets", "list")), "list secrets");
        assert_eq!(permission(("apps", "*", "create")), "create *.apps");
    }
}
