use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Subcommand;

use super::Out;
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Subcommand)]
pub(crate) enum DevCommand {
    /// Run the stand-in Kubernetes API server (for tests and demos, not
    /// production) on an etcd, print its kubeconfig path, serve until
    /// interrupted. kubectl and the kube crate work against it.
    Cluster {
        /// etcd client URL (plain http: a throwaway etcd on loopback).
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        etcd: String,
        /// Key prefix of the API objects in etcd.
        #[arg(long, default_value = "/registry/")]
        prefix: String,
        /// Address to serve on; port 0 picks a free one.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Where to write the kubeconfig.
        #[arg(long, default_value = "drctl-dev.kubeconfig")]
        kubeconfig: PathBuf,
    },
}

impl DevCommand {
    pub(crate) async fn run(self, out: &Out) -> Result<()> {
        match self {
            DevCommand::Cluster {
                etcd,
                prefix,
                listen,
                kubeconfig,
            } => {
                let running = crate::dev::apiserver::start(crate::dev::apiserver::Options {
                    etcd: vec![etcd],
                    prefix,
                    listen,
                    kubeconfig,
                })
                .await?;
                let path = running.kubeconfig.display().to_string();
                out.emit(
                    &serde_json::json!({"url": running.url, "kubeconfig": path}),
                    || {
                        format!(
                            "serving the stand-in API server at {}\nkubeconfig: {path}\n  export KUBECONFIG={path}\n",
                            running.url
                        )
                    },
                );
                tokio::signal::ctrl_c()
                    .await
                    .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot wait for an interrupt"))?;
                running.stop();
                Ok(())
            }
        }
    }
}
