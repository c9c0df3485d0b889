//! `drctl agent`: the node agent (src/agent).

use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::Context;
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// This node's name, as pods' spec.nodeName says it (in a DaemonSet:
    /// the downward API's spec.nodeName in NODE_NAME).
    #[arg(long, env = "NODE_NAME")]
    node: String,
    /// The kubelet's root directory (its --root-dir), mounted read-only
    /// with HostToContainer propagation.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet")]
    kubelet_root: PathBuf,
    /// Where the node's root file system is, for hostPath volumes.
    #[arg(long, value_name = "DIR", default_value = "/")]
    host_root: PathBuf,
    #[command(flatten)]
    cluster: super::resources::ClusterArgs,
}

impl AgentArgs {
    pub(crate) async fn run(self, ctx: &Context) -> Result<()> {
        let loaded = ctx.load_config()?;
        if !self.kubelet_root.join("pods").is_dir() {
            return Err(Error::new(
                ErrorKind::Config,
                format!(
                    "{} has no pods/ directory: it is not the kubelet's root",
                    self.kubelet_root.display()
                ),
            )
            .with_guidance(
                "pass --kubelet-root, the kubelet's --root-dir (default /var/lib/kubelet)",
            ));
        }
        let catalog = ctx.catalog(&loaded).await?;
        let cluster = self.cluster.connect(&loaded.config).await?;
        // A writer: recipients and the repository secret, never the identity.
        let repo = super::open_writer(&loaded.config, ctx.identity.clone()).await?;
        let repo_id = catalog
            .ensure_repository(&repo.config, &repo.store.location())
            .await?;
        let agent = crate::agent::Agent {
            holder: format!(
                "agent-{}-{}-{}",
                self.node,
                crate::server::hostname(),
                std::process::id()
            ),
            node: self.node,
            kubelet_root: self.kubelet_root,
            host_root: self.host_root,
            catalog,
            repo: Arc::new(repo),
            repo_id,
            config: Arc::new(loaded.config),
            cluster,
        };
        let stop = super::stop_on_signal();
        crate::agent::run(agent, stop).await
    }
}
