//! The resources drill: restore every namespaced object into scratch
//! namespaces `drill-<ns>-<short id>` (the restore's own namespace
//! mapping), read each back and compare it with the backup's sanitised
//! object, then wait for workloads to become ready where the cluster runs
//! controllers. Cluster-scoped objects are never restored by a drill: they
//! are shared by the whole cluster, and a drill must not change production.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::report::CheckStatus;
use super::{DrillSpec, Env, Outcome, Phase, Stopwatch, Target, short_id};
use crate::cluster::{Cluster, ConnectOptions};
use crate::error::Result;
use crate::resources::scope::{ClusterResources, NamespaceMapping, Scope, ScopeFlags};
use crate::restore::resources::plan::{Existing, Outcome as StepOutcome};
use crate::restore::resources::{self as res, Keep, Options};

/// Names listed in evidence, at most.
const LISTED: usize = 20;

pub(super) fn drill(
    env: &Env,
    spec: &DrillSpec,
    t: &Target,
    drill_id: Uuid,
    watch: &mut Stopwatch,
    out: &mut Outcome,
) {
    let cluster = match env.handle.block_on(connect(env, spec)) {
        Ok(c) => c,
        Err(e) => {
            watch.lap(Phase::Plan);
            return out.fail(t, Phase::Plan, &e);
        }
    };
    let mapping = match mapping(t, drill_id) {
        Ok(m) => m,
        Err(e) => return out.fail(t, Phase::Plan, &e),
    };
    watch.lap(Phase::Plan);
    let scope = Scope::new(&ScopeFlags {
        include_namespaces: Vec::new(),
        exclude_namespaces: Vec::new(),
        include_resources: Vec::new(),
        exclude_resources: Vec::new(),
        selector: None,
        cluster_resources: Some(ClusterResources::False),
    })
    .expect("the empty scope is valid");
    let loaded = res::load(env.repo, &t.manifest, &scope);
    watch.lap(Phase::FetchDecrypt);
    let loaded = match loaded {
        Ok(l) => l,
        Err(e) => return out.fail(t, Phase::FetchDecrypt, &e),
    };
    let skipped_cluster = t
        .manifest
        .objects
        .iter()
        .filter(|o| o.namespace.is_none())
        .count();
    for to in mapping.1.values() {
        out.scratch.push(format!("namespace:{to}"));
    }
    let opts = Options {
        scope,
        mapping: mapping.0,
        existing: Existing::Skip,
        keep: Keep::default(),
        mapped_volumes: false,
        fresh_volumes: false,
    };
    let restored = env.handle.block_on(res::restore(
        &cluster,
        &t.manifest,
        loaded,
        &opts,
        false,
        &|_| {},
    ));
    watch.lap(Phase::Write);
    let report = match restored {
        Ok(r) => r,
        Err(e) => return out.fail(t, Phase::Write, &e),
    };
    let applied: Vec<_> = report
        .steps
        .iter()
        .filter(|s| !s.implied)
        .filter(|s| {
            matches!(
                s.outcome,
                Some(StepOutcome::Created | StepOutcome::Updated | StepOutcome::Recreated)
            )
        })
        .collect();
    out.objects = applied.len() as u64;
    out.bytes = applied.iter().map(|s| s.body.len() as u64).sum();

    let began = Instant::now();
    let failed: Vec<String> = report
        .steps
        .iter()
        .filter(|s| s.outcome == Some(StepOutcome::Failed))
        .map(|s| s.display())
        .collect();
    out.check(
        t,
        "apply",
        CheckStatus::of(failed.is_empty()),
        began,
        if failed.is_empty() {
            format!(
                "{} objects applied into {} scratch namespace(s); {} cluster-scoped object(s) \
                 left out (drills never change what the whole cluster shares)",
                applied.len(),
                mapping.1.len(),
                skipped_cluster
            )
        } else {
            format!("{} objects were not applied", failed.len())
        },
        json!({
            "namespaces": mapping.1,
            "applied": applied.len(),
            "failed": failed.iter().take(LISTED).collect::<Vec<_>>(),
            "cluster_scoped_left_out": skipped_cluster,
        }),
    );

    if out.wants(t, "object_digests") {
        // Every object read back equals the backup's, sanitised and mapped.
        let began = Instant::now();
        let mut by_type: BTreeMap<String, u64> = BTreeMap::new();
        let (mut matched, mut differ, mut missing) = (0u64, Vec::new(), Vec::new());
        for s in &applied {
            let Ok(expected) = serde_json::from_slice::<Value>(&s.body) else {
                differ.push(s.display());
                continue;
            };
            let path = s.ty.object(s.namespace.as_deref(), &s.name);
            match env.handle.block_on(cluster.try_get::<Value>(&path)) {
                Ok(Ok(actual)) => {
                    if digest(&project(&actual, &expected)) == digest(&expected) {
                        matched += 1;
                        *by_type.entry(s.kind.clone()).or_default() += 1;
                    } else {
                        differ.push(s.display());
                    }
                }
                Ok(Err(_)) => missing.push(s.display()),
                Err(e) => {
                    watch.lap(Phase::Checks);
                    return out.fail(t, Phase::Checks, &e);
                }
            }
        }
        let ok = differ.is_empty() && missing.is_empty();
        out.check(
            t,
            "object_digests",
            CheckStatus::of(ok),
            began,
            if ok {
                format!("{matched} objects read back equal to the backup's (sanitised) digests")
            } else {
                format!(
                    "{} objects differ from the backup and {} are missing",
                    differ.len(),
                    missing.len()
                )
            },
            json!({
                "compared": applied.len(),
                "matched": matched,
                "matched_by_kind": by_type,
                "differ": differ.iter().take(LISTED).collect::<Vec<_>>(),
                "missing": missing.iter().take(LISTED).collect::<Vec<_>>(),
            }),
        );
    }

    if !out.wants(t, "readiness") {
        watch.lap(Phase::Checks);
        return;
    }
    let began = Instant::now();
    let workloads: Vec<_> = applied
        .iter()
        .filter(|s| {
            s.ty.group == "apps"
                && matches!(s.kind.as_str(), "Deployment" | "StatefulSet" | "DaemonSet")
        })
        .collect();
    let timeout = Duration::from_secs(spec.readiness_timeout_seconds);
    let (status, summary, evidence) = if workloads.is_empty() {
        (
            CheckStatus::NotObservable,
            "no workloads to wait for".to_string(),
            json!({}),
        )
    } else {
        readiness(env, &cluster, &workloads, timeout)
    };
    out.check(t, "readiness", status, began, summary, evidence);
    watch.lap(Phase::Checks);
}

/// Waits until every workload is ready, or `timeout`. Where no controller
/// ever answers (no `status.observedGeneration` on any), readiness cannot
/// be observed: the cluster runs none.
fn readiness(
    env: &Env,
    cluster: &Cluster,
    workloads: &[&&crate::restore::resources::plan::Step],
    timeout: Duration,
) -> (CheckStatus, String, Value) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut observed = 0;
        let mut not_ready = Vec::new();
        for s in workloads {
            let path = s.ty.object(s.namespace.as_deref(), &s.name);
            let Ok(Ok(o)) = env.handle.block_on(cluster.try_get::<Value>(&path)) else {
                not_ready.push(s.display());
                continue;
            };
            if o.pointer("/status/observedGeneration").is_some() {
                observed += 1;
            }
            if !ready(&o) {
                not_ready.push(s.display());
            }
        }
        if not_ready.is_empty() {
            return (
                CheckStatus::Passed,
                format!("{} workloads ready", workloads.len()),
                json!({"workloads": workloads.len()}),
            );
        }
        if Instant::now() >= deadline {
            return if observed == 0 {
                (
                    CheckStatus::NotObservable,
                    format!(
                        "not observable: no controller updated any of {} workloads within {} s \
                         (the cluster runs no controllers)",
                        workloads.len(),
                        timeout.as_secs()
                    ),
                    json!({"workloads": workloads.len(), "observed": 0}),
                )
            } else {
                (
                    CheckStatus::Failed,
                    format!(
                        "{} of {} workloads not ready after {} s",
                        not_ready.len(),
                        workloads.len(),
                        timeout.as_secs()
                    ),
                    json!({"not_ready": not_ready.iter().take(LISTED).collect::<Vec<_>>()}),
                )
            };
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ready(o: &Value) -> bool {
    let n = |p: &str| o.pointer(p).and_then(Value::as_i64);
    match o.get("kind").and_then(Value::as_str) {
        Some("DaemonSet") => n("/status/desiredNumberScheduled")
            .is_some_and(|want| n("/status/numberReady") == Some(want)),
        _ => {
            let want = n("/spec/replicas").unwrap_or(1);
            want == 0 || n("/status/readyReplicas").is_some_and(|r| r >= want)
        }
    }
}

/// `ns → drill-<ns>-<short id>` for every namespace of the backup (the
/// namespace part cut so the name stays a DNS label), and the pairs.
fn mapping(t: &Target, drill_id: Uuid) -> Result<(NamespaceMapping, BTreeMap<String, String>)> {
    let short = short_id(drill_id);
    let mut pairs = BTreeMap::new();
    for ns in t
        .manifest
        .objects
        .iter()
        .filter_map(|o| o.namespace.as_deref())
    {
        let cut: String = ns
            .chars()
            .take(63 - "drill--".len() - short.len())
            .collect();
        pairs.insert(
            ns.to_string(),
            format!("drill-{}-{short}", cut.trim_end_matches('-')),
        );
    }
    let given: Vec<String> = pairs.iter().map(|(a, b)| format!("{a}={b}")).collect();
    Ok((NamespaceMapping::parse(&given)?, pairs))
}

/// `actual` cut to the fields `expected` has: what the server added
/// (defaults, uids, managedFields) does not count, what it changed does.
fn project(actual: &Value, expected: &Value) -> Value {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => Value::Object(
            e.keys()
                .filter_map(|k| a.get(k).map(|v| (k.clone(), project(v, &e[k]))))
                .collect(),
        ),
        (Value::Array(a), Value::Array(e)) if a.len() == e.len() => {
            Value::Array(a.iter().zip(e).map(|(x, y)| project(x, y)).collect())
        }
        _ => actual.clone(),
    }
}

/// SHA-256 of the canonical JSON (serde_json's maps are sorted).
fn digest(v: &Value) -> [u8; 32] {
    crate::store::sha256(&serde_json::to_vec(v).expect("JSON serialises"))
}

async fn connect(env: &Env<'_>, spec: &DrillSpec) -> Result<Cluster> {
    Cluster::connect(&ConnectOptions {
        kubeconfig: spec
            .kubeconfig
            .clone()
            .or_else(|| env.config.kubernetes.kubeconfig.clone()),
        context: None,
    })
    .await
}

/// Deletes scratch namespaces (their objects go with them); one already
/// gone is fine.
pub(super) async fn delete_namespaces(
    env: &Env<'_>,
    spec: &DrillSpec,
    names: &[&str],
) -> Result<()> {
    let cluster = connect(env, spec).await?;
    for n in names {
        // Only drill namespaces, whatever the catalog says.
        if !n.starts_with("drill-") {
            continue;
        }
        let path = format!("/api/v1/namespaces/{n}");
        match cluster
            .send::<Value>("DELETE", &path, None, Vec::new())
            .await?
        {
            Ok(_) => {}
            Err(r) if r.code == 404 => {}
            Err(r) => return Err(cluster.refused("DELETE", &path, &r)),
        }
    }
    Ok(())
}
