//! Restoring a namespace set: its resources and every claim's data, with
//! the workloads applied only once their data is in place.
//!
//! ```text
//! plan (resources as by `restore resources`, claims get new volumes)
//!   → apply everything before the workloads (namespaces, RBAC, config,
//!     claims)
//!   → per claim: a helper pod on the claim's node mounts it (binding it
//!     where the class waits for a first consumer), the node's agent
//!     writes the data into the mount, the helper is deleted
//!   → apply the workloads (a workload whose claim did not get its data
//!     is held back: it would start on an empty volume)
//! ```
//! The coordinator (this process) holds the identity and answers each
//! agent's offer with a grant for that one backup ([`crate::repo::grant`]);
//! the data goes from the store to the node, never through here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::resources::plan::{Action, Outcome, Phase, Step};
use super::resources::{self, Options as ResourceOptions};
use crate::agent::helper::{self, Helper};
use crate::agent::restore::RestoreJob;
use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::Manifest;

/// How to restore a set.
pub struct Options {
    pub resources: ResourceOptions,
    /// A claim's job no agent claims within this is given up.
    pub agent_timeout: Duration,
    /// How long a helper pod may take to start (its volume bound and
    /// mounted).
    pub pod_timeout: Duration,
    /// The whole data phase.
    pub timeout: Duration,
    /// The image of the helper pods: they only hold the mount open.
    pub helper_image: String,
    /// Where the data of a claim backed up on node OLD goes instead: a
    /// rebuilt cluster's nodes have other names.
    pub node_mapping: HashMap<String, String>,
}

/// A volume member of the set, as read before the plan.
pub struct VolumeMember {
    pub backup_id: Uuid,
    /// `<namespace>/<claim>`, as backed up.
    pub name: String,
    /// The node its data was read on.
    pub node: Option<String>,
    pub bytes: u64,
}

/// What happens to one claim's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimAction {
    Restore,
    Skip,
    Fail,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClaimOutcome {
    Restored,
    Skipped,
    Failed,
}

/// One claim of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct ClaimStep {
    /// `<namespace>/<claim>` restored into.
    pub claim: String,
    /// As backed up, when mapped elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub backup_id: Uuid,
    /// Where the helper pod runs and the agent writes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node it was backed up on, when `--node-mapping` sends it
    /// elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_node: Option<String>,
    pub bytes: u64,
    pub action: ClaimAction,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<ClaimOutcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub helper_pod: Option<String>,
    #[serde(skip)]
    block: bool,
}

impl ClaimStep {
    fn namespace_and_name(&self) -> (&str, &str) {
        self.claim.split_once('/').unwrap_or(("", &self.claim))
    }
}

/// What a set restore did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub set_id: Uuid,
    pub restore_id: Uuid,
    pub dry_run: bool,
    pub resources: resources::Report,
    pub claims: Vec<ClaimStep>,
    pub seconds: f64,
}

impl Report {
    /// Objects and claims not restored.
    pub fn failures(&self) -> usize {
        self.resources.summary.failed
            + self
                .claims
                .iter()
                .filter(|c| {
                    c.outcome == Some(ClaimOutcome::Failed)
                        || (self.dry_run && c.action == ClaimAction::Fail)
                })
                .count()
    }
}

/// Refuses a backup that is not a set.
pub fn check_set(manifest: &Manifest) -> Result<()> {
    if manifest.kind != "namespaces" {
        return Err(Error::config(format!(
            "backup {} is a {} backup, not a namespace set",
            manifest.backup_id, manifest.kind
        ))
        .with_guidance(format!("restore it with `drctl restore {}`", manifest.kind)));
    }
    Ok(())
}

/// Plans the claims: each volume member's claim, as the resource plan
/// treats it.
fn plan_claims(steps: &[Step], volumes: &[VolumeMember], opts: &Options) -> Vec<ClaimStep> {
    let mapping = &opts.resources.mapping;
    let mut out = Vec::new();
    for v in volumes {
        let (ns, name) = v.name.split_once('/').unwrap_or(("", &v.name));
        let target = mapping.map(ns).to_string();
        let step = steps.iter().find(|s| {
            s.ty.group.is_empty()
                && s.kind == "PersistentVolumeClaim"
                && s.namespace.as_deref() == Some(target.as_str())
                && s.name == name
        });
        let block = step
            .and_then(|s| serde_json::from_slice::<Value>(&s.body).ok())
            .and_then(|b| {
                b.pointer("/spec/volumeMode")
                    .and_then(Value::as_str)
                    .map(|m| m == "Block")
            })
            .unwrap_or(false);
        let node = v
            .node
            .as_ref()
            .map(|n| opts.node_mapping.get(n).unwrap_or(n).clone());
        let from_node = v.node.clone().filter(|n| opts.node_mapping.contains_key(n));
        let (action, reason) = match (step.map(|s| s.action), &node) {
            (None, _) => (
                ClaimAction::Fail,
                Some("the set's resources hold no such claim".to_string()),
            ),
            (_, None) => (
                ClaimAction::Fail,
                Some(
                    "the set does not record the node it was read on (say where with \
                     --node-mapping)"
                        .to_string(),
                ),
            ),
            (Some(Action::Create | Action::Recreate), _) => (ClaimAction::Restore, None),
            (Some(Action::Skip), _) => (
                ClaimAction::Skip,
                Some("the claim exists and is left as it is, with its data".into()),
            ),
            (Some(Action::Update), _) => (
                ClaimAction::Skip,
                Some(
                    "the claim exists: --existing update does not replace a volume's data \
                     (--existing recreate does)"
                        .into(),
                ),
            ),
            (Some(Action::Fail), _) => (
                ClaimAction::Fail,
                Some("its claim cannot be restored (see the objects)".into()),
            ),
        };
        out.push(ClaimStep {
            claim: format!("{target}/{name}"),
            from: (target != ns).then(|| v.name.clone()),
            backup_id: v.backup_id,
            node,
            from_node,
            bytes: v.bytes,
            action,
            reason,
            outcome: None,
            helper_pod: None,
            block,
        });
    }
    out.sort_by(|a, b| a.claim.cmp(&b.claim));
    out
}

/// Whether a workload's pods use claim `claim` (of the workload's
/// namespace): its pod template's claims, a StatefulSet's claims from its
/// templates (`<template>-<set>-<ordinal>`).
pub fn uses_claim(kind: &str, name: &str, body: &Value, claim: &str) -> bool {
    let spec = match kind {
        "Pod" => body.get("spec"),
        "CronJob" => body.pointer("/spec/jobTemplate/spec/template/spec"),
        _ => body.pointer("/spec/template/spec"),
    };
    let direct = spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|v| {
            v.pointer("/persistentVolumeClaim/claimName")
                .and_then(Value::as_str)
                == Some(claim)
        });
    direct
        || (kind == "StatefulSet"
            && body
                .pointer("/spec/volumeClaimTemplates")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|t| t.pointer("/metadata/name").and_then(Value::as_str))
                .any(|t| {
                    claim
                        .strip_prefix(&format!("{t}-{name}-"))
                        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                }))
}

/// Plans, and unless `dry_run` carries out, the restore of set `set`
/// whose resources member is `res_manifest` (its objects `loaded`).
#[allow(clippy::too_many_arguments)]
pub async fn restore(
    repo: Arc<Repository>,
    catalog: &Catalog,
    cluster: &Cluster,
    set: &Manifest,
    res_manifest: &Manifest,
    loaded: Vec<(usize, Value)>,
    volumes: Vec<VolumeMember>,
    opts: &Options,
    dry_run: bool,
) -> Result<Report> {
    let started = Instant::now();
    let restore_id = Uuid::now_v7();
    let mut steps = resources::plan(cluster, res_manifest, loaded, &opts.resources).await?;
    let mut claims = plan_claims(&steps, &volumes, opts);
    if !dry_run {
        tracing::info!(set = %set.backup_id, restore = %restore_id, steps = steps.len(),
            claims = claims.len(), "restoring set");
        // Everything the workloads need, the claims included.
        let split = steps
            .iter()
            .position(|s| s.phase >= Phase::Workloads)
            .unwrap_or(steps.len());
        let (before, after) = steps.split_at_mut(split);
        resources::apply(cluster, before, opts.resources.keep, &|| {}).await;
        for c in claims
            .iter_mut()
            .filter(|c| c.action == ClaimAction::Restore)
        {
            let (ns, name) = c.namespace_and_name();
            let made = before.iter().find(|s| {
                s.kind == "PersistentVolumeClaim"
                    && s.namespace.as_deref() == Some(ns)
                    && s.name == name
            });
            if let Some(s) = made
                && !matches!(s.outcome, Some(Outcome::Created | Outcome::Recreated))
            {
                c.outcome = Some(ClaimOutcome::Failed);
                c.reason = Some(format!(
                    "its claim was not created: {}",
                    s.reason.as_deref().unwrap_or("see the objects")
                ));
            }
        }
        restore_data(&repo, catalog, cluster, restore_id, &mut claims, opts).await?;
        // A workload whose claim has no data would start on an empty
        // volume (a database would initialise a new one): held back.
        let failed: Vec<(String, String)> = claims
            .iter()
            .filter(|c| c.outcome == Some(ClaimOutcome::Failed))
            .map(|c| {
                let (ns, name) = c.namespace_and_name();
                (ns.to_string(), name.to_string())
            })
            .collect();
        for s in after.iter_mut().filter(|s| s.phase == Phase::Workloads) {
            if s.action == Action::Skip || s.action == Action::Fail {
                continue;
            }
            let Ok(body) = serde_json::from_slice::<Value>(&s.body) else {
                continue;
            };
            if let Some((_, claim)) = failed.iter().find(|(ns, claim)| {
                s.namespace.as_deref() == Some(ns.as_str())
                    && uses_claim(&s.kind, &s.name, &body, claim)
            }) {
                s.action = Action::Fail;
                s.reason = Some(format!(
                    "held back: the data of its claim {claim} was not restored, and it would \
                     start on an empty volume"
                ));
            }
        }
        resources::apply(cluster, after, opts.resources.keep, &|| {}).await;
    } else {
        for c in &mut claims {
            if c.action == ClaimAction::Restore {
                c.helper_pod = Some(helper::name(
                    "drctl-restore",
                    c.namespace_and_name().1,
                    restore_id,
                ));
            }
        }
    }
    for c in &mut claims {
        if c.outcome.is_none() && !dry_run {
            c.outcome = Some(match c.action {
                ClaimAction::Restore => ClaimOutcome::Failed,
                ClaimAction::Skip => ClaimOutcome::Skipped,
                ClaimAction::Fail => ClaimOutcome::Failed,
            });
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(Report {
        set_id: set.backup_id,
        restore_id,
        dry_run,
        resources: resources::report(
            cluster,
            res_manifest.backup_id,
            &opts.resources,
            dry_run,
            steps,
            seconds,
        ),
        claims,
        seconds,
    })
}

/// The data phase: helper pods, the agents' jobs (answering their key
/// offers with grants), the helpers removed. Each claim ends with its
/// outcome; an error only when the catalog or the API fails outright.
async fn restore_data(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    cluster: &Cluster,
    restore_id: Uuid,
    claims: &mut [ClaimStep],
    opts: &Options,
) -> Result<()> {
    let todo: Vec<usize> = (0..claims.len())
        .filter(|&i| claims[i].action == ClaimAction::Restore && claims[i].outcome.is_none())
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    let repo_id = catalog
        .ensure_repository(&repo.config, &repo.store.location())
        .await?;
    // Helper pods, all at once: each node's agent then works its queue.
    let mut helpers: Vec<(usize, String)> = Vec::new();
    for &i in &todo {
        let c = &mut claims[i];
        let name = helper::name("drctl-restore", c.namespace_and_name().1, restore_id);
        c.helper_pod = Some(name.clone());
        let (ns, claim) = c.namespace_and_name();
        let pod = Helper {
            namespace: ns.to_string(),
            name: name.clone(),
            claim: claim.to_string(),
            node: c.node.clone().unwrap_or_default(),
            block: c.block,
            read_only: false,
            image: opts.helper_image.clone(),
            purpose: ("drctl.io/restore", restore_id),
        };
        match helper::start(cluster, &pod).await {
            Ok(()) => helpers.push((i, name)),
            Err(why) => {
                c.outcome = Some(ClaimOutcome::Failed);
                c.reason = Some(why);
            }
        }
    }
    let mut jobs: Vec<(usize, Uuid)> = Vec::new();
    for (i, name) in &helpers {
        let c = &mut claims[*i];
        let (ns, claim) = c.namespace_and_name();
        let (ns, claim) = (ns.to_string(), claim.to_string());
        match helper::running(cluster, &ns, name, opts.pod_timeout).await {
            Ok(uid) => {
                let job = RestoreJob {
                    restore_id,
                    backup_id: c.backup_id,
                    namespace: ns.clone(),
                    claim: claim.clone(),
                    pod: name.clone(),
                    pod_uid: uid,
                };
                let node = c.node.clone().expect("planned with a node");
                let id = catalog
                    .enqueue_node_job(
                        repo_id,
                        "volume-restore",
                        &node,
                        &format!("{restore_id}/{ns}/{claim}"),
                        &serde_json::to_value(&job).expect("jobs serialise"),
                    )
                    .await?;
                tracing::info!(claim = %c.claim, node = %node, job = %id, "volume restore queued");
                jobs.push((*i, id));
            }
            Err(why) => {
                c.outcome = Some(ClaimOutcome::Failed);
                c.reason = Some(why);
            }
        }
    }
    let ids: Vec<Uuid> = jobs.iter().map(|(_, id)| *id).collect();
    let waited = {
        let wait = crate::backup::namespaces::wait_node_jobs(
            catalog,
            repo_id,
            &ids,
            opts.agent_timeout,
            opts.timeout,
            "restore",
        );
        let backups = jobs
            .iter()
            .map(|(i, id)| (*id, claims[*i].backup_id))
            .collect();
        let answer = answer_offers(repo, catalog, &ids, backups);
        tokio::select! {
            w = wait => w,
            e = answer => Err(e),
        }
    };
    // The helpers go whatever happened: a workload's pod needs the volume.
    let pods: Vec<(String, String)> = helpers
        .iter()
        .map(|(i, name)| (claims[*i].namespace_and_name().0.to_string(), name.clone()))
        .collect();
    helper::remove(cluster, &pods).await;
    let rows = waited?;
    for (i, id) in &jobs {
        let c = &mut claims[*i];
        match rows.iter().find(|r| r.id == *id) {
            Some(r) if r.state == "succeeded" => c.outcome = Some(ClaimOutcome::Restored),
            Some(r) => {
                c.outcome = Some(ClaimOutcome::Failed);
                c.reason = Some(
                    r.reason
                        .clone()
                        .unwrap_or_else(|| format!("the agent's job ended {}", r.state)),
                );
            }
            None => {
                c.outcome = Some(ClaimOutcome::Failed);
                c.reason = Some("its job is gone from the catalog".into());
            }
        }
    }
    Ok(())
}

/// Answers the agents' key offers with grants, until dropped. Returns only
/// on an error (the catalog unreachable, a grant that cannot be made).
async fn answer_offers(
    repo: &Arc<Repository>,
    catalog: &Catalog,
    ids: &[Uuid],
    backups: HashMap<Uuid, Uuid>,
) -> Error {
    let mut made: HashMap<Uuid, Arc<crate::repo::crypto::Grant>> = HashMap::new();
    loop {
        let offers = match catalog.open_offers(ids).await {
            Ok(o) => o,
            Err(e) => return e,
        };
        for (job, generation, recipient) in offers {
            let backup = backups[&job];
            let grant = match made.get(&backup) {
                Some(g) => g.clone(),
                None => {
                    let r = repo.clone();
                    let g = tokio::task::spawn_blocking(move || {
                        crate::repo::grant::for_backup(&r, backup)
                    })
                    .await
                    .map_err(|e| Error::new(ErrorKind::Failed, format!("grant task died: {e}")));
                    match g {
                        Ok(Ok(g)) => {
                            let g = Arc::new(g);
                            made.insert(backup, g.clone());
                            g
                        }
                        Ok(Err(e)) | Err(e) => return e,
                    }
                }
            };
            let sealed = match grant.seal_to(&recipient) {
                Ok(s) => s,
                Err(e) => return e,
            };
            tracing::info!(job = %job, backup = %backup, files = grant.len(), "grant sent");
            if let Err(e) = catalog
                .answer_offer(job, generation, &recipient, &sealed)
                .await
            {
                return e;
            }
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn workloads_use_the_claims_of_their_pod_templates_and_statefulset_templates() {
        let sts = json!({"spec": {"volumeClaimTemplates": [{"metadata": {"name": "data"}}],
            "template": {"spec": {"volumes": [{"name": "x", "persistentVolumeClaim": {"claimName": "shared"}}]}}}});
        assert!(uses_claim("StatefulSet", "db", &sts, "data-db-0"));
        assert!(uses_claim("StatefulSet", "db", &sts, "data-db-12"));
        assert!(uses_claim("StatefulSet", "db", &sts, "shared"));
        assert!(!uses_claim("StatefulSet", "db", &sts, "data-db-x"));
        assert!(!uses_claim("StatefulSet", "db", &sts, "data-dbb-0"));
        assert!(!uses_claim("StatefulSet", "db", &sts, "data-db-"));
        let pod =
            json!({"spec": {"volumes": [{"persistentVolumeClaim": {"claimName": "pgdata"}}]}});
        assert!(uses_claim("Pod", "pg-0", &pod, "pgdata"));
        assert!(!uses_claim("Pod", "pg-0", &pod, "other"));
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {"volumes": [
            {"persistentVolumeClaim": {"claimName": "reports"}}]}}}}}});
        assert!(uses_claim("CronJob", "nightly", &cron, "reports"));
        let web = json!({"spec": {"template": {"spec": {"containers": []}}}});
        assert!(!uses_claim("Deployment", "web", &web, "pgdata"));
    }
}
