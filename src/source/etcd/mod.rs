//! The etcd source: a healthy member chosen from `etcd:` in the config, its
//! snapshot streamed into the write pipeline ([`snapshot`]), and what the
//! snapshot's own pages say about it ([`bbolt`]).
//!
//! TLS is the default: etcd holds every Secret of the cluster, so plain http is
//! accepted only when the config says `insecure: true` (checked in
//! [`crate::config`]), and every TLS file is read and checked up front so that
//! a wrong path or a key given as the certificate is reported by name instead
//! of as a handshake failure.

pub mod bbolt;
pub mod snapshot;

use std::path::Path;
use std::time::Duration;

use etcd_client::{
    AlarmAction, AlarmType, Certificate, Client, ConnectOptions, GetOptions, Identity, TlsOptions,
};
use serde::Serialize;

use crate::config::EtcdConfig;
use crate::error::{Error, ErrorKind, Result};

/// How long to wait for a member to answer before giving up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Connects to the configured etcd endpoints and checks that one answers.
pub async fn connect(cfg: &EtcdConfig) -> Result<Client> {
    let options = options(cfg)?.with_timeout(REQUEST_TIMEOUT);
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
            format!(
                "cannot connect to etcd at {}: {}",
                cfg.endpoints.join(", "),
                explain(cfg, &e)
            ),
        )
        .with_guidance(GUIDANCE)
    })
}

const GUIDANCE: &str = "check that the endpoints are reachable from here and, for https, that \
     etcd.ca_file signs the server certificate and etcd.cert_file/key_file are a client pair \
     etcd trusts";

/// Connection options: timeouts and, for https, the TLS files.
fn options(cfg: &EtcdConfig) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new()
        .with_connect_timeout(CONNECT_TIMEOUT)
        // A snapshot of a big keyspace streams for minutes: no deadline on
        // the call, but a connection that stops answering is dropped.
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(20));
    if cfg.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            let pem = read_pem("etcd.ca_file", ca, "CERTIFICATE")?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        if let (Some(cert), Some(key)) = (&cfg.cert_file, &cfg.key_file) {
            tls = tls.identity(Identity::from_pem(
                read_pem("etcd.cert_file", cert, "CERTIFICATE")?,
                read_pem("etcd.key_file", key, "PRIVATE KEY")?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

/// Reads a PEM file and checks it holds a block of `label` (a certificate
/// given as the key, or the other way round, fails here by name).
fn read_pem(key: &str, path: &Path, label: &str) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::config(format!("cannot read {key} {}", path.display()))
            .with_source(e)
            .with_guidance(format!("fix {key} in the configuration file"))
    })?;
    let text = String::from_utf8_lossy(&bytes);
    let holds = text.lines().any(|l| {
        l.trim_end()
            .strip_prefix("-----BEGIN ")
            .and_then(|l| l.strip_suffix("-----"))
            .is_some_and(|l| l.ends_with(label))
    });
    if !holds {
        // Never echo the content: it may be a private key.
        return Err(
            Error::config(format!("{key} {} holds no PEM {label}", path.display())).with_guidance(
                format!("{key} must be a PEM file with a `-----BEGIN {label}-----` block"),
            ),
        );
    }
    Ok(bytes)
}

/// An etcd-client error in one line for people: a gRPC status is its
/// message and code (its Display dumps the metadata map and details).
pub(crate) fn brief(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => {
            let message = status.message().trim();
            let code = status.code().description();
            if message.is_empty() {
                code.to_string()
            } else {
                format!("{message} ({code})")
            }
        }
        other => other.to_string(),
    }
}

/// A one-line reason for a connection failure, naming the TLS file at fault
/// where the error says which check failed. etcd-client's errors carry only
/// the transport's text: nothing of the request, so nothing secret.
fn explain(cfg: &EtcdConfig, e: &etcd_client::Error) -> String {
    // The whole text: a TLS failure's cause is only in the status's Display.
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        source = s.source();
    }
    let file = |f: &Option<std::path::PathBuf>| {
        f.as_ref()
            .map_or("(not set)".to_string(), |p| p.display().to_string())
    };
    let l = text.to_ascii_lowercase();
    if l.contains("unknownissuer") || l.contains("unknown issuer") {
        format!(
            "TLS: the server's certificate is not signed by etcd.ca_file {} ({text})",
            file(&cfg.ca_file)
        )
    } else if l.contains("notvalidforname") || l.contains("not valid for name") {
        format!("TLS: the server's certificate does not name the host of the endpoint ({text})")
    } else if l.contains("certificate") && l.contains("expired") {
        format!("TLS: a certificate has expired ({text})")
    } else if l.contains("certificaterequired")
        || l.contains("certificate required")
        || l.contains("bad certificate")
        || l.contains("badcertificate")
        || l.contains("unknown ca")
        || l.contains("unknownca")
    {
        format!(
            "TLS: etcd refused the client certificate etcd.cert_file {} ({text})",
            file(&cfg.cert_file)
        )
    } else if cfg.endpoints.iter().any(|e| e.starts_with("https://"))
        && cfg.cert_file.is_some()
        && ["broken pipe", "connection reset", "connection closed"]
            .iter()
            .any(|w| l.contains(w))
    {
        // TLS 1.3 finishes the handshake before the server checks the
        // client certificate; a refusal then shows as a closed connection.
        format!(
            "TLS: etcd closed the connection at the first request, which is how it refuses \
             a client certificate it does not trust: check that etcd.cert_file {} is signed \
             by etcd's --trusted-ca-file ({text})",
            file(&cfg.cert_file)
        )
    } else if l.contains("connection refused") {
        format!("connection refused ({text})")
    } else if l.contains("timed out") || l.contains("timeout") || l.contains("deadline") {
        format!("no answer within {} s ({text})", CONNECT_TIMEOUT.as_secs())
    } else {
        text
    }
}

/// The member a snapshot is taken from, and what it said about itself.
#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub endpoint: String,
    /// The member id, in hex as etcdctl prints it.
    pub member_id: String,
    pub version: String,
    pub db_size: i64,
    pub revision: i64,
    pub is_leader: bool,
    /// Alarms raised on it that do not stop a backup (NOSPACE).
    pub alarms: Vec<String>,
}

/// A connection to one member, chosen healthy.
pub struct Member {
    pub status: MemberStatus,
    pub client: Client,
}

impl Member {
    /// The number of keys at `revision` and `HashKV` at it, with the
    /// compaction revision the hash was taken under.
    pub async fn key_count_and_hash(&mut self, revision: i64) -> Result<(i64, u32, i64)> {
        let count = self
            .client
            .get(
                vec![0u8],
                Some(
                    GetOptions::new()
                        .with_range(vec![0u8])
                        .with_revision(revision)
                        .with_count_only()
                        .with_serializable(),
                ),
            )
            .await
            .map_err(|e| self.failed("count its keys", e))?
            .count();
        let hash = self
            .client
            .hash_kv(revision)
            .await
            .map_err(|e| self.failed("read HashKV", e))?;
        Ok((count, hash.hash(), hash.compact_version()))
    }

    /// Keys under `prefix` at `revision`, counted per resource type: the
    /// first two segments after the prefix (`apps/deployments` for
    /// `/registry/apps/deployments/shop/web`, the stand-in API server's
    /// layout). What a drill counts again through an API server on the
    /// restored keyspace. Keys only, a page at a time.
    pub async fn count_by_type(
        &mut self,
        revision: i64,
        prefix: &str,
    ) -> Result<std::collections::BTreeMap<String, i64>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let mut from = prefix.as_bytes().to_vec();
        let mut counts = std::collections::BTreeMap::new();
        loop {
            let page = self
                .client
                .get(
                    from.clone(),
                    Some(
                        GetOptions::new()
                            .with_range(end.clone())
                            .with_revision(revision)
                            .with_keys_only()
                            .with_limit(10_000)
                            .with_serializable(),
                    ),
                )
                .await
                .map_err(|e| self.failed("list its keys", e))?;
            for kv in page.kvs() {
                let key = String::from_utf8_lossy(kv.key());
                let rest = key.strip_prefix(prefix).unwrap_or(&key);
                let mut parts = rest.splitn(3, '/');
                if let (Some(a), Some(b), Some(_)) = (parts.next(), parts.next(), parts.next()) {
                    *counts.entry(format!("{a}/{b}")).or_insert(0) += 1;
                }
            }
            match page.kvs().last() {
                Some(last) if page.more() => {
                    from = last.key().to_vec();
                    from.push(0);
                }
                _ => return Ok(counts),
            }
        }
    }

    fn failed(&self, what: &str, e: etcd_client::Error) -> Error {
        Error::new(
            ErrorKind::Unavailable,
            format!(
                "etcd member {} ({}) failed to {what}: {}",
                self.status.member_id,
                self.status.endpoint,
                brief(&e)
            ),
        )
    }
}

/// Why one endpoint was not chosen.
struct Refusal {
    endpoint: String,
    reason: String,
}

/// Picks the member to snapshot: one that answers, is a voting member, sees a
/// leader and has no CORRUPT alarm. Followers are preferred, so the leader
/// keeps its disk and network for the cluster; among equals, config order.
/// When none qualifies, the error names every member and why.
pub async fn pick_member(cfg: &EtcdConfig) -> Result<Member> {
    let options = options(cfg)?;
    // Probed together: an endpoint that does not answer delays the others
    // by nothing.
    let probes: Vec<_> = cfg
        .endpoints
        .iter()
        .map(|ep| {
            let (cfg, ep, options) = (cfg.clone(), ep.clone(), options.clone());
            tokio::spawn(async move { probe(&cfg, &ep, options).await })
        })
        .collect();
    let mut healthy = Vec::new();
    let mut refused = Vec::new();
    for p in probes {
        let r = p
            .await
            .map_err(|e| Error::new(ErrorKind::Failed, "an etcd probe panicked").with_source(e))?;
        match r {
            Ok(m) => healthy.push(m),
            Err(r) => refused.push(r),
        }
    }
    for r in &refused {
        tracing::warn!(endpoint = %r.endpoint, reason = %r.reason, "etcd member not used");
    }
    // Stable: config order within followers, then leaders.
    healthy.sort_by_key(|m: &Member| m.status.is_leader);
    if let Some(m) = healthy.into_iter().next() {
        for a in &m.status.alarms {
            tracing::warn!(member = %m.status.member_id, alarm = %a, "member has an alarm; backing it up anyway");
        }
        return Ok(m);
    }
    let all_unreachable = refused.iter().all(|r| r.reason.starts_with("unreachable"));
    let list = refused
        .iter()
        .map(|r| format!("\n  {}: {}", r.endpoint, r.reason))
        .collect::<String>();
    let e = Error::new(
        ErrorKind::Unavailable,
        format!("no healthy etcd member to snapshot:{list}"),
    );
    Err(if all_unreachable {
        e.with_guidance(GUIDANCE)
    } else {
        e.with_guidance(
            "a member must answer, be a voting member, see a leader and have no CORRUPT alarm; \
             fix the cluster (etcdctl endpoint status/health, etcdctl alarm list) or list a \
             healthy member in etcd.endpoints",
        )
    })
}

async fn probe(
    cfg: &EtcdConfig,
    endpoint: &str,
    options: ConnectOptions,
) -> std::result::Result<Member, Refusal> {
    let refuse = |reason: String| Refusal {
        endpoint: endpoint.to_string(),
        reason,
    };
    let quick = options.clone().with_timeout(CONNECT_TIMEOUT);
    let answer = async {
        let mut c = Client::connect([endpoint], Some(quick)).await?;
        let status = c.status().await?;
        Ok::<_, etcd_client::Error>((c, status))
    };
    let (mut quick_client, status) = tokio::time::timeout(CONNECT_TIMEOUT * 2, answer)
        .await
        .map_err(|_| {
            refuse(format!(
                "unreachable: no answer within {} s",
                (CONNECT_TIMEOUT * 2).as_secs()
            ))
        })?
        .map_err(|e| refuse(format!("unreachable: {}", explain(cfg, &e))))?;
    let id = status.header().map_or(0, |h| h.member_id());
    if status.leader() == 0 {
        return Err(refuse(format!(
            "member {id:x} sees no leader: the cluster has lost quorum or is still starting"
        )));
    }
    // etcd lists the cluster's alarms among the errors; those are judged
    // below, from the alarm list, for this member.
    let errors: Vec<&str> = status
        .errors()
        .iter()
        .map(|e| e.trim())
        .filter(|e| !(e.starts_with("memberID:") && e.contains(" alarm:")))
        .collect();
    if !errors.is_empty() {
        return Err(refuse(format!(
            "member {id:x} reports errors: {}",
            errors.join("; ")
        )));
    }
    if status.is_learner() {
        return Err(refuse(format!("member {id:x} is a learner, which may lag")));
    }
    // The alarm list goes through raft: asked only of a member with a leader.
    let alarms = quick_client
        .alarm(AlarmAction::Get, AlarmType::None, None)
        .await
        .map_err(|e| {
            refuse(format!(
                "member {id:x} does not answer the alarm list: {}",
                explain(cfg, &e)
            ))
        })?;
    let mut own = Vec::new();
    for a in alarms.alarms().iter().filter(|a| a.member_id() == id) {
        match a.alarm() {
            AlarmType::Corrupt => {
                return Err(refuse(format!(
                    "member {id:x} has a CORRUPT alarm: its data disagrees with the cluster"
                )));
            }
            AlarmType::None => {}
            other => own.push(format!("{other:?}").to_uppercase()),
        }
    }
    // The snapshot streams on a connection of its own, without deadline.
    let client = Client::connect([endpoint], Some(options))
        .await
        .map_err(|e| refuse(format!("unreachable: {}", explain(cfg, &e))))?;
    Ok(Member {
        status: MemberStatus {
            endpoint: endpoint.to_string(),
            member_id: format!("{id:x}"),
            version: status.version().to_string(),
            db_size: status.db_size(),
            revision: status.header().map_or(0, |h| h.revision()),
            is_leader: status.leader() == id,
            alarms: own,
        },
        client,
    })
}

#[cfg(test)]
mod tests {
    /// A gRPC status prints as one line: its message, then its code in
    /// words (its Display quotes both and may add metadata and details).
    #[test]
    fn a_grpc_status_is_one_readable_line() {
        let status = tonic::Status::unavailable("error trying to connect: tcp connect error");
        let e = etcd_client::Error::GRpcStatus(status);
        let said = super::brief(&e);
        assert_eq!(
            said,
            "error trying to connect: tcp connect error (The service is currently unavailable)"
        );
    }
}
