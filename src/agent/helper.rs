//! Helper pods: a pod that only holds a claim mounted on a chosen node, so
//! that node's agent finds the claim's data where the kubelet mounts it.
//! A set backup uses one (read-only) for a claim no pod mounts; a set
//! restore uses one per claim, which also binds a claim whose class waits
//! for its first consumer.

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use crate::cluster::Cluster;

/// The helpers' image when none is configured: it runs nothing but holds
/// the mount.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/pause:3.10";

/// One helper pod.
pub struct Helper {
    pub namespace: String,
    pub name: String,
    pub claim: String,
    pub node: String,
    /// A raw block claim (`volumeDevices`).
    pub block: bool,
    pub read_only: bool,
    pub image: String,
    /// The label that says what it serves (`drctl.io/restore` = the
    /// restore's id, `drctl.io/backup` = the set's).
    pub purpose: (&'static str, Uuid),
}

/// `<prefix>-<claim>-<last 8 hex of id>`, at most 63 characters.
pub fn name(prefix: &str, claim: &str, id: Uuid) -> String {
    let tag = &id.simple().to_string()[24..];
    let mut base = format!("{prefix}-{claim}");
    base.truncate(63 - 1 - tag.len());
    format!("{}-{tag}", base.trim_end_matches(['-', '.']))
}

/// Creates the helper pod on its node. For a claim not bound yet, the
/// node goes on the claim as the scheduler would put it
/// (`volume.kubernetes.io/selected-node`), so a class that waits for the
/// first consumer provisions the volume there.
pub async fn start(cluster: &Cluster, h: &Helper) -> std::result::Result<(), String> {
    let (ns, claim, node) = (&h.namespace, &h.claim, &h.node);
    let claim_url = format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}");
    let pvc: Value = match cluster.try_get(&claim_url).await {
        Ok(Ok(v)) => v,
        Ok(Err(r)) => return Err(format!("cannot read the claim: {} {}", r.code, r.message)),
        Err(e) => return Err(e.what().to_string()),
    };
    if pvc
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .is_none()
    {
        let patch = json!({"metadata": {"annotations": {
            "volume.kubernetes.io/selected-node": node}}});
        match cluster
            .send::<Value>(
                "PATCH",
                &claim_url,
                Some("application/merge-patch+json"),
                serde_json::to_vec(&patch).unwrap(),
            )
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(r)) => {
                return Err(format!(
                    "cannot mark the claim for node {node}: {} {}",
                    r.code, r.message
                ));
            }
            Err(e) => return Err(e.what().to_string()),
        }
    }
    let mount = if h.block {
        json!({"volumeDevices": [{"name": "data", "devicePath": "/dev/drctl-data"}]})
    } else {
        json!({"volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": h.read_only}]})
    };
    let mut container = json!({
        "name": "hold",
        "image": h.image,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "1m", "memory": "8Mi"}, "limits": {"memory": "32Mi"}},
    });
    container
        .as_object_mut()
        .unwrap()
        .extend(mount.as_object().unwrap().clone());
    let pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": h.name,
            "namespace": ns,
            "labels": {
                "app.kubernetes.io/managed-by": "drctl",
                h.purpose.0: h.purpose.1.to_string(),
            },
            "annotations": {"drctl.io/purpose": "holds the claim mounted for drctl agent"},
        },
        "spec": {
            "nodeName": node,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "securityContext": {"seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [container],
            "volumes": [{"name": "data", "persistentVolumeClaim": {
                "claimName": claim, "readOnly": h.read_only}}],
        },
    });
    match cluster
        .send::<Value>(
            "POST",
            &format!("/api/v1/namespaces/{ns}/pods"),
            Some("application/json"),
            serde_json::to_vec(&pod).unwrap(),
        )
        .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(r)) => Err(format!(
            "cannot create helper pod {}: {} {}",
            h.name, r.code, r.message
        )),
        Err(e) => Err(e.what().to_string()),
    }
}

/// Waits until the helper pod runs (its volume bound and mounted); its uid.
pub async fn running(
    cluster: &Cluster,
    ns: &str,
    name: &str,
    timeout: Duration,
) -> std::result::Result<String, String> {
    let url = format!("/api/v1/namespaces/{ns}/pods/{name}");
    let deadline = Instant::now() + timeout;
    let mut last: Value;
    loop {
        match cluster.try_get::<Value>(&url).await {
            Ok(Ok(p)) => {
                match p.pointer("/status/phase").and_then(Value::as_str) {
                    Some("Running") => {
                        return p
                            .pointer("/metadata/uid")
                            .and_then(Value::as_str)
                            .map(str::to_string)
                            .ok_or_else(|| format!("helper pod {name} has no uid"));
                    }
                    Some(phase @ ("Failed" | "Succeeded")) => {
                        return Err(format!(
                            "helper pod {name} ended ({phase}) before the agent was done"
                        ));
                    }
                    _ => {}
                }
                last = p;
            }
            Ok(Err(r)) => return Err(format!("helper pod {name}: {} {}", r.code, r.message)),
            Err(e) => return Err(e.what().to_string()),
        }
        if Instant::now() > deadline {
            let said: Vec<String> = last
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c.get("message").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            return Err(format!(
                "helper pod {name} did not run within {} s{} (is the claim bound, the image \
                 pullable, the node up? `kubectl -n {ns} describe pod {name}`)",
                timeout.as_secs(),
                if said.is_empty() {
                    String::new()
                } else {
                    format!(": {}", said.join("; "))
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the helper pods `(namespace, name)` and waits (a while) until
/// they are gone: their volumes are then unmounted and free for the
/// workloads' pods.
pub async fn remove(cluster: &Cluster, pods: &[(String, String)]) {
    for (ns, name) in pods {
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}");
        if let Err(e) = cluster
            .send::<Value>("DELETE", &url, Some("application/json"), b"{}".to_vec())
            .await
        {
            tracing::warn!(pod = %name, error = %e, "helper pod not deleted");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    for (ns, name) in pods {
        let url = format!("/api/v1/namespaces/{ns}/pods/{name}");
        loop {
            if let Ok(Err(r)) = cluster.try_get::<Value>(&url).await
                && r.code == 404
            {
                break;
            }
            if Instant::now() > deadline {
                tracing::warn!(pod = %name, namespace = %ns, "helper pod still there after 60 s");
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
