//! Real services for the tests: found from the environment (`scripts/test`
//! exports them) or started here, so plain `cargo test` works after
//! `scripts/setup`.
//!
//! Services started here die with the test process: they are spawned from a
//! thread that never exits with `PR_SET_PDEATHSIG` (which fires when the
//! *spawning thread* ends), and an `atexit` hook stops them and removes their
//! data on a normal exit.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Endpoints of the shared services. Tests never use them directly: they ask
/// the harness for their own database, bucket or etcd prefix.
#[derive(Debug, Clone)]
pub struct Services {
    /// Superuser URL of a PostgreSQL server (database `postgres`).
    pub pg_url: String,
    /// etcd client URLs.
    pub etcd_endpoints: Vec<String>,
    /// S3 endpoint (moto, Object Lock enforced).
    pub s3_endpoint: String,
}

pub const ENV_PG: &str = "DRCTL_TEST_PG_URL";
pub const ENV_ETCD: &str = "DRCTL_TEST_ETCD_ENDPOINTS";
pub const ENV_S3: &str = "DRCTL_TEST_S3_ENDPOINT";

static SERVICES: OnceLock<Services> = OnceLock::new();
/// What the harness started, for the exit hook to stop and remove.
struct Started {
    /// Each service and the signal that stops it.
    children: Vec<(std::process::Child, i32)>,
    dir: Option<PathBuf>,
}

static STARTED: Mutex<Started> = Mutex::new(Started {
    children: Vec::new(),
    dir: None,
});

/// The services, started on first use when the environment does not name them.
pub fn services() -> &'static Services {
    SERVICES.get_or_init(|| {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let (pg, etcd, s3) = (env(ENV_PG), env(ENV_ETCD), env(ENV_S3));
        if let (Some(pg_url), Some(etcd), Some(s3_endpoint)) = (&pg, &etcd, &s3) {
            return Services {
                pg_url: pg_url.clone(),
                etcd_endpoints: etcd.split(',').map(str::to_string).collect(),
                s3_endpoint: s3_endpoint.clone(),
            };
        }
        // Spawn from a thread that lives as long as the process (see module docs).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("test-services".into())
            .spawn(move || {
                let result = std::panic::catch_unwind(|| start_missing(pg, etcd, s3));
                let _ = tx.send(result);
                loop {
                    std::thread::park();
                }
            })
            .expect("spawn the service thread");
        match rx.recv().expect("service thread answers") {
            Ok(services) => services,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn start_missing(pg: Option<String>, etcd: Option<String>, s3: Option<String>) -> Services {
    let dir = tempfile::Builder::new()
        .prefix("drctl-test-services.")
        .tempdir()
        .expect("create a directory for the test services")
        .keep();
    STARTED.lock().unwrap().dir = Some(dir.clone());
    register_cleanup();
    Services {
        pg_url: pg.unwrap_or_else(|| start_postgres(&dir)),
        etcd_endpoints: etcd
            .map(|e| e.split(',').map(str::to_string).collect())
            .unwrap_or_else(|| vec![start_etcd(&dir)]),
        s3_endpoint: s3.unwrap_or_else(|| start_moto(&dir)),
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn pg_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|d| d.join("initdb").exists() && d.join("postgres").exists())
        .collect();
    dirs.sort();
    dirs.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL server binaries (initdb, postgres) not found under \
             /usr/lib/postgresql/*/bin: install the Debian package `postgresql` \
             (./scripts/setup does)"
        )
    })
}

/// uid and gid of the `postgres` user, from /etc/passwd.
fn postgres_user() -> (u32, u32) {
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.len() > 3 && f[0] == "postgres")
        .map(|f| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        .unwrap_or_else(|| {
            panic!(
                "initdb refuses to run as root and there is no `postgres` user: install the \
                 Debian package `postgresql` (./scripts/setup does), or run the tests as a \
                 normal user"
            )
        })
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false)
}

/// A command that runs as `postgres` when we are root (initdb refuses root).
fn pg_command(bin: &Path) -> Command {
    let mut cmd = Command::new(bin);
    if is_root() {
        use std::os::unix::process::CommandExt;
        let (uid, gid) = postgres_user();
        cmd.uid(uid).gid(gid);
    }
    cmd
}

fn start_postgres(dir: &Path) -> String {
    let bindir = pg_bindir();
    let pgdir = dir.join("pg");
    std::fs::create_dir_all(&pgdir).unwrap();
    if is_root() {
        use std::os::unix::fs::PermissionsExt;
        let (uid, gid) = postgres_user();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&pgdir, Some(uid), Some(gid)).unwrap();
    }
    let data = pgdir.join("data");
    let out = pg_command(&bindir.join("initdb"))
        .arg("-D")
        .arg(&data)
        .args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ])
        .output()
        .expect("run initdb");
    assert!(
        out.status.success(),
        "initdb failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let port = free_port();
    let log = pgdir.join("postgres.log");
    let mut cmd = pg_command(&bindir.join("postgres"));
    cmd.arg("-D")
        .arg(&data)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-k"])
        .arg(&pgdir)
        .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
        .args(["-c", "full_page_writes=off", "-c", "max_connections=300"]);
    spawn(cmd, &log, libc::SIGQUIT);
    let isready = bindir.join("pg_isready");
    wait_until("PostgreSQL", &log, Duration::from_secs(60), || {
        Command::new(&isready)
            .args(["-q", "-h", "127.0.0.1", "-p", &port.to_string()])
            .status()
            .is_ok_and(|s| s.success())
    });
    format!("postgres://postgres@127.0.0.1:{port}/postgres")
}

fn start_etcd(dir: &Path) -> String {
    let etcd = which("etcd").unwrap_or_else(|| {
        panic!("etcd not found on PATH: install the Debian package `etcd-server` (./scripts/setup does)")
    });
    let etcdctl = which("etcdctl").unwrap_or_else(|| {
        panic!("etcdctl not found on PATH: install the Debian package `etcd-client` (./scripts/setup does)")
    });
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let log = dir.join("etcd.log");
    let mut cmd = Command::new(etcd);
    cmd.args(["--name", "drctl-test", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("drctl-test={peer_url}")])
        .args([
            "--initial-cluster-state",
            "new",
            "--initial-cluster-token",
            "drctl-test",
        ])
        .args([
            "--logger",
            "zap",
            "--log-level",
            "warn",
            "--log-outputs",
            "stderr",
        ]);
    spawn(cmd, &log, libc::SIGKILL);
    wait_until("etcd", &log, Duration::from_secs(30), || {
        Command::new(&etcdctl)
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &client_url, "endpoint", "health"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    client_url
}

fn start_moto(dir: &Path) -> String {
    let cache = std::env::var_os("DRCTL_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache"));
    let moto = cache.join("venv/bin/moto_server");
    assert!(
        moto.exists(),
        "moto_server not found at {}: run ./scripts/setup, which installs moto[server]==5.2.5 \
         there (the distribution's moto breaks aws-sdk-s3 multipart uploads)",
        moto.display()
    );
    let log = dir.join("moto.log");
    let mut cmd = Command::new(moto);
    cmd.args(["-H", "127.0.0.1", "-p", "0"]);
    spawn(cmd, &log, libc::SIGKILL);
    let mut endpoint = None;
    wait_until("moto", &log, Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        endpoint = text
            .split_whitespace()
            .find(|w| w.starts_with("http://127.0.0.1:"))
            .map(str::to_string);
        endpoint.is_some()
    });
    endpoint.unwrap()
}

pub(crate) fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Makes the child of `cmd` receive `signal` when the thread that spawns it
/// ends (the shared services spawn from a thread that never does; a test's
/// own etcd dies with its test).
#[allow(unsafe_code)]
pub(crate) fn die_with_spawner(cmd: &mut Command, signal: i32) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    // std runs pre_exec after setuid/setgid, which would clear the setting.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, signal as libc::c_ulong) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Spawns `cmd` with output to `log`, to be stopped with `signal` when the
/// test process exits, however it exits.
fn spawn(mut cmd: Command, log: &Path, signal: i32) {
    let file = std::fs::File::create(log).expect("create a service log");
    cmd.stdin(Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file);
    die_with_spawner(&mut cmd, signal);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    STARTED.lock().unwrap().children.push((child, signal));
}

fn wait_until(what: &str, log: &Path, limit: Duration, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > limit {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<_> = text.lines().rev().take(20).collect();
            panic!(
                "{what} did not become ready within {limit:?}; last lines of {}:\n{}",
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[allow(unsafe_code)]
fn register_cleanup() {
    extern "C" fn cleanup() {
        let Ok(started) = STARTED.lock() else { return };
        for (child, signal) in &started.children {
            // SAFETY: kill(2) on pids we spawned; at worst they are gone already.
            unsafe { libc::kill(child.id() as libc::pid_t, *signal) };
        }
        // Give postgres a moment to stop before its directory goes.
        std::thread::sleep(Duration::from_millis(200));
        if let Some(dir) = &started.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
    // SAFETY: registering a plain extern "C" function with no captured state.
    unsafe { libc::atexit(cleanup) };
}
