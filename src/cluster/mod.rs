//! The Kubernetes API server that resource backups read from and restores
//! write to: how drctl reaches it, who drctl is to it, and what it said when
//! it refused.
//!
//! Every request goes through [`Cluster`], so every failure names the
//! server, the kubeconfig, context and user it used and the kind of
//! credential (never the credential itself), and the server's own words.

pub mod discovery;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};

pub use discovery::ResourceType;

/// Where the credentials come from: `--kubeconfig`/`--context`, else
/// `kubernetes.kubeconfig` in the configuration, else `$KUBECONFIG`, else
/// `~/.kube/config`, else the pod's service account.
#[derive(Debug, Clone, Default)]
pub struct ConnectOptions {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
}

/// Who drctl is to the API server, for messages: where the credentials came
/// from and what kind they are.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub source: String,
    pub method: String,
}

impl std::fmt::Display for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.source, self.method)
    }
}

/// A connection to an API server that answered and accepted the credentials.
#[derive(Clone)]
pub struct Cluster {
    client: kube::Client,
    pub url: String,
    pub credentials: Credentials,
    /// The server's version (`v1.32.0`).
    pub version: String,
}

/// A request the API server refused, with its HTTP code and reason.
#[derive(Debug, Clone)]
pub struct Refusal {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl Cluster {
    /// Reads the credentials, connects, and asks the server its version:
    /// an unreachable server or refused credentials are found here, before
    /// anything is read or written.
    pub async fn connect(opts: &ConnectOptions) -> Result<Cluster> {
        let (config, credentials) = load_config(opts).await?;
        let url = config
            .cluster_url
            .to_string()
            .trim_end_matches('/')
            .to_string();
        let client = kube::Client::try_from(config).map_err(|e| {
            Error::config(format!(
                "cannot make a Kubernetes client from {credentials}: {}",
                chain(&e)
            ))
        })?;
        let mut cluster = Cluster {
            client,
            url,
            credentials,
            version: String::new(),
        };
        let info = cluster.get("/version").await?;
        cluster.version = info
            .get("gitVersion")
            .and_then(Value::as_str)
            .unwrap_or("unknown")
            .to_string();
        Ok(cluster)
    }

    /// GET `path` as JSON.
    pub async fn get(&self, path: &str) -> Result<Value> {
        self.try_get(path)
            .await?
            .map_err(|r| self.refused("GET", path, &r))
    }

    /// GET `path`; a refusal (404, 403, …) is returned as data, for callers
    /// that expect some (an object that may not exist).
    pub async fn try_get<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<std::result::Result<T, Refusal>> {
        self.send("GET", path, None, Vec::new()).await
    }

    /// Sends a request; the answer as `T`, or the server's refusal.
    /// Failing to reach the server is an error.
    pub async fn send<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Result<std::result::Result<T, Refusal>> {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("Accept", "application/json");
        if let Some(ct) = content_type {
            req = req.header("Content-Type", ct);
        }
        let req = req
            .body(body)
            .map_err(|e| Error::new(ErrorKind::Failed, format!("bad request {path}: {e}")))?;
        match self.client.request_text(req).await {
            Ok(text) => serde_json::from_str(&text).map(Ok).map_err(|e| {
                Error::new(
                    ErrorKind::Failed,
                    format!("the API server at {} answered {method} {path} with something that is not the expected JSON: {e}", self.url),
                )
            }),
            Err(kube::Error::Api(status)) => Ok(Err(Refusal {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            })),
            Err(e) => Err(self.unreachable(&e)),
        }
    }

    /// The error for a refusal the caller cannot go on after.
    pub fn refused(&self, method: &str, path: &str, r: &Refusal) -> Error {
        match r.code {
            401 => Error::new(
                ErrorKind::Permission,
                format!(
                    "the API server at {} refused the credentials of {}: 401 {}: {}",
                    self.url, self.credentials, r.reason, r.message
                ),
            )
            .with_guidance(
                "the token or certificate is wrong or expired: check that user in the kubeconfig \
                 (`kubectl auth whoami` with the same kubeconfig and context)",
            ),
            403 => Error::new(
                ErrorKind::Permission,
                format!(
                    "the API server at {} does not allow {} to {method} {path}: {}",
                    self.url, self.credentials, r.message
                ),
            )
            .with_guidance(
                "grant the role docs/resources.md lists (read for backups, write for restores)",
            ),
            _ => Error::new(
                ErrorKind::Failed,
                format!(
                    "the API server at {} refused {method} {path}: {} {}: {}",
                    self.url, r.code, r.reason, r.message
                ),
            ),
        }
    }

    fn unreachable(&self, e: &kube::Error) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "cannot reach the API server at {} (from {}): {}",
                self.url,
                self.credentials,
                chain(e)
            ),
        )
        .with_guidance(
            "check that the cluster is up and that the kubeconfig names the right server",
        )
    }
}

/// An error and its causes, as one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

async fn load_config(opts: &ConnectOptions) -> Result<(kube::Config, Credentials)> {
    let path = opts
        .kubeconfig
        .clone()
        .or_else(|| {
            std::env::var_os("KUBECONFIG")
                .filter(|v| !v.is_empty())
                .and_then(|v| std::env::split_paths(&v).next())
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| Path::new(&h).join(".kube/config"))
                .filter(|p| p.exists())
        });
    let mut config = match path {
        Some(path) => {
            let kc = Kubeconfig::read_from(&path).map_err(|e| {
                Error::config(format!(
                    "cannot read the kubeconfig {}: {}",
                    path.display(),
                    chain(&e)
                ))
                .with_guidance("pass --kubeconfig FILE or set kubernetes.kubeconfig")
            })?;
            let credentials = describe(&path, &kc, opts.context.as_deref());
            let options = KubeConfigOptions {
                context: opts.context.clone(),
                ..Default::default()
            };
            let config = kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| {
                    Error::config(format!("cannot use {credentials}: {}", chain(&e))).with_guidance(
                        "check the context, cluster and user entries of the kubeconfig",
                    )
                })?;
            (config, credentials)
        }
        None => {
            let credentials = Credentials {
                source: "the pod's service account".into(),
                method: "bearer token".into(),
            };
            let config = kube::Config::incluster().map_err(|e| {
                Error::config(format!("no Kubernetes credentials: {}", chain(&e))).with_guidance(
                    "pass --kubeconfig FILE, set kubernetes.kubeconfig or $KUBECONFIG, or run in a pod",
                )
            })?;
            (config, credentials)
        }
    };
    config.0.connect_timeout = Some(Duration::from_secs(10));
    config.0.read_timeout = Some(Duration::from_secs(120));
    Ok(config)
}

/// Which context and user of `kc` will be used, and what kind of
/// credential that user has.
fn describe(path: &Path, kc: &Kubeconfig, context: Option<&str>) -> Credentials {
    let ctx_name = context
        .map(str::to_string)
        .or_else(|| kc.current_context.clone())
        .unwrap_or_default();
    let user = kc
        .contexts
        .iter()
        .find(|c| c.name == ctx_name)
        .and_then(|c| c.context.as_ref())
        .and_then(|c| c.user.clone())
        .unwrap_or_default();
    let method = kc
        .auth_infos
        .iter()
        .find(|u| u.name == user)
        .and_then(|u| u.auth_info.as_ref())
        .map(|a| {
            if a.token.is_some() || a.token_file.is_some() {
                "bearer token".to_string()
            } else if a.client_certificate.is_some() || a.client_certificate_data.is_some() {
                "client certificate".to_string()
            } else if let Some(exec) = &a.exec {
                format!("exec plugin `{}`", exec.command.as_deref().unwrap_or("?"))
            } else if a.auth_provider.is_some() {
                "auth provider".to_string()
            } else if a.username.is_some() {
                "basic auth".to_string()
            } else {
                "no credentials".to_string()
            }
        })
        .unwrap_or_else(|| "no credentials".to_string());
    Credentials {
        source: format!(
            "user `{user}` of context `{ctx_name}` in kubeconfig {}",
            path.display()
        ),
        method,
    }
}
