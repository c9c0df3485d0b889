//! The etcd source: a connection built from `etcd:` in the config.
//!
//! TLS is the default: etcd holds every Secret of the cluster, so plain http is
//! accepted only when the config says `insecure: true` (checked in
//! [`crate::config`]), and every TLS file is read up front so that a wrong path
//! is reported by name instead of as a handshake failure.

use std::path::Path;
use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use crate::config::EtcdConfig;
use crate::error::{Error, ErrorKind, Result};

/// How long to wait for a member to answer before trying the next or failing.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the configured etcd endpoints and checks that one answers.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT);
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(Certificate::from_pem(read_pem("etcd.ca_file", ca)?));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_pem("etcd.cert_file", cert)?,
                read_pem("etcd.key_file", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    // The channel connects lazily; a status call proves a member answers now,
    // so a wrong endpoint or certificate is reported here, not mid-backup.
    let connected = async {
        let mut client = Client::connect(&cfg.endpoints, Some(options)).await?;
        client.status().await?;
        Ok::<_, etcd_client::Error>(client)
    };
    connected.await.map_err(|e| {
        Error::new(
            ErrorKind::Unavailable,
            format!("cannot connect to etcd at {}", cfg.endpoints.join(", ")),
        )
        .with_source(e)
        .with_guidance(
            "check that the endpoints are reachable from here and, for https, that \
                 etcd.ca_file signs the server certificate and etcd.cert_file/key_file are \
                 a client pair etcd trusts",
        )
    })
}

fn read_pem(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        Error::config(format!("cannot read {key} {}", path.display()))
            .with_source(e)
            .with_guidance(format!("fix {key} in the configuration file"))
    })
}
