//! A namespace backup set: the resources of the chosen namespaces and the
//! data of every PersistentVolumeClaim they use, as one backup with one id
//! and one status. The resources are read here, through the API; each
//! claim's data is read by the `drctl agent` of the node whose pod mounts
//! it (a volume job for that node), so volume data never passes through
//! the API server or this process. A claim that cannot be read — no pod
//! mounts it, no agent on its node, the agent died, the pod moved — is
//! named in the set's problems and the set is `partial`, never silently
//! complete.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::agent::VolumeJob;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::manifest::{MANIFEST_FORMAT, Manifest};
use crate::resources::scope::Scope;

/// How long a set waits.
#[derive(Debug, Clone)]
pub struct SetOptions {
    /// A claim's job that no agent has claimed after this is given up:
    /// no agent runs on that node.
    pub agent_timeout: Duration,
    /// How long a helper pod (for a claim no pod mounts) may take to run.
    pub pod_timeout: Duration,
    /// The helper pods' image.
    pub helper_image: String,
    /// The whole set, the volume backups included.
    pub timeout: Duration,
    /// How long the set and its resources are kept (and locked).
    pub retain_until: Option<chrono::DateTime<Utc>>,
}

/// What a set did.
#[derive(Debug, Serialize)]
pub struct SetSummary {
    pub backup_id: Uuid,
    pub name: String,
    /// `complete`, or `partial` when a claim could not be backed up.
    pub status: String,
    pub namespaces: Vec<String>,
    pub members: Vec<Member>,
    /// Claims not backed up, each with its node and why.
    pub problems: Vec<ClaimProblem>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Member {
    pub backup_id: Uuid,
    pub kind: String,
    pub name: String,
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClaimProblem {
    pub claim: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    pub reason: String,
}

pub async fn backup_namespaces(
    repo: Arc<crate::repo::Repository>,
    config: &crate::config::Config,
    catalog: &Catalog,
    cluster: &Cluster,
    scope: &Scope,
    name: &str,
    opts: SetOptions,
) -> Result<SetSummary> {
    let started = Instant::now();
    let retain_until = opts.retain_until;
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    let set_id = Uuid::now_v7();
    catalog
        .start_backup(set_id, repo_id, "namespaces", name, None)
        .await?;
    let body = async {
        // The claims and who mounts them, read before the resources so a
        // claim made meanwhile is in neither rather than in one.
        let namespaces = selected_namespaces(cluster, scope).await?;
        let claims = claims_and_pods(cluster, &namespaces).await?;
        let writer = super::Writer::new(repo.clone(), config, retain_until);
        let quiet: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(|_| {});
        // Not the set's own name: `NAME@latest` names the set alone.
        let res_name = format!("{name}.resources");
        let res =
            super::backup_resources(writer, catalog, cluster, scope, &res_name, quiet).await?;
        catalog.join_set(res.backup_id, set_id, &json!({})).await?;
        let mut members = vec![Member {
            backup_id: res.backup_id,
            kind: "resources".into(),
            name: res_name,
            status: res.status.clone(),
            node: None,
        }];
        let mut problems = Vec::new();
        let mut jobs = Vec::new();
        // A claim no pod mounts is mounted read-only by a helper pod on a
        // node with an agent.
        let busy: Vec<String> = claims
            .iter()
            .filter_map(|c| c.pod.as_ref().map(|p| p.node.clone()))
            .collect();
        // All helpers are started first, then waited for: they start
        // together, as a restore's do.
        let mut helpers: Vec<(String, String)> = Vec::new();
        let mut starting: Vec<(usize, String, String)> = Vec::new();
        let mut claims = claims;
        for (i, c) in claims.iter().enumerate().filter(|(_, c)| c.pod.is_none()) {
            let key = format!("{}/{}", c.namespace, c.claim);
            let Some(node) = helper_node(cluster, &c.pvc, &busy).await else {
                problems.push(ClaimProblem {
                    claim: key,
                    node: None,
                    reason: "no running pod mounts it and no node for a helper pod is known (no \
                             selected-node annotation, no node affinity on its volume, no other \
                             claim of the set on a node)"
                        .into(),
                });
                continue;
            };
            let name = crate::agent::helper::name("drctl-backup", &c.claim, set_id);
            let h = crate::agent::helper::Helper {
                namespace: c.namespace.clone(),
                name: name.clone(),
                claim: c.claim.clone(),
                node: node.clone(),
                block: c.pvc.pointer("/spec/volumeMode").and_then(Value::as_str) == Some("Block"),
                read_only: true,
                image: opts.helper_image.clone(),
                purpose: ("drctl.io/backup", set_id),
            };
            match crate::agent::helper::start(cluster, &h).await {
                Ok(()) => {
                    helpers.push((c.namespace.clone(), name.clone()));
                    starting.push((i, name, node));
                }
                Err(why) => problems.push(ClaimProblem {
                    claim: key,
                    node: Some(node),
                    reason: format!("no running pod mounts it, and {why}"),
                }),
            }
        }
        for (i, name, node) in starting {
            let c = &mut claims[i];
            let key = format!("{}/{}", c.namespace, c.claim);
            match crate::agent::helper::running(cluster, &c.namespace, &name, opts.pod_timeout)
                .await
            {
                Ok(uid) => {
                    tracing::info!(claim = %key, node = %node, pod = %name, "helper pod mounts the claim");
                    c.pod = Some(PodOnNode { name, uid, node });
                }
                Err(why) => problems.push(ClaimProblem {
                    claim: key,
                    node: Some(node),
                    reason: format!("no running pod mounts it, and {why}"),
                }),
            }
        }
        for c in claims {
            let key = format!("{}/{}", c.namespace, c.claim);
            let Some(pod) = c.pod else {
                continue;
            };
            let job = VolumeJob {
                set_id,
                namespace: c.namespace.clone(),
                claim: c.claim.clone(),
                pod: pod.name,
                pod_uid: pod.uid,
                name: key.clone(),
                retain_until,
            };
            let params = serde_json::to_value(&job).expect("jobs serialise");
            let id = catalog
                .enqueue_node_job(
                    repo_id,
                    "volume",
                    &pod.node,
                    &format!("{set_id}/{key}"),
                    &params,
                )
                .await?;
            tracing::info!(claim = %key, node = %pod.node, job = %id, "volume job queued");
            jobs.push(id);
        }
        let done = wait_node_jobs(
            catalog,
            repo_id,
            &jobs,
            opts.agent_timeout,
            opts.timeout,
            "backup",
        )
        .await;
        crate::agent::helper::remove(cluster, &helpers).await;
        for j in done? {
            let claim = j
                .params
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("?")
                .to_string();
            match (j.state.as_str(), j.backup_id) {
                ("succeeded", Some(id)) => members.push(Member {
                    backup_id: id,
                    kind: "volume".into(),
                    name: claim,
                    status: "complete".into(),
                    node: Some(j.node),
                }),
                (_, backup) => {
                    if let Some(id) = backup {
                        members.push(Member {
                            backup_id: id,
                            kind: "volume".into(),
                            name: claim.clone(),
                            status: "partial".into(),
                            node: Some(j.node.clone()),
                        });
                    }
                    problems.push(ClaimProblem {
                        claim,
                        node: Some(j.node),
                        reason: j
                            .reason
                            .unwrap_or_else(|| format!("the job ended {}", j.state)),
                    });
                }
            }
        }
        Ok::<_, Error>((namespaces, members, problems))
    };
    let (namespaces, members, problems) = super::or_fail(catalog, set_id, body).await?;
    let status = if problems.is_empty() {
        "complete"
    } else {
        "partial"
    };
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        backup_id: set_id,
        repository_id: repo_id,
        kind: "namespaces".into(),
        name: name.to_string(),
        created_at: Utc::now(),
        parent: None,
        source: format!("namespaces {} on {}", namespaces.join(", "), cluster.url),
        status: status.into(),
        problems: problems
            .iter()
            .map(|p| crate::repo::manifest::Problem {
                path: p.claim.clone(),
                error: p.reason.clone(),
            })
            .collect(),
        entries: Vec::new(),
        chunks: Vec::new(),
        etcd: None,
        objects: Vec::new(),
        object_table: None,
        tree: None,
        packs: Vec::new(),
        totals: None,
        members: members.iter().map(|m| m.backup_id).collect(),
    };
    let summary = SetSummary {
        backup_id: set_id,
        name: name.into(),
        status: status.into(),
        namespaces,
        members,
        problems,
        seconds: started.elapsed().as_secs_f64(),
    };
    let stats = json!({
        "source": manifest.source,
        "seconds": summary.seconds,
        "members": summary.members,
        "problems": summary.problems,
    });
    let error = (!summary.problems.is_empty()).then(|| {
        format!(
            "{} claim(s) not backed up, first: {}: {}",
            summary.problems.len(),
            summary.problems[0].claim,
            summary.problems[0].reason
        )
    });
    super::or_fail(
        catalog,
        set_id,
        super::seal_and_finish(
            &repo,
            catalog,
            manifest,
            &[],
            None,
            &stats,
            error.as_deref(),
            retain_until,
        ),
    )
    .await?;
    Ok(summary)
}

/// Waits for the agents' jobs (a set's backups, `work` = "backup", or its
/// restores): gives up on one no agent claims within `agent_timeout`,
/// gives back the jobs of agents that stopped renewing their leases (as
/// the server's leader does), and stops at `timeout`.
pub(crate) async fn wait_node_jobs(
    catalog: &Catalog,
    repo_id: Uuid,
    jobs: &[Uuid],
    agent_timeout: Duration,
    timeout: Duration,
    work: &str,
) -> Result<Vec<crate::catalog::NodeJob>> {
    let deadline = Instant::now() + timeout;
    loop {
        catalog.reap_jobs(repo_id).await?;
        let now = Utc::now();
        let rows = catalog.node_jobs(jobs).await?;
        // An agent is alive while it works this set's jobs: a node's queue
        // is worked one job at a time, so a job waits for the agent's last
        // sign of life, not for its own turn.
        let mut alive: std::collections::HashMap<&str, chrono::DateTime<Utc>> = Default::default();
        for j in &rows {
            let seen = if j.state == "running" {
                Some(now)
            } else {
                j.finished_at.or(j.started_at)
            };
            if let Some(t) = seen {
                let e = alive.entry(j.node.as_str()).or_insert(t);
                *e = (*e).max(t);
            }
        }
        let mut open = 0;
        for j in &rows {
            match j.state.as_str() {
                "queued" => {
                    open += 1;
                    let since = alive
                        .get(j.node.as_str())
                        .map_or(j.queued_at, |t| (*t).max(j.queued_at));
                    let waited = (now - since).to_std().unwrap_or_default();
                    if waited > agent_timeout {
                        let why = format!(
                            "no drctl agent on node {} claimed it within {} s{}: is the agent \
                             running there (`kubectl -n drctl-node get pods -o wide`)?",
                            j.node,
                            agent_timeout.as_secs(),
                            if j.attempt > 0 {
                                format!(
                                    " after attempt {} stopped (the agent died mid-{work})",
                                    j.attempt
                                )
                            } else {
                                String::new()
                            }
                        );
                        catalog.abandon_node_job(j.id, &why).await?;
                    }
                }
                "running" => open += 1,
                _ => {}
            }
        }
        if open == 0 {
            return Ok(rows);
        }
        if Instant::now() > deadline {
            for j in rows.iter().filter(|j| j.state == "queued") {
                catalog
                    .abandon_node_job(j.id, "the set's timeout passed first")
                    .await?;
            }
            return Err(Error::new(
                ErrorKind::Failed,
                format!(
                    "{open} volume {work}(s) of the set still running after {} s",
                    timeout.as_secs()
                ),
            )
            .with_guidance("raise --timeout, or check the agents' logs"));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// The namespaces of the cluster the scope takes.
async fn selected_namespaces(cluster: &Cluster, scope: &Scope) -> Result<Vec<String>> {
    let list = cluster.get("/api/v1/namespaces").await?;
    let mut out: Vec<String> = list
        .get("items")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|n| n.pointer("/metadata/name").and_then(Value::as_str))
        .filter(|n| scope.namespace_selected(n))
        .map(str::to_string)
        .collect();
    out.sort();
    if out.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            "no namespace of the cluster matches --include-namespaces",
        )
        .with_guidance("`kubectl get namespaces` lists them"));
    }
    Ok(out)
}

struct ClaimUse {
    namespace: String,
    claim: String,
    pvc: Value,
    pod: Option<PodOnNode>,
}

/// The node for a helper pod of a claim no pod mounts: the node the claim
/// was provisioned for (`volume.kubernetes.io/selected-node`), else the
/// single node its volume's affinity allows (a local volume), else the
/// node of the first other claim of the set (an agent works there).
async fn helper_node(cluster: &Cluster, pvc: &Value, busy: &[String]) -> Option<String> {
    if let Some(n) = pvc
        .pointer("/metadata/annotations/volume.kubernetes.io~1selected-node")
        .and_then(Value::as_str)
    {
        return Some(n.to_string());
    }
    if let Some(pv) = pvc.pointer("/spec/volumeName").and_then(Value::as_str)
        && let Ok(pv) = cluster
            .get(&format!("/api/v1/persistentvolumes/{pv}"))
            .await
    {
        let hosts: Vec<&str> = pv
            .pointer("/spec/nodeAffinity/required/nodeSelectorTerms")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|t| t.get("matchExpressions").and_then(Value::as_array))
            .flatten()
            .filter(|e| e["key"] == "kubernetes.io/hostname" && e["operator"] == "In")
            .filter_map(|e| e["values"].as_array())
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        if hosts.len() == 1 {
            return Some(hosts[0].to_string());
        }
    }
    busy.first().cloned()
}

struct PodOnNode {
    name: String,
    uid: String,
    node: String,
}

/// Every claim of `namespaces`, each with a running pod on a node that
/// mounts it (the first by name, for a claim several pods share).
async fn claims_and_pods(cluster: &Cluster, namespaces: &[String]) -> Result<Vec<ClaimUse>> {
    let mut out = Vec::new();
    for ns in namespaces {
        let claims = cluster
            .get(&format!("/api/v1/namespaces/{ns}/persistentvolumeclaims"))
            .await?;
        let pods = cluster
            .get(&format!("/api/v1/namespaces/{ns}/pods"))
            .await?;
        let mut mounted: BTreeMap<String, PodOnNode> = BTreeMap::new();
        let mut pods: Vec<&Value> = pods
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .collect();
        pods.sort_by_key(|p| {
            p.pointer("/metadata/name")
                .and_then(Value::as_str)
                .map(str::to_string)
        });
        for p in pods {
            let phase = p.pointer("/status/phase").and_then(Value::as_str);
            if matches!(phase, Some("Succeeded" | "Failed")) {
                continue;
            }
            let (Some(name), Some(uid), Some(node)) = (
                p.pointer("/metadata/name").and_then(Value::as_str),
                p.pointer("/metadata/uid").and_then(Value::as_str),
                p.pointer("/spec/nodeName").and_then(Value::as_str),
            ) else {
                continue;
            };
            for v in p
                .pointer("/spec/volumes")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                if let Some(claim) = v
                    .pointer("/persistentVolumeClaim/claimName")
                    .and_then(Value::as_str)
                {
                    mounted.entry(claim.to_string()).or_insert(PodOnNode {
                        name: name.into(),
                        uid: uid.into(),
                        node: node.into(),
                    });
                }
            }
        }
        for c in claims
            .get("items")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(claim) = c.pointer("/metadata/name").and_then(Value::as_str) else {
                continue;
            };
            out.push(ClaimUse {
                namespace: ns.clone(),
                claim: claim.into(),
                pvc: c.clone(),
                pod: mounted.remove(claim),
            });
        }
    }
    Ok(out)
}
