//! The etcd drill: restore the snapshot with etcd's own tool, start a
//! throwaway etcd on it, compare revision, key count and `HashKV` with what
//! the backup recorded, then serve the keyspace through the stand-in API
//! server and count the objects of every type through the Kubernetes API:
//! the restored keyspace is not only equal, it reads as Kubernetes objects.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use serde_json::json;

use super::report::CheckStatus;
use super::{Env, Outcome, Phase, Stopwatch, Target};
use crate::error::{Error, ErrorKind, Result};
use crate::restore::etcd::{Step, restore_and_start, snapshot_info};

pub(super) fn drill(env: &Env, t: &Target, dir: &Path, watch: &mut Stopwatch, out: &mut Outcome) {
    out.scratch.push(format!("dir:{}", dir.display()));
    let info = match snapshot_info(&t.manifest) {
        Ok(i) => i.clone(),
        Err(e) => return out.fail(t, Phase::Plan, &e),
    };
    let mut phase = Phase::FetchDecrypt;
    let restored = restore_and_start(env.repo, &t.manifest, dir, &|_| {}, &mut |step| {
        watch.lap(phase);
        phase = match step {
            Step::Fetched => Phase::Write,
            Step::Restored | Step::Started => Phase::Start,
        };
    });
    let mut restored = match restored {
        Ok(r) => r,
        Err(e) => {
            watch.lap(phase);
            return out.fail(t, phase, &e);
        }
    };
    out.bytes = t.manifest.entries.first().map_or(0, |e| e.size);
    out.objects = info.key_count.unwrap_or(0).max(0) as u64;

    // The keyspace, before anything could write to it.
    let began = Instant::now();
    match restored.compare(&info) {
        Ok((compared, version)) => {
            let mismatched: Vec<_> = compared
                .iter()
                .filter(|c| c.outcome == "mismatch")
                .collect();
            let evidence = json!({
                "etcd_version": version,
                "revision": {"recorded": info.revision, "restored": compared[0].restored},
                "key_count": {"recorded": info.key_count, "restored": compared[1].restored},
                "hash_kv": {"recorded": compared[2].recorded, "restored": compared[2].restored},
            });
            let (status, summary) = if mismatched.is_empty() {
                (
                    CheckStatus::Passed,
                    format!(
                        "revision {}, {} keys and HashKV {} as recorded",
                        info.revision, compared[1].restored, compared[2].restored
                    ),
                )
            } else {
                (
                    CheckStatus::Failed,
                    format!(
                        "{} differ from what the backup recorded",
                        mismatched
                            .iter()
                            .map(|c| c.what)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            };
            out.check(t, "keyspace", status, began, summary, evidence);
        }
        Err(e) => {
            watch.lap(Phase::Checks);
            return out.fail(t, Phase::Checks, &e);
        }
    }
    watch.lap(Phase::Checks);

    // Served through the Kubernetes API.
    if !out.wants(t, "api_object_counts") {
        return;
    }
    let kubeconfig = dir.join("kubeconfig");
    let served = restored.client().and_then(|client| {
        env.handle.block_on(crate::dev::apiserver::serve(
            client,
            "/registry/",
            ([127, 0, 0, 1], 0).into(),
            kubeconfig.clone(),
        ))
    });
    let served = match served {
        Ok(s) => s,
        Err(e) => {
            watch.lap(Phase::Start);
            return out.fail(t, Phase::Start, &e);
        }
    };
    watch.lap(Phase::Start);
    let began = Instant::now();
    let counted = env.handle.block_on(count_through_api(&kubeconfig));
    drop(served);
    match (counted, &info.resource_counts) {
        (Err(e), _) if e.what().contains("not JSON") => out.check(
            t,
            "api_object_counts",
            CheckStatus::NotObservable,
            began,
            "the keyspace's values are not JSON objects in the stand-in API server's layout \
             (a real kube-apiserver's protobuf): counting them needs a kube-apiserver"
                .into(),
            json!({}),
        ),
        (Err(e), _) => out.check(
            t,
            "api_object_counts",
            CheckStatus::Failed,
            began,
            format!(
                "the restored keyspace does not serve as Kubernetes objects: {}",
                e.what()
            ),
            json!({}),
        ),
        (Ok(_), None) => out.check(
            t,
            "api_object_counts",
            CheckStatus::NotObservable,
            began,
            "the backup recorded no per-type counts (made before drctl recorded them)".into(),
            json!({}),
        ),
        (Ok(served), Some(recorded)) => {
            let mut differ = Vec::new();
            for (ty, want) in recorded {
                let got = served.get(ty).copied();
                if got != Some(*want) {
                    differ.push(json!({"type": ty, "recorded": want, "served": got}));
                }
            }
            let total: i64 = served.values().sum();
            let (status, summary) = if differ.is_empty() {
                (
                    CheckStatus::Passed,
                    format!(
                        "{total} objects of {} types served, each type's count as recorded",
                        recorded.len()
                    ),
                )
            } else {
                (
                    CheckStatus::Failed,
                    format!(
                        "{} types served with counts other than recorded",
                        differ.len()
                    ),
                )
            };
            out.check(
                t,
                "api_object_counts",
                status,
                began,
                summary,
                json!({"recorded": recorded, "served": served, "differ": differ}),
            );
        }
    }
    watch.lap(Phase::Checks);
}

/// Objects per type (`<group|core>/<plural>`) the API server lists.
async fn count_through_api(kubeconfig: &Path) -> Result<BTreeMap<String, i64>> {
    let cluster = crate::cluster::Cluster::connect(&crate::cluster::ConnectOptions {
        kubeconfig: Some(kubeconfig.to_path_buf()),
        context: None,
    })
    .await?;
    let types = crate::cluster::discovery::discover(&cluster).await?;
    let mut counts = BTreeMap::new();
    for ty in &types {
        let mut lister = crate::cluster::discovery::Lister::new(&cluster, ty, None, "");
        let mut n = 0i64;
        while let Some(page) = lister.next().await? {
            n += page.len() as i64;
        }
        if n > 0 {
            let group = if ty.group.is_empty() {
                "core"
            } else {
                &ty.group
            };
            counts.insert(format!("{group}/{}", ty.plural), n);
        }
    }
    if counts.is_empty() {
        return Err(Error::new(
            ErrorKind::Integrity,
            "the API server over the restored keyspace lists no objects",
        ));
    }
    Ok(counts)
}
