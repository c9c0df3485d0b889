//! The flags resource backups and restores share, and their reports.

use std::path::PathBuf;

use clap::Args;

use crate::cluster::{Cluster, ConnectOptions};
use crate::config::Config;
use crate::error::Result;
use crate::resources::scope::{ClusterResources, Scope, ScopeFlags};
use crate::restore::resources::Report;
use crate::restore::resources::plan::{Action, Outcome, Step};

/// Which objects: the same flags for backups and restores.
#[derive(Debug, Args)]
pub(crate) struct ScopeArgs {
    /// Namespaces to include (names or patterns with * and ?, comma
    /// separated). Default: all.
    #[arg(long, value_delimiter = ',', value_name = "NS,...")]
    include_namespaces: Vec<String>,
    /// Namespaces to leave out (names or patterns).
    #[arg(long, value_delimiter = ',', value_name = "NS,...")]
    exclude_namespaces: Vec<String>,
    /// Resource types to include, as `kubectl api-resources` names them:
    /// `configmaps`, `deployments.apps`, `*.example.com`. Default: all but
    /// events, leases and nodes.
    #[arg(long, value_delimiter = ',', value_name = "RESOURCE,...")]
    include_resources: Vec<String>,
    /// Resource types to leave out.
    #[arg(long, value_delimiter = ',', value_name = "RESOURCE,...")]
    exclude_resources: Vec<String>,
    /// Only objects with these labels (`app=web`, `tier in (a,b)`, `!canary`).
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// Cluster-scoped objects: `auto` (all when no namespace is named, else
    /// those the namespaces use: their Namespace objects, PVs, StorageClasses,
    /// CRDs, ClusterRoles and ClusterRoleBindings), `true` (all) or `false`.
    #[arg(long, value_enum, default_value = "auto")]
    include_cluster_resources: ClusterResources,
}

impl ScopeArgs {
    /// No namespace named: every namespace of the cluster.
    pub(crate) fn is_unfiltered(&self) -> bool {
        self.include_namespaces.is_empty()
    }

    pub(crate) fn scope(&self) -> Result<Scope> {
        Scope::new(&ScopeFlags {
            include_namespaces: self.include_namespaces.clone(),
            exclude_namespaces: self.exclude_namespaces.clone(),
            include_resources: self.include_resources.clone(),
            exclude_resources: self.exclude_resources.clone(),
            selector: self.selector.clone(),
            cluster_resources: Some(self.include_cluster_resources),
        })
    }
}

/// Which cluster.
#[derive(Debug, Args)]
pub(crate) struct ClusterArgs {
    /// kubeconfig file. Default: kubernetes.kubeconfig in the configuration,
    /// then $KUBECONFIG, ~/.kube/config, the pod's service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context. Default: its current context.
    #[arg(long)]
    context: Option<String>,
}

impl ClusterArgs {
    pub(crate) async fn connect(&self, config: &Config) -> Result<Cluster> {
        let cluster = Cluster::connect(&ConnectOptions {
            kubeconfig: self
                .kubeconfig
                .clone()
                .or_else(|| config.kubernetes.kubeconfig.clone()),
            context: self.context.clone(),
        })
        .await?;
        tracing::info!(server = %cluster.url, version = %cluster.version, credentials = %cluster.credentials, "connected to the API server");
        Ok(cluster)
    }
}

/// `1 namespace`, `3 namespaces`.
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

pub(crate) fn render_backup(s: &crate::backup::ResourcesSummary) -> String {
    let mut t = format!(
        "backup {} ({}) of {}: {}\n  {} of {} in {}, {} new or changed ({} of {})\n  uploaded {} (packs {}, manifest {}) in {:.1} s ({:.0} objects/s)\n",
        s.backup_id,
        s.name,
        s.server,
        s.status,
        count(s.objects as usize, "object"),
        count(s.types, "type"),
        count(s.namespaces, "namespace"),
        s.new_objects,
        super::progress::human(s.new_bytes),
        super::progress::human(s.bytes),
        super::progress::human(s.uploaded_bytes),
        super::progress::human(s.stored_bytes),
        super::progress::human(s.manifest_bytes),
        s.seconds,
        s.objects_per_second,
    );
    if !s.opted_out_namespaces.is_empty() {
        t.push_str(&format!(
            "  left out by their opt-out label: {}\n",
            s.opted_out_namespaces.join(", ")
        ));
    }
    t
}

pub(crate) fn render_restore(r: &Report) -> String {
    render_restore_with(r, "")
}

/// [`render_restore`] with `before_workloads` where it happens: before the
/// first workload listed, else at the end (a set restore's claims' data).
pub(crate) fn render_restore_with(r: &Report, before_workloads: &str) -> String {
    let mut t = String::new();
    let mut pending = before_workloads;
    if r.dry_run {
        t.push_str(&format!(
            "plan to restore backup {} to {} (--existing={}); nothing was changed\n",
            r.backup_id,
            r.server,
            serde_json::to_value(r.existing)
                .unwrap()
                .as_str()
                .unwrap_or("")
        ));
    } else {
        t.push_str(&format!(
            "restored backup {} to {}\n",
            r.backup_id, r.server
        ));
    }
    // Objects that reach beyond their namespace or grant permissions come
    // last, in a section of their own: the ones to read before saying yes.
    let (special, ordinary): (Vec<&Step>, Vec<&Step>) =
        r.steps.iter().partition(|s| s.attention().is_some());
    let line = |s: &Step| {
        let what = match (s.outcome, s.action) {
            (Some(o), _) => serde_json::to_value(o).unwrap(),
            (None, a) => serde_json::to_value(a).unwrap(),
        };
        format!(
            "  {:>5}  {:<9}  {}{}{}{}\n",
            s.order,
            what.as_str().unwrap_or(""),
            s.display(),
            s.from_namespace
                .as_ref()
                .map(|ns| format!(" (from {ns})"))
                .unwrap_or_default(),
            s.attention().map(|a| format!(" [{a}]")).unwrap_or_default(),
            s.reason
                .as_ref()
                .filter(|_| s.action != Action::Create || s.outcome == Some(Outcome::Failed))
                .map(|r| format!(": {r}"))
                .unwrap_or_default(),
        )
    };
    // A dry run lists everything; a restore what was done or not.
    let show =
        |s: &Step| r.dry_run || matches!(s.outcome, Some(Outcome::Failed)) || r.steps.len() <= 200;
    for s in ordinary.into_iter().filter(|s| show(s)) {
        if s.phase >= crate::restore::resources::plan::Phase::Workloads {
            t.push_str(std::mem::take(&mut pending));
        }
        t.push_str(&line(s));
    }
    if !special.is_empty() {
        t.push_str("cluster-wide and privileged objects (read these first):\n");
        for s in special {
            t.push_str(&line(s));
        }
    }
    let c = &r.summary;
    if r.dry_run {
        t.push_str(&format!(
            "plan: {} to create, {} to skip, {} to update, {} to recreate, {} cannot be restored ({} objects)\n",
            c.created, c.skipped, c.updated, c.recreated, c.failed, r.steps.len()
        ));
    } else {
        t.push_str(&format!(
            "result: {} created, {} skipped, {} updated, {} recreated, {} failed ({} objects in {:.1} s)\n",
            c.created,
            c.skipped,
            c.updated,
            c.recreated,
            c.failed,
            r.steps.len(),
            r.seconds
        ));
    }
    t.push_str(pending);
    t
}
