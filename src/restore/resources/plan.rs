//! The plan of a resource restore: every object with what will be done to
//! it, in the order it will be done. `--dry-run` prints the plan; a restore
//! carries it out, so what the plan says is what happens.

use serde::Serialize;
use serde_json::Value;

use crate::cluster::ResourceType;

/// `--existing`: what to do with an object that already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Existing {
    /// Leave it as it is.
    Skip,
    /// Apply the backed-up object over it (server-side apply, forced): the
    /// fields the backup has take its values; fields only the live object
    /// has stay.
    Update,
    /// Delete it, wait until it is gone, create it from the backup.
    Recreate,
}

/// What is done to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Create,
    Skip,
    Update,
    Recreate,
    /// Known to fail before anything is applied (a type the cluster does
    /// not serve); reported as failed.
    Fail,
}

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Created,
    Skipped,
    Updated,
    Recreated,
    Failed,
}

/// The groups of a restore, applied one after another: what others need
/// comes first (a CR needs its CRD, a Pod its ServiceAccount, ConfigMaps
/// and claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    Crds,
    Namespaces,
    ServiceAccountsAndRbac,
    ConfigMapsAndSecrets,
    StorageClasses,
    Volumes,
    Workloads,
    Rest,
}

impl Phase {
    pub fn of(group: &str, kind: &str) -> Phase {
        match (group, kind) {
            ("apiextensions.k8s.io", "CustomResourceDefinition") => Phase::Crds,
            ("", "Namespace") => Phase::Namespaces,
            ("", "ServiceAccount") | ("rbac.authorization.k8s.io", _) => {
                Phase::ServiceAccountsAndRbac
            }
            ("", "ConfigMap" | "Secret") => Phase::ConfigMapsAndSecrets,
            ("storage.k8s.io", "StorageClass") => Phase::StorageClasses,
            ("", "PersistentVolume" | "PersistentVolumeClaim") => Phase::Volumes,
            ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
            | ("batch", "Job" | "CronJob")
            | ("", "Pod" | "ReplicationController") => Phase::Workloads,
            _ => Phase::Rest,
        }
    }
}

/// One object of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// Position in the plan, from 1.
    pub order: usize,
    pub phase: Phase,
    pub action: Action,
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// The namespace it was backed up from, when mapped elsewhere.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_namespace: Option<String>,
    /// Why the action (or the outcome) is what it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Set once the step ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcome: Option<Outcome>,
    #[serde(skip)]
    pub ty: ResourceType,
    /// The sanitised object to apply, as JSON. Never printed: it may be a
    /// Secret.
    #[serde(skip)]
    pub body: Vec<u8>,
    /// Its status, applied after it with `--restore-status`.
    #[serde(skip)]
    pub status: Option<Value>,
    /// Not from the backup: a namespace the restored objects need.
    #[serde(skip)]
    pub implied: bool,
}

impl Step {
    /// `Deployment shop/web`.
    pub fn display(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{} {ns}/{}", self.kind, self.name),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    /// Why this object deserves a look of its own before a restore: it
    /// reaches beyond its namespace (cluster-scoped), grants permissions
    /// (RBAC), or sits in the path of other requests (admission webhooks,
    /// aggregated APIs). `None` for ordinary namespaced objects and for
    /// Namespaces themselves.
    pub fn attention(&self) -> Option<&'static str> {
        match self.ty.group.as_str() {
            "rbac.authorization.k8s.io" => return Some("grants permissions"),
            "admissionregistration.k8s.io" => return Some("intercepts API requests"),
            "apiregistration.k8s.io" => return Some("serves an API"),
            _ => {}
        }
        (self.namespace.is_none() && !(self.ty.group.is_empty() && self.kind == "Namespace"))
            .then_some("cluster-scoped")
    }

    /// Whether errors about this object may quote its data.
    pub fn is_secret(&self) -> bool {
        self.ty.group.is_empty() && self.kind == "Secret"
    }
}

/// What to do with an object, given whether it exists and the policy.
pub fn decide(step: &Step, exists: bool, policy: Existing) -> (Action, Option<String>) {
    if !exists {
        return (Action::Create, None);
    }
    match policy {
        Existing::Skip => (
            Action::Skip,
            Some("exists; --existing=skip leaves it as it is".into()),
        ),
        Existing::Update => (Action::Update, None),
        // Deleting a Namespace deletes everything in it, and deleting a CRD
        // every custom resource of its kind: never as a side effect.
        Existing::Recreate if matches!(step.phase, Phase::Namespaces | Phase::Crds) => (
            Action::Update,
            Some(format!(
                "a {} is updated, not recreated: deleting it would delete {}",
                step.kind,
                if step.phase == Phase::Crds {
                    "every object of its kind"
                } else {
                    "everything in it"
                }
            )),
        ),
        Existing::Recreate => (Action::Recreate, None),
    }
}

/// Puts the steps in plan order: by phase, then type, namespace and name;
/// numbers them.
pub fn order(steps: &mut [Step]) {
    steps.sort_by(|a, b| {
        (a.phase, &a.ty.group, &a.kind, &a.namespace, &a.name).cmp(&(
            b.phase,
            &b.ty.group,
            &b.kind,
            &b.namespace,
            &b.name,
        ))
    });
    for (i, s) in steps.iter_mut().enumerate() {
        s.order = i + 1;
    }
}

/// Counts of a finished (or planned) restore.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub created: usize,
    pub skipped: usize,
    pub updated: usize,
    pub recreated: usize,
    pub failed: usize,
}

impl Counts {
    /// Counts by outcome, or by planned action when nothing ran.
    pub fn of(steps: &[Step]) -> Counts {
        let mut c = Counts::default();
        for s in steps {
            let slot = match (s.outcome, s.action) {
                (Some(Outcome::Created), _) | (None, Action::Create) => &mut c.created,
                (Some(Outcome::Skipped), _) | (None, Action::Skip) => &mut c.skipped,
                (Some(Outcome::Updated), _) | (None, Action::Update) => &mut c.updated,
                (Some(Outcome::Recreated), _) | (None, Action::Recreate) => &mut c.recreated,
                (Some(Outcome::Failed), _) | (None, Action::Fail) => &mut c.failed,
            };
            *slot += 1;
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(group: &str, kind: &str, ns: Option<&str>, name: &str) -> Step {
        Step {
            order: 0,
            phase: Phase::of(group, kind),
            action: Action::Create,
            api_version: String::new(),
            kind: kind.into(),
            namespace: ns.map(Into::into),
            name: name.into(),
            from_namespace: None,
            reason: None,
            outcome: None,
            ty: ResourceType {
                group: group.into(),
                version: "v1".into(),
                kind: kind.into(),
                plural: String::new(),
                namespaced: ns.is_some(),
            },
            body: Vec::new(),
            status: None,
            implied: false,
        }
    }

    #[test]
    fn what_others_need_comes_first() {
        let mut steps = vec![
            step("example.com", "Widget", Some("shop"), "w"),
            step("apps", "Deployment", Some("shop"), "web"),
            step("", "Service", Some("shop"), "web"),
            step("", "PersistentVolumeClaim", Some("shop"), "data"),
            step("", "Secret", Some("shop"), "s"),
            step(
                "rbac.authorization.k8s.io",
                "RoleBinding",
                Some("shop"),
                "rb",
            ),
            step("", "ServiceAccount", Some("shop"), "sa"),
            step("", "Namespace", None, "shop"),
            step(
                "apiextensions.k8s.io",
                "CustomResourceDefinition",
                None,
                "widgets.example.com",
            ),
            step("storage.k8s.io", "StorageClass", None, "fast"),
            step("", "ConfigMap", Some("shop"), "c"),
        ];
        order(&mut steps);
        let kinds: Vec<&str> = steps.iter().map(|s| s.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "CustomResourceDefinition",
                "Namespace",
                "ServiceAccount",
                "RoleBinding",
                "ConfigMap",
                "Secret",
                "StorageClass",
                "PersistentVolumeClaim",
                "Deployment",
                "Service",
                "Widget",
            ]
        );
        assert_eq!(steps[0].order, 1);
    }

    #[test]
    fn policies_decide_for_existing_objects_only() {
        let cm = step("", "ConfigMap", Some("shop"), "c");
        assert_eq!(decide(&cm, false, Existing::Skip).0, Action::Create);
        assert_eq!(decide(&cm, true, Existing::Skip).0, Action::Skip);
        assert_eq!(decide(&cm, true, Existing::Update).0, Action::Update);
        assert_eq!(decide(&cm, true, Existing::Recreate).0, Action::Recreate);
        let ns = step("", "Namespace", None, "shop");
        assert_eq!(decide(&ns, true, Existing::Recreate).0, Action::Update);
    }
}
