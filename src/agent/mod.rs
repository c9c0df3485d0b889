//! `drctl agent`: one per node. It claims the volume jobs of its node from
//! the job queue, finds the claim's data where the kubelet mounted it for
//! the pod (`layout`), backs it up with the same pipeline as `drctl backup
//! volume`, and records the backup as a member of its set, with the claim,
//! volume, storage class and node. Volume data goes from the node to the
//! store: never through the API server or the control plane.
//!
//! It holds what a writer holds (recipients, the repository secret, the
//! catalog) and reads the API (pods, claims, volumes) to check that the
//! pod is still here and to find the volume's plugin. It also writes a
//! claim's data back for a set restore (`restore`), with a grant for that
//! one backup instead of the age identity.

pub mod helper;
pub mod layout;
pub mod restore;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::catalog::{Catalog, Claim};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::source::volume::Source;

/// What a volume job asks (the `params` of its row).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct VolumeJob {
    pub set_id: Uuid,
    pub namespace: String,
    pub claim: String,
    /// The pod that mounts the claim on this node, and its uid when the
    /// job was queued: a pod of the same name with another uid has moved.
    pub pod: String,
    pub pod_uid: String,
    /// The backup's name: `<namespace>/<claim>`.
    pub name: String,
    /// How long the backup is kept (and locked): the set's.
    #[serde(default)]
    pub retain_until: Option<chrono::DateTime<chrono::Utc>>,
}

pub struct Agent {
    pub node: String,
    pub kubelet_root: PathBuf,
    pub host_root: PathBuf,
    pub catalog: Catalog,
    pub repo: Arc<Repository>,
    pub repo_id: Uuid,
    pub config: Arc<Config>,
    pub cluster: Cluster,
    pub holder: String,
}

/// Claims and runs this node's volume jobs until `stop`.
pub async fn run(agent: Agent, stop: CancellationToken) -> Result<()> {
    let ttl = Duration::from_secs(agent.config.server.job_lease_seconds);
    tracing::info!(node = %agent.node, kubelet_root = %agent.kubelet_root.display(),
        holder = %agent.holder, "drctl agent started");
    loop {
        if stop.is_cancelled() {
            return Ok(());
        }
        let claimed = agent
            .catalog
            .claim_node_job(agent.repo_id, &agent.holder, &agent.node, ttl)
            .await;
        match claimed {
            Ok(Some((claim, params))) => work(&agent, claim, params, ttl).await,
            Ok(None) => {
                tokio::select! {
                    _ = stop.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_millis(300)) => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim a volume job; retrying");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    }
}

/// One job: its backup beside its heartbeat; the job ends with the backup
/// or with why there is none.
async fn work(agent: &Agent, claim: Claim, params: Value, ttl: Duration) {
    let beat = async {
        loop {
            tokio::time::sleep(ttl / 3).await;
            if let Err(e) = agent.catalog.heartbeat_job(&claim, ttl).await {
                return e;
            }
        }
    };
    let outcome = tokio::select! {
        o = async {
            if claim.job.kind == "volume-restore" {
                restore::run(agent, &claim, &params).await
            } else {
                back_up(agent, &params).await
            }
        } => o,
        lost = beat => {
            tracing::error!(job = %claim.job.id, error = %lost, "volume job abandoned: its lease is gone");
            return;
        }
    };
    let (state, reason, backup, result) = match outcome {
        Ok((id, status, result)) => {
            let state = if status == "complete" {
                "succeeded"
            } else {
                "partial"
            };
            let reason = (state != "succeeded").then(|| format!("backup {id} is {status}"));
            (state, reason, Some(id), result)
        }
        Err(e) => {
            tracing::error!(job = %claim.job.id, error = %e.report(), "volume job failed");
            (
                "failed",
                Some(e.report().trim_end().to_string()),
                None,
                e.to_json(),
            )
        }
    };
    if let Err(e) = agent
        .catalog
        .finish_job(&claim, state, reason.as_deref(), backup, Some(&result))
        .await
    {
        tracing::error!(job = %claim.job.id, error = %e, "volume job result not recorded");
    }
}

/// Where the kubelet put claim `ns/claim` for pod `pod` (uid `pod_uid`) on
/// this node: the data path, whether it is a raw block device, the claim
/// and its volume's name. Errors when the pod is not that pod on this
/// node any more, or the path is not where the layout says.
async fn find_mount(
    agent: &Agent,
    ns: &str,
    claim: &str,
    pod_name: &str,
    pod_uid: &str,
) -> Result<(PathBuf, bool, Value, String)> {
    let get = |path: String| async move {
        match agent.cluster.try_get::<Value>(&path).await? {
            Ok(v) => Ok(v),
            Err(r) => Err(agent.cluster.refused("GET", &path, &r)),
        }
    };
    // The pod must still be the one the job was queued for, on this node.
    let pod = get(format!("/api/v1/namespaces/{ns}/pods/{pod_name}")).await;
    let here = |p: &Value| {
        p.pointer("/metadata/uid").and_then(Value::as_str) == Some(pod_uid)
            && p.pointer("/spec/nodeName").and_then(Value::as_str) == Some(agent.node.as_str())
    };
    match pod {
        Ok(p) if here(&p) => {}
        // The API down is not the pod gone.
        Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e),
        _ => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!(
                    "pod {ns}/{pod_name} (uid {pod_uid}) that mounts claim {claim} is no longer \
                     on node {}: it moved or was deleted after the job was queued",
                    agent.node
                ),
            )
            .with_guidance("run it again: the claim is queued for the node that mounts it now"));
        }
    }
    let pvc = get(format!(
        "/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}"
    ))
    .await?;
    let pv_name = pvc
        .pointer("/spec/volumeName")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                format!("claim {ns}/{claim} is not bound to a PersistentVolume"),
            )
        })?
        .to_string();
    let pv = get(format!("/api/v1/persistentvolumes/{pv_name}")).await?;
    let volume = layout::volume_of(&pv)?;
    let path = layout::data_path(
        &agent.kubelet_root,
        &agent.host_root,
        pod_uid,
        &pv_name,
        &volume,
    );
    let block = matches!(volume, layout::Volume::Block { .. });
    let found = std::fs::metadata(&path);
    if !found
        .as_ref()
        .is_ok_and(|m| if block { !m.is_dir() } else { m.is_dir() })
    {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "claim {ns}/{claim} (volume {pv_name}) is not at {}, where the kubelet lays out \
                 pod {pod_name} on this node ({})",
                path.display(),
                match found {
                    Ok(_) if block => "a directory, not a block device".to_string(),
                    Ok(_) => "not a directory".to_string(),
                    Err(e) => e.to_string(),
                }
            ),
        )
        .with_guidance(
            "check --kubelet-root (the kubelet's --root-dir) and that the agent mounts it \
             with HostToContainer propagation; docs/agent.md shows the layout",
        ));
    }
    Ok((path, block, pvc, pv_name))
}

fn job_params<T: serde::de::DeserializeOwned>(params: &Value) -> Result<T> {
    serde_json::from_value(params.clone()).map_err(|e| {
        Error::new(
            ErrorKind::Config,
            format!("a job this agent cannot read: {e}"),
        )
        .with_guidance("run the same drctl version on every node and the server")
    })
}

async fn back_up(agent: &Agent, params: &Value) -> Result<(Uuid, String, Value)> {
    let job: VolumeJob = job_params(params)?;
    let (ns, claim) = (&job.namespace, &job.claim);
    let (path, block, pvc, pv_name) = find_mount(agent, ns, claim, &job.pod, &job.pod_uid).await?;
    let source = if block {
        Source::Block(path.clone())
    } else {
        Source::Dir(path.clone())
    };
    let writer = crate::backup::Writer::new(agent.repo.clone(), &agent.config, job.retain_until);
    tracing::info!(claim = %format!("{ns}/{claim}"), path = %path.display(), "volume backup started");
    let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
    let s = crate::backup::backup_volume(writer, &agent.catalog, &job.name, source, quiet).await?;
    let facts = json!({
        "claim": {
            "namespace": ns,
            "name": claim,
            "uid": pvc.pointer("/metadata/uid"),
            "storage_class": pvc.pointer("/spec/storageClassName"),
            "size": pvc.pointer("/spec/resources/requests/storage"),
            "volume_mode": if block { "Block" } else { "Filesystem" },
        },
        "volume": pv_name,
        "node": agent.node,
        "pod": job.pod,
    });
    agent
        .catalog
        .join_set(s.backup_id, job.set_id, &facts)
        .await?;
    let result = serde_json::to_value(&s).expect("summaries serialise");
    Ok((s.backup_id, s.status.clone(), result))
}
