//! `drctl doctor`: every setup check at once, a table with a fix per failure.

use std::path::PathBuf;

use clap::Args;

use super::{Context, Out};
use crate::doctor::{self, Report, Role, Status};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// The process the checks are for: what it must reach, the permissions
    /// its ClusterRole in deploy/ grants, and whether it must hold the age
    /// identity (worker, restore) or must not (server, agent).
    #[arg(long, value_enum, default_value_t = Role::Server)]
    role: Role,
    /// kubeconfig file. Default: kubernetes.kubeconfig in the configuration,
    /// then $KUBECONFIG, ~/.kube/config, the pod's service account.
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,
    /// kubeconfig context. Default: its current context.
    #[arg(long)]
    context: Option<String>,
}

impl DoctorArgs {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let report = doctor::run(&doctor::Options {
            config: ctx.config_path(),
            identity: ctx.identity.clone(),
            role: self.role,
            kubeconfig: self.kubeconfig,
            context: self.context,
        })
        .await;
        out.emit(&report, || render(&report));
        let failed = report.failed();
        if failed.is_empty() {
            return Ok(());
        }
        let names: Vec<&str> = failed.iter().map(|c| c.name).collect();
        Err(Error::new(
            ErrorKind::Failed,
            format!(
                "{} of {} checks failed: {}",
                failed.len(),
                report.checks.len(),
                names.join(", ")
            ),
        )
        .with_guidance("each failed check has its fix above; run `drctl doctor` again after"))
    }
}

/// The table: one line per check, its fix under it.
fn render(report: &Report) -> String {
    let width = report
        .checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max("CHECK".len());
    let mut t = format!(
        "drctl doctor, role {}, configuration {}\n\n{:width$}  STATUS  DETAIL\n",
        report.role.as_str(),
        report.config,
        "CHECK"
    );
    for c in &report.checks {
        t.push_str(&format!(
            "{:width$}  {:6}  {}\n",
            c.name,
            c.status.as_str().to_ascii_uppercase(),
            c.detail
        ));
        if let Some(fix) = &c.fix {
            t.push_str(&format!("{:width$}          fix: {fix}\n", ""));
        }
    }
    t.push_str(&format!(
        "\n{} passed, {} failed, {} warnings, {} skipped\n",
        report.count(Status::Pass),
        report.count(Status::Fail),
        report.count(Status::Warn),
        report.count(Status::Skip)
    ));
    t
}
