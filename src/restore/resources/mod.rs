//! Resource restores: a backup's objects, chosen by scope, mapped,
//! sanitised, and applied in dependency order with server-side apply.
//!
//! ```text
//! load (verified reads) → select (scope, labels, owners) → sanitize
//!   → plan (what exists, what each object gets, in order) → apply
//! ```
//! Everything up to the plan reads only, so `--dry-run` is the plan
//! printed. Bad input (an unknown backup, a malformed mapping, an API server
//! that cannot be reached or refuses the credentials) fails before the plan
//! is made.

pub mod plan;
pub mod sanitize;

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::cluster::discovery::{self, Lister};
use crate::cluster::{Cluster, ResourceType};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::{KubeObject, Manifest};
use crate::repo::pack::OpenPack;
use crate::resources::scope::{ClusterResources, NamespaceMapping, RELATED, Scope, TypeName, Uses};
use plan::{Action, Counts, Existing, Outcome, Phase, Step};
pub use sanitize::Keep;

/// How to restore.
pub struct Options {
    pub scope: Scope,
    pub mapping: NamespaceMapping,
    pub existing: Existing,
    pub keep: Keep,
    /// With a mapping: bring PersistentVolumes too. Off, they are skipped
    /// and claims lose their `spec.volumeName`, so a copy gets new disks
    /// instead of production's.
    pub mapped_volumes: bool,
    /// Claims get new volumes whatever the mapping (a set restore, which
    /// writes their data from the backup): PersistentVolumes are skipped,
    /// claims lose `spec.volumeName` and their old binding annotations.
    pub fresh_volumes: bool,
}

/// What a restore did (or, dry, would do).
#[derive(Debug, Serialize)]
pub struct Report {
    pub backup_id: Uuid,
    pub server: String,
    pub dry_run: bool,
    pub existing: Existing,
    /// By outcome; by planned action on a dry run. Printed as `summary`
    /// after a restore and as `plan` (create, skip, …) on a dry run, so a
    /// script never reads "created" for what was not.
    #[serde(skip)]
    pub summary: Counts,
    #[serde(flatten)]
    pub tally: Tally,
    pub steps: Vec<Step>,
    pub seconds: f64,
    pub objects_per_second: f64,
}

/// [`Report::summary`] as scripts read it.
#[derive(Debug, Serialize)]
pub enum Tally {
    /// What a restore did.
    #[serde(rename = "summary")]
    Done(Counts),
    /// What a dry run would do.
    #[serde(rename = "plan")]
    Planned(Planned),
}

/// A dry run's counts, named for what would happen.
#[derive(Debug, Serialize)]
pub struct Planned {
    pub create: usize,
    pub skip: usize,
    pub update: usize,
    pub recreate: usize,
    pub cannot_restore: usize,
}

/// What the old binding of a claim left on it: a new claim is bound
/// afresh (the provisioner reads `selected-node`, which the restore sets
/// to the node it chose).
const BINDING_ANNOTATIONS: &[&str] = &[
    "pv.kubernetes.io/bind-completed",
    "pv.kubernetes.io/bound-by-controller",
    "volume.kubernetes.io/selected-node",
    "volume.kubernetes.io/storage-provisioner",
    "volume.beta.kubernetes.io/storage-provisioner",
];

/// Requests in flight while applying one phase.
const APPLIES_IN_FLIGHT: usize = 16;
/// How long a CRD may take to become Established, or a deleted object to
/// go away.
const WAIT: Duration = Duration::from_secs(60);

/// Refuses a backup that is not a resources backup.
pub fn check_backup(manifest: &Manifest) -> Result<()> {
    if manifest.kind != "resources" {
        return Err(Error::config(format!(
            "backup {} is a {} backup, not a resources backup",
            manifest.backup_id, manifest.kind
        ))
        .with_guidance(format!("restore it with `drctl restore {}`", manifest.kind)));
    }
    Ok(())
}

fn type_of(o: &KubeObject) -> ResourceType {
    ResourceType {
        group: o.group.clone(),
        version: o.version.clone(),
        kind: o.kind.clone(),
        plural: o.resource.clone(),
        namespaced: o.namespace.is_some(),
    }
}

/// Refuses a scope with an include pattern that matches nothing in the
/// backup (`--include-namespaces shopp`), naming what the backup holds:
/// restoring nothing and exiting 0 would tell on-call the namespace is back.
fn check_scope(manifest: &Manifest, scope: &Scope) -> Result<()> {
    let mut namespaces: Vec<&str> = manifest
        .objects
        .iter()
        .filter_map(|o| o.namespace.as_deref())
        .collect();
    namespaces.sort_unstable();
    namespaces.dedup();
    let missing = scope.unmatched_namespaces(&namespaces);
    if !missing.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "backup {} holds no namespace matching --include-namespaces {}",
                manifest.backup_id,
                missing.join(",")
            ),
        )
        .with_guidance(format!("it holds: {}", listing(&namespaces))));
    }
    let mut types: Vec<&KubeObject> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for o in &manifest.objects {
        if seen.insert(o.qualified()) {
            types.push(o);
        }
    }
    let missing = scope.unmatched_resources(&types);
    if !missing.is_empty() {
        let mut names: Vec<String> = types.iter().map(|t| t.qualified()).collect();
        names.sort();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "backup {} holds no objects of --include-resources {}",
                manifest.backup_id,
                missing.join(",")
            ),
        )
        .with_guidance(format!("it holds: {}", listing(&names))));
    }
    Ok(())
}

/// `a, b, c` (the first 30, then how many more).
fn listing(names: &[&str]) -> String {
    if names.is_empty() {
        return "nothing of that kind".into();
    }
    let mut s = names
        .iter()
        .take(30)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > 30 {
        s.push_str(&format!(" and {} more", names.len() - 30));
    }
    s
}

/// Reads the objects of the backup that may be in scope, each verified
/// (pack hash, then chunk id) on the way. Blocking.
pub fn load(repo: &Repository, manifest: &Manifest, scope: &Scope) -> Result<Vec<(usize, Value)>> {
    check_scope(manifest, scope)?;
    let wanted: Vec<usize> = manifest
        .objects
        .iter()
        .enumerate()
        .filter(|(_, o)| {
            scope.resource_selected(*o)
                && match &o.namespace {
                    Some(ns) => scope.namespace_selected(ns),
                    None => match scope.cluster {
                        ClusterResources::False => false,
                        _ if scope.all_cluster_objects() => true,
                        _ => RELATED.contains(&o.qualified().as_str()),
                    },
                }
        })
        .map(|(i, _)| i)
        .collect();
    let mut by_pack: HashMap<&str, Vec<usize>> = HashMap::new();
    for &i in &wanted {
        let o = &manifest.objects[i];
        let loc = manifest.chunks.get(o.chunk as usize).ok_or_else(|| {
            Error::new(
                ErrorKind::Integrity,
                format!(
                    "object {}/{} has no chunk in the manifest",
                    o.resource, o.name
                ),
            )
        })?;
        by_pack.entry(loc.pack.as_str()).or_default().push(i);
    }
    let identity = repo.identity()?;
    let out = Mutex::new(Vec::with_capacity(wanted.len()));
    crate::parallel::try_for_each(
        by_pack,
        crate::parallel::threads(),
        crate::repo::pack::decompressor,
        |zstd, (key, objects)| {
            let pack = OpenPack::fetch(&*repo.store, key, identity, repo.max_pack_bytes())?;
            let mut got = Vec::with_capacity(objects.len());
            for i in objects {
                let o = &manifest.objects[i];
                let loc = &manifest.chunks[o.chunk as usize];
                let data = pack.chunk_at(loc, &repo.secret, zstd)?;
                let value: Value = serde_json::from_slice(&data).map_err(|e| {
                    Error::new(
                        ErrorKind::Integrity,
                        format!("object {}/{} is not JSON: {e}", o.resource, o.name),
                    )
                })?;
                got.push((i, value));
            }
            out.lock().unwrap().extend(got);
            Ok(())
        },
    )?;
    let mut out = out.into_inner().unwrap();
    out.sort_by_key(|(i, _)| *i);
    Ok(out)
}

fn meta_str<'a>(o: &'a Value, field: &str) -> Option<&'a str> {
    o.get("metadata")?.get(field)?.as_str()
}

/// The name an object is restored under: the one the backup lists it by
/// (mapped, for a Namespace), which its body must agree with. The name goes
/// into the URL of every request and onto the plan a person reads, so one
/// that could change the path (`/`, `..`, `%2F`) or differ from what the
/// plan shows is refused as a damaged or forged backup.
fn checked_name(o: &KubeObject, body: &Value, mapping: &NamespaceMapping) -> Result<String> {
    let listed = if o.group.is_empty() && o.kind == "Namespace" {
        mapping.map(&o.name)
    } else {
        &o.name
    };
    match meta_str(body, "name") {
        Some(n) if n == listed => {}
        other => {
            return Err(forged(
                o,
                format!("its body names it `{}`", other.unwrap_or("(nothing)")),
            ));
        }
    }
    if !is_path_segment(listed) {
        return Err(forged(o, "its name is not a valid Kubernetes name".into()));
    }
    Ok(listed.to_string())
}

/// A name Kubernetes could have given: one path segment, printable, no
/// escapes.
fn is_path_segment(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | ':' | '@' | '+'))
}

fn forged(o: &KubeObject, why: String) -> Error {
    Error::new(
        ErrorKind::Integrity,
        format!(
            "object {} {} of the backup cannot be restored: {why}",
            o.kind,
            o.namespace
                .as_deref()
                .map_or(o.name.clone(), |ns| format!("{ns}/{}", o.name))
        ),
    )
    .with_guidance("the backup is damaged or was written to mislead; nothing was applied")
}

/// Chooses the objects (labels, what `auto` brings along, owned objects),
/// sanitises and maps them, and decides what each gets on `cluster`.
pub async fn plan(
    cluster: &Cluster,
    manifest: &Manifest,
    loaded: Vec<(usize, Value)>,
    opts: &Options,
) -> Result<Vec<Step>> {
    let scope = &opts.scope;
    // Namespaced objects pass the selector; cluster-scoped ones pass it
    // when all are restored, or come along when the namespaces use them.
    let mut uses = Uses::default();
    let mut chosen: Vec<(usize, Value)> = Vec::new();
    let mut cluster_scoped = Vec::new();
    for (i, v) in loaded {
        let o = &manifest.objects[i];
        if o.namespace.is_some() {
            if scope.labels_match(&v) {
                uses.note(o, &v);
                chosen.push((i, v));
            }
        } else {
            cluster_scoped.push((i, v));
        }
    }
    cluster_scoped.sort_by_key(|(i, _)| Uses::rank(&manifest.objects[*i].qualified()));
    for (i, v) in cluster_scoped {
        let o = &manifest.objects[i];
        let keep = if scope.all_cluster_objects() {
            scope.labels_match(&v)
        } else {
            uses.wants(o, &v, scope)
        };
        if keep {
            uses.note(o, &v);
            chosen.push((i, v));
        }
    }

    let sources = chosen
        .iter()
        .filter_map(|(i, _)| manifest.objects[*i].namespace.as_deref());
    if let Some(ns) = opts.mapping.collides_with(sources) {
        return Err(Error::config(format!(
            "--namespace-mapping maps a namespace to `{ns}`, which the restore also brings unmapped"
        ))
        .with_guidance(format!(
            "the two namespaces' objects would overwrite each other in `{ns}`: map `{ns}` too, or choose another target"
        )));
    }
    // Objects whose controller is restored too are left to it: the
    // Deployment makes its ReplicaSets, which make the Pods.
    let restored: HashMap<String, (&str, &str)> = chosen
        .iter()
        .filter_map(|(i, v)| {
            let o = &manifest.objects[*i];
            Some((
                meta_str(v, "uid")?.to_string(),
                (o.kind.as_str(), o.name.as_str()),
            ))
        })
        .collect();
    // Each object becomes its step's body, sanitised and serialised: as
    // bytes it takes a fraction of the memory it takes as a JSON value.
    let mut steps = Vec::with_capacity(chosen.len());
    for (i, mut v) in chosen {
        let o = &manifest.objects[i];
        let ty = type_of(o);
        let controller = v
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|r| r.get("controller").and_then(Value::as_bool) == Some(true))
            .and_then(|r| r.get("uid").and_then(Value::as_str))
            .and_then(|uid| restored.get(uid));
        sanitize::sanitize(&mut v, opts.keep, &opts.mapping);
        let mapped = !opts.mapping.is_empty();
        let new_volumes = (mapped && !opts.mapped_volumes) || opts.fresh_volumes;
        if new_volumes && o.group.is_empty() && o.kind == "PersistentVolumeClaim" {
            // The claim would bind production's volume by name.
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                spec.remove("volumeName");
            }
            if opts.fresh_volumes
                && let Some(notes) = v
                    .pointer_mut("/metadata/annotations")
                    .and_then(Value::as_object_mut)
            {
                for a in BINDING_ANNOTATIONS {
                    notes.remove(*a);
                }
            }
        }
        let mut body = v;
        let namespace = o
            .namespace
            .as_deref()
            .map(|ns| opts.mapping.map(ns).to_string());
        let name = checked_name(o, &body, &opts.mapping)?;
        if let Some(ns) = &namespace
            && !is_path_segment(ns)
        {
            return Err(forged(
                o,
                format!("its namespace `{ns}` is not a valid name"),
            ));
        }
        let (action, reason) = match controller {
            Some((kind, owner)) => (
                Action::Skip,
                Some(format!(
                    "owned by {kind} {owner}, which is restored: its controller recreates it"
                )),
            ),
            None if opts.fresh_volumes && o.group.is_empty() && o.kind == "PersistentVolume" => (
                Action::Skip,
                Some(
                    "a set restore gives its claims new volumes and writes their data from the \
                     backup"
                        .into(),
                ),
            ),
            None if mapped
                && !opts.mapped_volumes
                && o.group.is_empty()
                && o.kind == "PersistentVolume" =>
            {
                (
                    Action::Skip,
                    Some(
                        "a mapped restore does not bring PersistentVolumes: they are production's \
                         disks (claims get new ones; --mapped-volumes brings them)"
                            .into(),
                    ),
                )
            }
            None => (Action::Create, None),
        };
        steps.push(Step {
            order: 0,
            phase: Phase::of(&o.group, &o.kind),
            action,
            api_version: ty.api_version(),
            kind: o.kind.clone(),
            from_namespace: o
                .namespace
                .clone()
                .filter(|ns| Some(ns.as_str()) != namespace.as_deref()),
            namespace,
            name,
            reason,
            outcome: None,
            ty,
            // The status goes through the status subresource, after the
            // object: in the object's own apply it is ignored.
            status: body
                .as_object_mut()
                .and_then(|o| o.remove("status"))
                .filter(|_| opts.keep.status),
            body: serde_json::to_vec(&body).expect("JSON values serialise"),
            implied: false,
        });
    }

    // Every namespace objects go to must exist: make those the backup
    // does not bring (a mapped namespace, a namespace not in scope).
    let planned_ns: HashSet<String> = steps
        .iter()
        .filter(|s| s.phase == Phase::Namespaces)
        .map(|s| s.name.clone())
        .collect();
    let mut needed: Vec<String> = steps
        .iter()
        .filter(|s| s.action != Action::Skip)
        .filter_map(|s| s.namespace.clone())
        .filter(|ns| !planned_ns.contains(ns))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    needed.sort();
    for ns in needed {
        let ty = ResourceType {
            group: String::new(),
            version: "v1".into(),
            kind: "Namespace".into(),
            plural: "namespaces".into(),
            namespaced: false,
        };
        steps.push(Step {
            order: 0,
            phase: Phase::Namespaces,
            action: Action::Create,
            api_version: "v1".into(),
            kind: "Namespace".into(),
            namespace: None,
            name: ns.clone(),
            from_namespace: None,
            reason: Some("holds restored objects; not in the backup's scope".into()),
            outcome: None,
            ty,
            status: None,
            body: serde_json::to_vec(
                &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
            )
            .expect("JSON values serialise"),
            implied: true,
        });
    }

    // What exists already, and which types the cluster serves.
    let served: HashMap<(String, String), ResourceType> = discovery::discover(cluster)
        .await?
        .into_iter()
        .map(|t| ((t.group.clone(), t.plural.clone()), t))
        .collect();
    let crds_planned: HashSet<String> = steps
        .iter()
        .filter(|s| s.phase == Phase::Crds)
        .map(|s| s.name.clone())
        .collect();
    let mut targets: HashMap<(String, String), HashSet<Option<String>>> = HashMap::new();
    for s in steps.iter().filter(|s| s.action == Action::Create) {
        targets
            .entry((s.ty.group.clone(), s.ty.plural.clone()))
            .or_default()
            .insert(s.namespace.clone());
    }
    let existing = existing(cluster, &served, targets).await?;
    for s in &mut steps {
        if s.action != Action::Create {
            continue;
        }
        let key = (s.ty.group.clone(), s.ty.plural.clone());
        if !served.contains_key(&key) {
            if crds_planned.contains(&s.ty.qualified()) {
                continue;
            }
            s.action = Action::Fail;
            s.reason = Some(format!(
                "the cluster does not serve {} and the restore brings no CustomResourceDefinition for it",
                s.ty.qualified()
            ));
            continue;
        }
        let exists = existing.contains(&(key, s.namespace.clone(), s.name.clone()));
        // A copy under a mapping never changes what production shares with
        // it: an existing cluster-scoped object (a PersistentVolume, a
        // ClusterRoleBinding) is left as it is, whatever --existing says.
        if exists && s.namespace.is_none() && !opts.mapping.is_empty() {
            s.action = Action::Skip;
            s.reason = Some(
                "exists, and is cluster-scoped: a restore under --namespace-mapping never \
                 changes what the original namespaces may use"
                    .into(),
            );
            continue;
        }
        let (action, reason) = plan::decide(s, exists, opts.existing);
        s.action = action;
        s.reason = reason;
    }
    // A namespace the objects need and that exists is no step at all.
    steps.retain(|s| !(s.implied && s.action == Action::Skip));
    plan::order(&mut steps);
    Ok(steps)
}

type Key = ((String, String), Option<String>, String);

/// The names that exist of each (type, namespace) the plan creates in: one
/// list per namespace when there are few, else one across the cluster.
async fn existing(
    cluster: &Cluster,
    served: &HashMap<(String, String), ResourceType>,
    targets: HashMap<(String, String), HashSet<Option<String>>>,
) -> Result<HashSet<Key>> {
    let mut units = Vec::new();
    for (key, namespaces) in targets {
        let Some(t) = served.get(&key) else { continue };
        if !t.namespaced || namespaces.len() > 8 {
            units.push((t, None, namespaces));
        } else {
            for ns in &namespaces {
                units.push((t, ns.clone(), namespaces.clone()));
            }
        }
    }
    let found = Mutex::new(HashSet::new());
    let results: Vec<Result<()>> = futures::stream::iter(units)
        .map(|(t, ns, wanted)| {
            let found = &found;
            async move {
                let mut lister = Lister::new(cluster, t, ns.as_deref(), "");
                loop {
                    let page = match lister.next().await {
                        Ok(Some(p)) => p,
                        Ok(None) => return Ok(()),
                        Err(e) => return Err(e),
                    };
                    let mut f = found.lock().unwrap();
                    for obj in page {
                        let ns = meta_str(&obj, "namespace").map(str::to_string);
                        if t.namespaced && !wanted.contains(&ns) {
                            continue;
                        }
                        let name = meta_str(&obj, "name").unwrap_or_default().to_string();
                        f.insert(((t.group.clone(), t.plural.clone()), ns, name));
                    }
                }
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    results.into_iter().collect::<Result<()>>()?;
    Ok(found.into_inner().unwrap())
}

/// Carries out the plan, phase by phase; within a phase, objects are
/// applied concurrently. Each step gets its outcome; a failed step does not
/// stop the others (its reason says why).
pub async fn apply(
    cluster: &Cluster,
    steps: &mut [Step],
    keep: Keep,
    progress: &(dyn Fn() + Sync),
) {
    let mut start = 0;
    while start < steps.len() {
        let phase = steps[start].phase;
        let end = start
            + steps[start..]
                .iter()
                .take_while(|s| s.phase == phase)
                .count();
        let group = &mut steps[start..end];
        futures::stream::iter(group.iter_mut())
            .for_each_concurrent(APPLIES_IN_FLIGHT, |s| async move {
                let (outcome, reason) = match s.action {
                    Action::Skip => (Outcome::Skipped, None),
                    Action::Fail => (Outcome::Failed, None),
                    _ => match apply_one(cluster, s, keep).await {
                        Ok(o) => (o, None),
                        Err(why) => (Outcome::Failed, Some(why)),
                    },
                };
                s.outcome = Some(outcome);
                if let Some(r) = reason {
                    s.reason = Some(r);
                }
                progress();
            })
            .await;
        if phase == Phase::Crds {
            for s in group.iter_mut().filter(|s| {
                matches!(
                    s.outcome,
                    Some(Outcome::Created | Outcome::Updated | Outcome::Recreated)
                )
            }) {
                if let Err(why) = established(cluster, s).await {
                    s.outcome = Some(Outcome::Failed);
                    s.reason = Some(why);
                }
            }
        }
        start = end;
    }
}

/// What a refusal says, or only its code for a Secret: a server's
/// validation message may quote the value it refused.
fn why(s: &Step, r: &crate::cluster::Refusal) -> String {
    if s.is_secret() {
        format!(
            "{} {} (message withheld: it may quote secret data)",
            r.code, r.reason
        )
    } else {
        format!("{} {}: {}", r.code, r.reason, r.message)
    }
}

async fn apply_one(
    cluster: &Cluster,
    s: &Step,
    keep: Keep,
) -> std::result::Result<Outcome, String> {
    let url = s.ty.object(s.namespace.as_deref(), &s.name);
    if s.action == Action::Recreate {
        let body = serde_json::to_vec(&json!({"propagationPolicy": "Background"})).unwrap();
        match cluster
            .send::<Value>("DELETE", &url, Some("application/json"), body)
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(r)) if r.code == 404 => {}
            Ok(Err(r)) => return Err(format!("delete refused: {}", why(s, &r))),
            Err(e) => return Err(e.what().to_string()),
        }
        gone(cluster, s, &url).await?;
    }
    let apply_url = format!("{url}?fieldManager=drctl&force=true");
    let body = s.body.clone();
    match cluster
        .send::<Value>(
            "PATCH",
            &apply_url,
            Some("application/apply-patch+yaml"),
            body,
        )
        .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(r)) => return Err(why(s, &r)),
        Err(e) => return Err(e.what().to_string()),
    }
    if keep.status
        && let Some(status) = &s.status
    {
        let mut patch = json!({
            "apiVersion": s.api_version,
            "kind": s.kind,
            "metadata": {"name": s.name},
            "status": status,
        });
        if let Some(ns) = &s.namespace {
            patch["metadata"]["namespace"] = json!(ns);
        }
        let status_url = format!("{url}/status?fieldManager=drctl&force=true");
        match cluster
            .send::<Value>(
                "PATCH",
                &status_url,
                Some("application/apply-patch+yaml"),
                serde_json::to_vec(&patch).unwrap(),
            )
            .await
        {
            Ok(Ok(_)) => {}
            // No status subresource: the status is part of the object.
            Ok(Err(crate::cluster::Refusal { code: 404, .. })) => {
                let mut whole: Value = serde_json::from_slice(&s.body).expect("JSON we wrote");
                whole["status"] = status.clone();
                match cluster
                    .send::<Value>(
                        "PATCH",
                        &apply_url,
                        Some("application/apply-patch+yaml"),
                        serde_json::to_vec(&whole).unwrap(),
                    )
                    .await
                {
                    Ok(Ok(_)) => {}
                    Ok(Err(r)) => {
                        return Err(format!(
                            "applied, but its status was refused: {}",
                            why(s, &r)
                        ));
                    }
                    Err(e) => return Err(format!("applied, but not its status: {}", e.what())),
                }
            }
            Ok(Err(r)) => {
                return Err(format!(
                    "applied, but its status was refused: {}",
                    why(s, &r)
                ));
            }
            Err(e) => return Err(format!("applied, but not its status: {}", e.what())),
        }
    }
    Ok(match s.action {
        Action::Create => Outcome::Created,
        Action::Update => Outcome::Updated,
        _ => Outcome::Recreated,
    })
}

/// Waits until a deleted object is gone (its finalizers done).
async fn gone(cluster: &Cluster, s: &Step, url: &str) -> std::result::Result<(), String> {
    let deadline = Instant::now() + WAIT;
    loop {
        match cluster.try_get::<Value>(url).await {
            Ok(Err(r)) if r.code == 404 => return Ok(()),
            Ok(Ok(obj)) if Instant::now() > deadline => {
                let finalizers = obj
                    .pointer("/metadata/finalizers")
                    .map(Value::to_string)
                    .unwrap_or_else(|| "none".into());
                return Err(format!(
                    "deleted, but still there after {} s (finalizers: {finalizers}); not recreated",
                    WAIT.as_secs()
                ));
            }
            Ok(Ok(_)) => {}
            Ok(Err(r)) => return Err(format!("cannot check the deletion: {}", why(s, &r))),
            Err(e) => return Err(e.what().to_string()),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until a CRD is Established, so its custom resources can be made.
async fn established(cluster: &Cluster, s: &Step) -> std::result::Result<(), String> {
    let url = s.ty.object(None, &s.name);
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Ok(crd)) = cluster.try_get::<Value>(&url).await
            && crd
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|c| c["type"] == "Established" && c["status"] == "True")
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "applied, but not Established after {} s: its custom resources cannot be restored",
                WAIT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs a restore (or, `dry_run`, plans it) of an opened backup.
/// `progress` gets `Some(steps)` once planned, then `None` per step done.
pub async fn restore(
    cluster: &Cluster,
    manifest: &Manifest,
    loaded: Vec<(usize, Value)>,
    opts: &Options,
    dry_run: bool,
    progress: &(dyn Fn(Option<u64>) + Sync),
) -> Result<Report> {
    let started = Instant::now();
    let mut steps = plan(cluster, manifest, loaded, opts).await?;
    progress(Some(steps.len() as u64));
    if !dry_run {
        tracing::info!(backup = %manifest.backup_id, steps = steps.len(), server = %cluster.url, "applying");
        apply(cluster, &mut steps, opts.keep, &|| progress(None)).await;
    }
    Ok(report(
        cluster,
        manifest.backup_id,
        opts,
        dry_run,
        steps,
        started.elapsed().as_secs_f64(),
    ))
}

/// The report of a restore that ran `steps` (or, `dry_run`, planned them).
pub fn report(
    cluster: &Cluster,
    backup_id: Uuid,
    opts: &Options,
    dry_run: bool,
    steps: Vec<Step>,
    seconds: f64,
) -> Report {
    let summary = Counts::of(&steps);
    for s in steps.iter().filter(|s| s.outcome == Some(Outcome::Failed)) {
        tracing::warn!(object = %s.display(), reason = s.reason.as_deref().unwrap_or(""), "not restored");
    }
    Report {
        backup_id,
        server: cluster.url.clone(),
        dry_run,
        existing: opts.existing,
        objects_per_second: steps.len() as f64 / seconds.max(1e-9),
        tally: if dry_run {
            Tally::Planned(Planned {
                create: summary.created,
                skip: summary.skipped,
                update: summary.updated,
                recreate: summary.recreated,
                cannot_restore: summary.failed,
            })
        } else {
            Tally::Done(summary.clone())
        },
        summary,
        steps,
        seconds,
    }
}

#[cfg(test)]
mod name_tests {
    use super::*;

    fn object(kind: &str, name: &str) -> KubeObject {
        KubeObject {
            group: String::new(),
            version: "v1".into(),
            kind: kind.into(),
            resource: "configmaps".into(),
            namespace: Some("shop".into()),
            name: name.into(),
            chunk: 0,
            size: 0,
        }
    }

    #[test]
    fn a_name_that_differs_from_the_listing_or_leaves_its_path_is_refused() {
        let none = NamespaceMapping::parse(&[]).unwrap();
        let body = |n: &str| json!({"metadata": {"name": n}});
        let ok = checked_name(&object("ConfigMap", "settings"), &body("settings"), &none);
        assert_eq!(ok.unwrap(), "settings");
        for (listed, inside) in [
            ("settings", "other"),
            (
                "../../namespaces/kube-system/secrets/x",
                "../../namespaces/kube-system/secrets/x",
            ),
            ("a%2Fb", "a%2Fb"),
            ("..", ".."),
        ] {
            let err = checked_name(&object("ConfigMap", listed), &body(inside), &none).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Integrity, "{listed}");
        }
        let mapping = NamespaceMapping::parse(&["shop=shop-copy".into()]).unwrap();
        let ns = KubeObject {
            namespace: None,
            ..object("Namespace", "shop")
        };
        assert_eq!(
            checked_name(&ns, &body("shop-copy"), &mapping).unwrap(),
            "shop-copy"
        );
    }
}
