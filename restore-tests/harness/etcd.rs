//! A throwaway etcd of a test's own, for tests that need a whole keyspace
//! (the shared etcd is split by key prefix, and a snapshot is of everything).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::{Client, GetOptions};

use super::services::free_port;
pub(crate) use super::services::which;

/// An etcd process on loopback, killed on drop.
pub struct Etcd {
    pub client_url: String,
    pub log: PathBuf,
    /// CA, client certificate and key, when it serves TLS.
    tls: Option<[PathBuf; 3]>,
    child: Child,
    _dir: Option<tempfile::TempDir>,
}

/// The path of `etcd`, or a failure that names the package.
pub fn etcd_binary() -> PathBuf {
    which("etcd").unwrap_or_else(|| {
        panic!("etcd not found on PATH: install the Debian package `etcd-server` (./scripts/setup does)")
    })
}

impl Etcd {
    /// A new single-member cluster with an empty keyspace.
    ///
    /// Ports are picked by binding and closing, so another process may take
    /// one before etcd binds it: a start that fails on "address already in
    /// use" is tried again on new ports (on a fresh data directory).
    pub fn start() -> Etcd {
        for attempt in 0.. {
            let dir = tempfile::tempdir().expect("temp dir");
            let peer_url = format!("http://127.0.0.1:{}", free_port());
            let name = "drctl-t".to_string();
            let cluster = format!("{name}={peer_url}");
            let mut etcd = Self::spawn(
                &name,
                &dir.path().join("data"),
                &peer_url,
                &cluster,
                dir.path(),
                &[],
            );
            // etcd binds its ports first thing: a clash shows at once.
            let deadline = Instant::now() + Duration::from_millis(1500);
            let mut clashed = false;
            let client_addr = etcd
                .client_url
                .rsplit_once("://")
                .map(|(_, a)| a.to_string())
                .unwrap_or_default();
            while Instant::now() < deadline {
                // Listening on its client port: the ports are its own.
                if std::net::TcpStream::connect(&client_addr).is_ok() {
                    break;
                }
                if let Ok(Some(_)) = etcd.child.try_wait() {
                    let said = std::fs::read_to_string(&etcd.log).unwrap_or_default();
                    clashed = said.contains("address already in use");
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if clashed && attempt < 3 {
                continue;
            }
            etcd._dir = Some(dir);
            return etcd;
        }
        unreachable!("returns or retries")
    }

    /// etcd on a data directory made by `snapshot restore` for member
    /// `name` at `peer_url` (in `cluster`), logging into `log_dir`.
    pub fn start_on(data_dir: &Path, name: &str, peer_url: &str, log_dir: &Path) -> Etcd {
        let cluster = format!("{name}={peer_url}");
        Self::spawn(name, data_dir, peer_url, &cluster, log_dir, &[])
    }

    /// etcd with extra flags (TLS, quotas, another cluster layout).
    pub fn spawn(
        name: &str,
        data_dir: &Path,
        peer_url: &str,
        cluster: &str,
        log_dir: &Path,
        extra: &[String],
    ) -> Etcd {
        // TLS when the flags say so. The test's own client trusts
        // --trusted-ca-file and presents --test-client-cert/-key, two flags
        // of this harness that etcd never sees.
        let flag = |f: &str| {
            extra
                .iter()
                .position(|a| a == f)
                .map(|i| PathBuf::from(&extra[i + 1]))
        };
        let tls = flag("--cert-file").is_some();
        let client_pair = match (
            flag("--trusted-ca-file"),
            flag("--test-client-cert"),
            flag("--test-client-key"),
        ) {
            (Some(ca), Some(c), Some(k)) => Some([ca, c, k]),
            _ => None,
        };
        let extra: Vec<&String> = {
            let mut skip = 0;
            extra
                .iter()
                .filter(|a| {
                    if skip > 0 {
                        skip -= 1;
                        return false;
                    }
                    if a.starts_with("--test-client-") {
                        skip = 1;
                        return false;
                    }
                    true
                })
                .collect()
        };
        let client_url = format!(
            "{}://127.0.0.1:{}",
            if tls { "https" } else { "http" },
            free_port()
        );
        let log = log_dir.join(format!("etcd-{name}-{}.log", free_port()));
        let file = std::fs::File::create(&log).expect("create the etcd log");
        let mut cmd = Command::new(etcd_binary());
        cmd.args(["--name", name, "--data-dir"])
            .arg(data_dir)
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", peer_url])
            .args(["--initial-advertise-peer-urls", peer_url])
            .args(["--initial-cluster", cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--logger", "zap", "--log-level", "warn"])
            .args(["--log-outputs", "stderr"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        // SIGKILL when the test's thread ends, however it ends.
        super::services::die_with_spawner(&mut cmd, libc::SIGKILL);
        let child = cmd.spawn().expect("start etcd");
        Etcd {
            client_url,
            log,
            tls: client_pair,
            child,
            _dir: None,
        }
    }

    /// Waits until a status call answers (and, with `leader`, a leader is
    /// elected).
    pub async fn ready(&mut self, leader: bool) -> &mut Self {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "etcd exited ({status}):\n{}",
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            if let Ok(mut c) = self.try_client().await
                && let Ok(s) = c.status().await
                && (!leader || s.leader() != 0)
            {
                return self;
            }
            assert!(
                Instant::now() < deadline,
                "etcd at {} did not answer within 30 s:\n{}",
                self.client_url,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn try_client(&self) -> Result<Client, etcd_client::Error> {
        let mut options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(30));
        if let Some([ca, cert, key]) = &self.tls {
            let read = |p: &PathBuf| std::fs::read(p).expect("read a test TLS file");
            options = options.with_tls(
                etcd_client::TlsOptions::new()
                    .ca_certificate(etcd_client::Certificate::from_pem(read(ca)))
                    .identity(etcd_client::Identity::from_pem(read(cert), read(key))),
            );
        }
        Client::connect([self.client_url.as_str()], Some(options)).await
    }

    pub async fn client(&self) -> Client {
        self.try_client().await.expect("connect to the test etcd")
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One key as etcd keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

/// Every key at `revision` (0: now), in key order, read in pages (a large
/// keyspace does not fit one gRPC message).
pub async fn keyspace(c: &mut Client, revision: i64) -> (i64, Vec<Kv>) {
    let mut out = Vec::new();
    let mut from = vec![0u8];
    let mut rev = revision;
    loop {
        let mut opts = GetOptions::new().with_range(vec![0u8]).with_limit(64);
        if rev > 0 {
            opts = opts.with_revision(rev);
        }
        let resp = c.get(from.clone(), Some(opts)).await.expect("range");
        if rev == 0 {
            rev = resp.header().unwrap().revision();
        }
        for kv in resp.kvs() {
            out.push(Kv {
                key: kv.key().to_vec(),
                value: kv.value().to_vec(),
                create_revision: kv.create_revision(),
                mod_revision: kv.mod_revision(),
                version: kv.version(),
                lease: kv.lease(),
            });
        }
        if !resp.more() {
            return (rev, out);
        }
        from = resp.kvs().last().unwrap().key().to_vec();
        from.push(0);
    }
}
