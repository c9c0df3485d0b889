//! What a backed-up object loses before it is applied: the fields the API
//! server sets (they belong to the old object, and a server refuses or
//! misreads some of them), and its namespace when it is mapped.

use serde_json::{Map, Value};

use crate::resources::scope::NamespaceMapping;

/// Which server-set fields are kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct Keep {
    /// `status` (applied through the status subresource).
    pub status: bool,
    /// A Service's `clusterIP`/`clusterIPs`: kept only where the address is
    /// free on the target cluster.
    pub service_ips: bool,
    /// A Service's `nodePort`s and `healthCheckNodePort`.
    pub node_ports: bool,
}

/// Metadata the server sets on every object, or that names the old one.
const SERVER_METADATA: &[&str] = &[
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "managedFields",
    "selfLink",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    // Owners get new uids when restored; a reference to the old uid would
    // have the garbage collector delete the object. Objects whose
    // controller is restored too are left to it (see `plan`).
    "ownerReferences",
];

fn obj(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()
}

/// Sanitises `o` (a backed-up object) in place for applying.
pub fn sanitize(o: &mut Value, keep: Keep, mapping: &NamespaceMapping) {
    let kind = o
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let group = o
        .get("apiVersion")
        .and_then(Value::as_str)
        .and_then(|v| v.rsplit_once('/'))
        .map_or("", |(g, _)| g)
        .to_string();
    if let Some(meta) = o.get_mut("metadata").and_then(obj) {
        for f in SERVER_METADATA {
            meta.remove(*f);
        }
        if let Some(Value::String(ns)) = meta.get_mut("namespace") {
            *ns = mapping.map(ns).to_string();
        }
        if kind == "Namespace" && group.is_empty() {
            if let Some(Value::String(name)) = meta.get_mut("name") {
                *name = mapping.map(name).to_string();
            }
            let name = meta.get("name").cloned();
            if let (Some(name), Some(labels)) = (name, meta.get_mut("labels").and_then(obj))
                && labels.contains_key("kubernetes.io/metadata.name")
            {
                labels.insert("kubernetes.io/metadata.name".into(), name);
            }
        }
    }
    if !keep.status {
        obj(o).map(|m| m.remove("status"));
    }
    match (group.as_str(), kind.as_str()) {
        ("", "Service") => {
            if let Some(spec) = o.get_mut("spec").and_then(obj) {
                let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
                if !keep.service_ips && !headless {
                    spec.remove("clusterIP");
                    spec.remove("clusterIPs");
                }
                if !keep.node_ports {
                    spec.remove("healthCheckNodePort");
                    for p in spec
                        .get_mut("ports")
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        obj(p).map(|p| p.remove("nodePort"));
                    }
                }
            }
        }
        ("", "Pod") => {
            // The scheduler picks a node; the old one may be gone.
            if let Some(spec) = o.get_mut("spec").and_then(obj) {
                spec.remove("nodeName");
            }
        }
        ("", "PersistentVolume") => {
            if let Some(claim) = o.pointer_mut("/spec/claimRef").and_then(obj) {
                claim.remove("uid");
                claim.remove("resourceVersion");
                if let Some(Value::String(ns)) = claim.get_mut("namespace") {
                    *ns = mapping.map(ns).to_string();
                }
            }
        }
        (
            "admissionregistration.k8s.io",
            "ValidatingWebhookConfiguration" | "MutatingWebhookConfiguration",
        ) => {
            // A copy's webhooks call the copy's services.
            for w in o
                .get_mut("webhooks")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(Value::String(ns)) = w.pointer_mut("/clientConfig/service/namespace") {
                    *ns = mapping.map(ns).to_string();
                }
            }
        }
        ("apiregistration.k8s.io", "APIService") => {
            if let Some(Value::String(ns)) = o.pointer_mut("/spec/service/namespace") {
                *ns = mapping.map(ns).to_string();
            }
        }
        ("networking.k8s.io", "NetworkPolicy") => {
            // Peers chosen by namespace name (the label every namespace
            // carries) follow the mapping.
            for rules in ["ingress", "egress"] {
                for rule in o
                    .pointer_mut(&format!("/spec/{rules}"))
                    .and_then(Value::as_array_mut)
                    .into_iter()
                    .flatten()
                {
                    for peer in rule
                        .get_mut(if rules == "ingress" { "from" } else { "to" })
                        .and_then(Value::as_array_mut)
                        .into_iter()
                        .flatten()
                    {
                        if let Some(Value::String(ns)) = peer.pointer_mut(
                            "/namespaceSelector/matchLabels/kubernetes.io~1metadata.name",
                        ) {
                            *ns = mapping.map(ns).to_string();
                        }
                    }
                }
            }
        }
        ("rbac.authorization.k8s.io", "RoleBinding" | "ClusterRoleBinding") => {
            for s in o
                .get_mut("subjects")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if let Some(Value::String(ns)) = s.get_mut("namespace") {
                    *ns = mapping.map(ns).to_string();
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mappings_reach_webhooks_api_services_and_network_policies() {
        let m = NamespaceMapping::parse(&["shop=shop-copy".into()]).unwrap();
        let mut hook = json!({"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "ValidatingWebhookConfiguration", "metadata": {"name": "h"},
            "webhooks": [{"name": "w", "clientConfig": {"service": {"namespace": "shop", "name": "hook"}}}]});
        sanitize(&mut hook, Keep::default(), &m);
        assert_eq!(
            hook["webhooks"][0]["clientConfig"]["service"]["namespace"],
            "shop-copy"
        );
        let mut api = json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
            "metadata": {"name": "v1.x"}, "spec": {"service": {"namespace": "shop", "name": "api"}}});
        sanitize(&mut api, Keep::default(), &m);
        assert_eq!(api["spec"]["service"]["namespace"], "shop-copy");
        let mut np = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "p", "namespace": "shop"},
            "spec": {"ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "shop"}}}]}],
                     "egress": [{"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "other"}}}]}]}});
        sanitize(&mut np, Keep::default(), &m);
        assert_eq!(
            np["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "shop-copy"
        );
        assert_eq!(
            np["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "other"
        );
    }
    use serde_json::json;

    fn mapping(s: &str) -> NamespaceMapping {
        NamespaceMapping::parse(&[s.to_string()]).unwrap()
    }

    #[test]
    fn server_set_fields_go_and_user_fields_stay() {
        let mut o = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u", "resourceVersion": "7",
                "creationTimestamp": "t", "managedFields": [], "generation": 2,
                "labels": {"app": "web"}, "annotations": {"a": "b"},
                "ownerReferences": [{"uid": "x"}]},
            "spec": {"clusterIP": "10.0.0.5", "clusterIPs": ["10.0.0.5"], "type": "NodePort",
                "ports": [{"port": 80, "nodePort": 30080}], "selector": {"app": "web"}},
            "status": {"loadBalancer": {}}
        });
        sanitize(&mut o, Keep::default(), &mapping("shop=shop2"));
        assert_eq!(
            o,
            json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": "web", "namespace": "shop2",
                    "labels": {"app": "web"}, "annotations": {"a": "b"}},
                "spec": {"type": "NodePort", "ports": [{"port": 80}], "selector": {"app": "web"}}
            })
        );
    }

    #[test]
    fn preserved_fields_and_headless_services_are_kept() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "h"},
            "spec": {"clusterIP": "None", "ports": [{"port": 80, "nodePort": 30001}]},
            "status": {"x": 1}});
        let mut o = svc.clone();
        sanitize(&mut o, Keep::default(), &NamespaceMapping::default());
        assert_eq!(o["spec"]["clusterIP"], "None");
        let mut o = svc.clone();
        let keep = Keep {
            status: true,
            service_ips: true,
            node_ports: true,
        };
        sanitize(&mut o, keep, &NamespaceMapping::default());
        assert_eq!(o["spec"], svc["spec"]);
        assert_eq!(o["status"], svc["status"]);
    }

    #[test]
    fn mappings_reach_namespaces_bindings_and_volumes() {
        let m = mapping("shop=shop2");
        let mut ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}});
        sanitize(&mut ns, Keep::default(), &m);
        assert_eq!(ns["metadata"]["name"], "shop2");
        assert_eq!(
            ns["metadata"]["labels"]["kubernetes.io/metadata.name"],
            "shop2"
        );
        let mut rb = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": "r", "namespace": "shop"},
            "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "shop"},
                         {"kind": "User", "name": "ann"}]});
        sanitize(&mut rb, Keep::default(), &m);
        assert_eq!(rb["subjects"][0]["namespace"], "shop2");
        assert!(rb["subjects"][1].get("namespace").is_none());
        let mut pv = json!({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "pv"},
            "spec": {"claimRef": {"name": "data", "namespace": "shop", "uid": "u", "resourceVersion": "1"}}});
        sanitize(&mut pv, Keep::default(), &m);
        assert_eq!(
            pv["spec"]["claimRef"],
            json!({"name": "data", "namespace": "shop2"})
        );
        let mut pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
            "spec": {"nodeName": "n1", "containers": []}});
        sanitize(&mut pod, Keep::default(), &m);
        assert!(pod["spec"].get("nodeName").is_none());
    }
}
