//! Restoring an etcd backup: the snapshot file, a member's data directory,
//! or a proof that the backup restores to the keyspace it recorded.
//!
//! Every way starts the same: the snapshot is written next to its
//! destination under a temporary name (chunks verified as they are read),
//! its SHA-256 trailer checked against its bytes, and only then renamed into
//! place. A data directory is then made by etcd's own tool (`etcdutl
//! snapshot restore`, or `etcdctl snapshot restore` where only etcd 3.4 is
//! installed), never by hand. `--verify` makes one in a scratch directory,
//! starts a throwaway etcd on it and compares what it answers with what the
//! backup recorded. That etcd holds every Secret of the cluster and has no
//! authentication, so it listens on no TCP port at all: its client and peer
//! endpoints are Unix sockets inside the owner-only scratch directory, out
//! of reach of every other user of the machine.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::volume::{Target, restore};
use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::repo::manifest::{EtcdSnapshot, Manifest, SNAPSHOT_ENTRY};
use crate::source::etcd::snapshot::TRAILER;

/// The etcd part of an etcd backup's manifest, or a clear error.
pub fn snapshot_info(manifest: &Manifest) -> Result<&EtcdSnapshot> {
    match (&manifest.etcd, manifest.entries.as_slice()) {
        (Some(info), [e]) if manifest.kind == "etcd" && e.path == SNAPSHOT_ENTRY => Ok(info),
        _ => Err(Error::config(format!(
            "backup {} is a {} backup, not an etcd backup",
            manifest.backup_id, manifest.kind
        ))
        .with_guidance(format!("restore it with `drctl restore {}`", manifest.kind))),
    }
}

/// A snapshot file written and checked.
#[derive(Debug, Clone, Serialize)]
pub struct WrittenSnapshot {
    pub backup_id: uuid::Uuid,
    pub path: String,
    /// The file's size, trailer included.
    pub bytes: u64,
    pub packs_read: u64,
    pub revision: i64,
}

/// Checks `--output` before anything is read: a file name, new unless
/// `force`.
pub fn check_output(output: &Path, force: bool) -> Result<()> {
    if output.is_dir() {
        return Err(
            Error::config(format!("--output {} is a directory", output.display()))
                .with_guidance("give a file name, e.g. --output snapshot.db"),
        );
    }
    if output.exists() && !force {
        return Err(
            Error::config(format!("--output {} exists", output.display()))
                .with_guidance("choose a new file name, or pass --force to replace it"),
        );
    }
    Ok(())
}

/// Writes the snapshot to `output`, byte for byte as etcd streamed it.
/// An existing `output` is replaced only with `force`; a failure leaves
/// nothing at `output`.
pub fn write_snapshot(
    repo: &Repository,
    manifest: &Manifest,
    output: &Path,
    force: bool,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<WrittenSnapshot> {
    let info = snapshot_info(manifest)?;
    check_output(output, force)?;
    let name = output
        .file_name()
        .ok_or_else(|| Error::config(format!("--output {} names no file", output.display())))?;
    let part = output.with_file_name(format!(".{}.drctl-part", name.to_string_lossy()));
    // The snapshot holds every Secret of the cluster: readable by its owner
    // only, whatever the umask, and created here, exclusively and without
    // following a link someone planted under the name.
    let _ = fs::remove_file(&part);
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot create {}", part.display()),
            )
        })?;
    let written = restore(
        repo,
        manifest,
        &Target::Block {
            path: part.clone(),
            force: true,
        },
        Default::default(),
        progress,
    )
    .and_then(|s| {
        check_trailer(&part, manifest.entries[0].size)?;
        Ok(s)
    });
    let summary = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = fs::remove_file(&part);
            return Err(e);
        }
    };
    fs::rename(&part, output).map_err(|e| {
        let _ = fs::remove_file(&part);
        Error::io(
            e,
            ErrorKind::Failed,
            format!(
                "cannot move the snapshot into place at {}",
                output.display()
            ),
        )
    })?;
    Ok(WrittenSnapshot {
        backup_id: manifest.backup_id,
        path: output.display().to_string(),
        bytes: manifest.entries[0].size,
        packs_read: summary.packs_read,
        revision: info.revision,
    })
}

/// Checks that `path` is `size` bytes, the last 32 the SHA-256 of the rest,
/// as `etcdutl snapshot restore` will, and syncs it.
fn check_trailer(path: &Path, size: u64) -> Result<()> {
    let mut f = File::open(path).map_err(|e| {
        Error::io(
            e,
            ErrorKind::Failed,
            format!("cannot read back {}", path.display()),
        )
    })?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len != size || size < TRAILER as u64 {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("the restored snapshot is {len} bytes, the backup says {size}"),
        ));
    }
    let mut hasher = Sha256::new();
    let mut left = size - TRAILER as u64;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        f.read_exact(&mut buf[..n])
            .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot read back the snapshot"))?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut trailer = [0u8; TRAILER];
    f.read_exact(&mut trailer)
        .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot read back the snapshot"))?;
    let sum: [u8; 32] = hasher.finalize().into();
    if sum != trailer {
        return Err(Error::new(
            ErrorKind::Integrity,
            "the restored snapshot does not match its SHA-256 trailer",
        )
        .with_guidance("run `drctl verify` on this backup; every chunk was verified, so the backup itself recorded a bad stream"));
    }
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot sync the snapshot"))
}

/// A member's identity in the restored cluster: etcd's own flags.
#[derive(Debug, Clone, Serialize)]
pub struct MemberFlags {
    pub name: String,
    pub initial_cluster: String,
    pub initial_advertise_peer_urls: String,
    pub initial_cluster_token: String,
}

impl MemberFlags {
    fn args(&self) -> Vec<String> {
        vec![
            "--name".into(),
            self.name.clone(),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--initial-advertise-peer-urls".into(),
            self.initial_advertise_peer_urls.clone(),
            "--initial-cluster-token".into(),
            self.initial_cluster_token.clone(),
        ]
    }

    /// The members `--initial-cluster` names.
    pub fn members(&self) -> usize {
        self.initial_cluster
            .split(',')
            .filter(|m| !m.is_empty())
            .count()
    }

    /// Checks the flags before anything is written.
    pub fn check(&self) -> Result<()> {
        let bad = |flag: &str, why: String| {
            Err(Error::config(format!("--{flag}: {why}")).with_guidance(
                "give the member flags as for etcd itself, e.g. --name m1 \
                 --initial-cluster m1=https://10.0.0.1:2380 \
                 --initial-advertise-peer-urls https://10.0.0.1:2380",
            ))
        };
        if self.name.is_empty() || self.name.contains(['=', ',', ' ']) {
            return bad("name", format!("`{}` is not a member name", self.name));
        }
        let mut found = false;
        for m in self.initial_cluster.split(',') {
            let Some((name, url)) = m.split_once('=') else {
                return bad("initial-cluster", format!("`{m}` is not NAME=PEER-URL"));
            };
            if url::Url::parse(url).map_or(true, |u| u.host_str().is_none()) {
                return bad("initial-cluster", format!("`{url}` is not a URL"));
            }
            if name == self.name {
                found = true;
                if !self
                    .initial_advertise_peer_urls
                    .split(',')
                    .any(|u| u == url)
                {
                    return bad(
                        "initial-advertise-peer-urls",
                        format!(
                            "`{}` does not include {url}, the URL --initial-cluster gives {name}",
                            self.initial_advertise_peer_urls
                        ),
                    );
                }
            }
        }
        if !found {
            return bad(
                "initial-cluster",
                format!(
                    "`{}` does not list --name {}",
                    self.initial_cluster, self.name
                ),
            );
        }
        Ok(())
    }
}

/// etcd's restore tool found on PATH.
#[derive(Debug, Clone)]
pub struct Tool {
    pub path: PathBuf,
    /// `etcdutl` (3.5+) or `etcdctl` (3.4).
    pub name: &'static str,
}

impl Tool {
    pub fn find() -> Result<Tool> {
        for name in ["etcdutl", "etcdctl"] {
            if let Some(path) = which(name) {
                return Ok(Tool { path, name });
            }
        }
        Err(Error::new(
            ErrorKind::NotFound,
            "neither etcdutl (etcd 3.5+) nor etcdctl (etcd 3.4) is on PATH",
        )
        .with_guidance(
            "install etcd's tools (Debian: etcd-client; upstream release: etcdutl), or write \
             the file with --output FILE and run `etcdutl snapshot restore` where they are",
        ))
    }

    /// Makes `data_dir` (which must not exist) from `snapshot`.
    fn restore(&self, snapshot: &Path, data_dir: &Path, flags: &MemberFlags) -> Result<()> {
        let mut cmd = Command::new(&self.path);
        cmd.env("ETCDCTL_API", "3")
            .args(["snapshot", "restore"])
            .arg(snapshot)
            .arg("--data-dir")
            .arg(data_dir)
            .args(flags.args())
            .stdin(Stdio::null());
        let out = cmd.output().map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot run {}", self.path.display()),
            )
        })?;
        if !out.status.success() {
            let said = String::from_utf8_lossy(&out.stderr);
            let said = said.trim();
            return Err(Error::new(
                ErrorKind::Failed,
                format!(
                    "`{} snapshot restore` failed ({}): {}",
                    self.name,
                    out.status,
                    last_lines(said, 5)
                ),
            ));
        }
        Ok(())
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n  ")
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// A data directory made from a backup.
#[derive(Debug, Clone, Serialize)]
pub struct DataDirRestore {
    pub backup_id: uuid::Uuid,
    pub data_dir: String,
    pub tool: String,
    pub member: MemberFlags,
    pub revision: i64,
    pub next_steps: Vec<String>,
}

/// Checks that `dir` may become a data directory: absent or empty.
pub fn check_data_dir(dir: &Path) -> Result<()> {
    if let Ok(mut entries) = fs::read_dir(dir) {
        if entries.next().is_some() {
            return Err(
                Error::config(format!("--data-dir {} is not empty", dir.display())).with_guidance(
                    "etcd would refuse it or mix two clusters' data: move the old directory \
                 away (keep it until the restore is proven) or choose a new path",
                ),
            );
        }
    } else if dir.exists() {
        return Err(Error::config(format!(
            "--data-dir {} is not a directory",
            dir.display()
        )));
    }
    Ok(())
}

/// Restores the snapshot into `data_dir` for the member `flags` names.
pub fn restore_data_dir(
    repo: &Repository,
    manifest: &Manifest,
    data_dir: &Path,
    flags: &MemberFlags,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<DataDirRestore> {
    let info = snapshot_info(manifest)?;
    flags.check()?;
    check_data_dir(data_dir)?;
    let tool = Tool::find()?;
    let parent = data_dir
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(parent).map_err(|e| {
        Error::io(
            e,
            ErrorKind::Failed,
            format!("cannot create {}", parent.display()),
        )
    })?;
    let snapshot = parent.join(format!(".drctl-snapshot-{}.db", manifest.backup_id));
    write_snapshot(repo, manifest, &snapshot, true, progress)?;
    // The tools refuse an existing directory, even an empty one.
    let _ = fs::remove_dir(data_dir);
    let made = tool.restore(&snapshot, data_dir, flags);
    let _ = fs::remove_file(&snapshot);
    if let Err(e) = made {
        let _ = fs::remove_dir_all(data_dir);
        return Err(e.with_guidance(
            "nothing was left in --data-dir; fix the cause and run the restore again",
        ));
    }
    Ok(DataDirRestore {
        backup_id: manifest.backup_id,
        data_dir: data_dir.display().to_string(),
        tool: tool.name.into(),
        member: flags.clone(),
        revision: info.revision,
        next_steps: next_steps(manifest.backup_id, data_dir, flags, info.revision),
    })
}

fn next_steps(id: uuid::Uuid, dir: &Path, f: &MemberFlags, revision: i64) -> Vec<String> {
    let mut steps = vec![
        "Stop every member of the old cluster, and the kube-apiservers, so nothing writes to \
         the old data while the new cluster starts."
            .to_string(),
    ];
    if f.members() > 1 {
        steps.push(format!(
            "On each of the other {} members, restore the same backup with its own --name and \
             --initial-advertise-peer-urls and the same --initial-cluster and \
             --initial-cluster-token: drctl restore etcd {id} --data-dir DIR --name NAME \
             --initial-cluster {} --initial-advertise-peer-urls URL --initial-cluster-token {}",
            f.members() - 1,
            f.initial_cluster,
            f.initial_cluster_token
        ));
    }
    steps.push(format!(
        "Start etcd on it with the flags of the restore: etcd --data-dir {} --name {} \
         --initial-cluster {} --initial-advertise-peer-urls {} --initial-cluster-token {} \
         (plus this member's listen and client URLs and TLS flags){}",
        dir.display(),
        f.name,
        f.initial_cluster,
        f.initial_advertise_peer_urls,
        f.initial_cluster_token,
        if f.members() > 1 {
            "; start every member, a majority is needed before it answers"
        } else {
            ""
        }
    ));
    steps.push(format!(
        "Check: etcdctl endpoint status --cluster -w table shows every member at revision {revision} \
         or later, then start the kube-apiservers."
    ));
    steps
}

/// One comparison of `--verify`.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub what: &'static str,
    pub recorded: Option<String>,
    pub restored: String,
    /// `match`, `mismatch`, or `not recorded`.
    pub outcome: &'static str,
}

/// What `--verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub backup_id: uuid::Uuid,
    pub ok: bool,
    pub checks: Vec<Check>,
    pub tool: String,
    pub etcd_version: String,
    /// Writing and checking the file, etcd's restore tool, starting etcd.
    pub write_seconds: f64,
    pub restore_seconds: f64,
    pub start_seconds: f64,
    pub total_seconds: f64,
}

/// Restores into a scratch directory, starts a throwaway etcd on loopback on
/// it, and compares its revision, key count and `HashKV` with the backup's
/// record. The scratch directory goes away whatever happens.
pub fn verify(
    repo: &Repository,
    manifest: &Manifest,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<VerifyReport> {
    let info = snapshot_info(manifest)?.clone();
    let scratch = Scratch::new()?;
    let began = Instant::now();
    let mut marks = Vec::new();
    let mut restored = restore_and_start(repo, manifest, &scratch.0, progress, &mut |_| {
        marks.push(Instant::now())
    })?;
    let (checks, version) = restored.compare(&info)?;
    drop(restored);
    let ok = checks.iter().all(|c| c.outcome != "mismatch");
    let [written, restored_at, started] = marks[..] else {
        unreachable!("three steps are marked")
    };
    Ok(VerifyReport {
        backup_id: manifest.backup_id,
        ok,
        checks,
        tool: Tool::find()?.name.into(),
        etcd_version: version,
        write_seconds: (written - began).as_secs_f64(),
        restore_seconds: (restored_at - written).as_secs_f64(),
        start_seconds: (started - restored_at).as_secs_f64(),
        total_seconds: began.elapsed().as_secs_f64(),
    })
}

/// The steps of [`restore_and_start`], told as each ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The snapshot file is read from the store, decrypted and checked.
    Fetched,
    /// etcd's restore tool has made the data directory.
    Restored,
    /// The throwaway etcd answers.
    Started,
}

/// An etcd backup restored into a directory and served by a throwaway etcd
/// on a Unix socket there (no port to collide with); stopped on drop.
pub struct Restored {
    etcd: Throwaway,
}

impl Restored {
    /// Revision, key count and `HashKV` compared with the backup's record,
    /// and the etcd version that answered.
    pub fn compare(&mut self, info: &EtcdSnapshot) -> Result<(Vec<Check>, String)> {
        let (revision, count, hash, version) = self.etcd.answers(info.revision)?;
        Ok((compare(info, revision, count, hash), version))
    }

    /// A client of the throwaway etcd, on the caller's runtime.
    pub fn client(&self) -> Result<etcd_client::Client> {
        self.etcd.client()
    }
}

/// Restores `manifest`'s snapshot into `dir` (which must exist, owner
/// only) with etcd's restore tool and starts a throwaway etcd on it.
/// `step` is told as each step ends, for timings.
pub fn restore_and_start(
    repo: &Repository,
    manifest: &Manifest,
    dir: &Path,
    progress: &(dyn Fn(u64) + Sync),
    step: &mut dyn FnMut(Step),
) -> Result<Restored> {
    let etcd = which("etcd").ok_or_else(|| {
        Error::new(ErrorKind::NotFound, "etcd is not on PATH").with_guidance(
            "--verify starts a throwaway etcd on loopback: install etcd (Debian: etcd-server)",
        )
    })?;
    let tool = Tool::find()?;
    let snapshot = dir.join("snapshot.db");
    write_snapshot(repo, manifest, &snapshot, false, progress)?;
    step(Step::Fetched);
    // etcd names a Unix socket `unix://HOST:PORT` and creates it as the file
    // `HOST:PORT` in its working directory: the scratch directory.
    let (client_url, peer_url) = ("unix://localhost:2379", "unix://localhost:2380");
    let flags = MemberFlags {
        name: "drctl-verify".into(),
        initial_cluster: format!("drctl-verify={peer_url}"),
        initial_advertise_peer_urls: peer_url.into(),
        initial_cluster_token: format!("drctl-verify-{}", manifest.backup_id),
    };
    let data = dir.join("data");
    tool.restore(&snapshot, &data, &flags)?;
    step(Step::Restored);
    let log = dir.join("etcd.log");
    let mut cmd = Command::new(&etcd);
    cmd.current_dir(dir)
        .arg("--data-dir")
        .arg(&data)
        .args(flags.args())
        .args(["--listen-peer-urls", peer_url])
        .args(["--listen-client-urls", client_url])
        .args(["--advertise-client-urls", client_url])
        .args([
            "--logger",
            "zap",
            "--log-outputs",
            "stderr",
            "--log-level",
            "warn",
        ]);
    let socket = dir.join("localhost:2379");
    let running = Throwaway::start(cmd, &log, socket)?;
    step(Step::Started);
    Ok(Restored { etcd: running })
}

fn compare(info: &EtcdSnapshot, revision: i64, count: i64, hash: u32) -> Vec<Check> {
    fn check<T: PartialEq + ToString>(
        what: &'static str,
        recorded: Option<T>,
        restored: T,
    ) -> Check {
        let outcome = match &recorded {
            None => "not recorded",
            Some(r) if *r == restored => "match",
            Some(_) => "mismatch",
        };
        Check {
            what,
            recorded: recorded.map(|r| r.to_string()),
            restored: restored.to_string(),
            outcome,
        }
    }
    vec![
        check("revision", Some(info.revision), revision),
        check("key count", info.key_count, count),
        check(
            "HashKV",
            info.hash_kv.map(|h| format!("{h:08x}")),
            format!("{hash:08x}"),
        ),
    ]
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch> {
        let dir = std::env::temp_dir().join(format!("drctl-verify-{}", uuid::Uuid::new_v4()));
        // Owner only: it holds a copy of every Secret of the cluster.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| {
                Error::io(
                    e,
                    ErrorKind::Failed,
                    format!("cannot create a scratch directory {}", dir.display()),
                )
            })?;
        Ok(Scratch(dir))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A throwaway etcd, killed on drop.
struct Throwaway {
    child: Child,
    /// Its client endpoint.
    socket: PathBuf,
}

impl Throwaway {
    /// How long a restored member may take to answer.
    const START: Duration = Duration::from_secs(60);

    fn start(mut cmd: Command, log: &Path, socket: PathBuf) -> Result<Throwaway> {
        let out = File::create(log).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Failed,
                format!("cannot create {}", log.display()),
            )
        })?;
        let err = out
            .try_clone()
            .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot open the etcd log"))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        crate::sys::kill_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| Error::io(e, ErrorKind::Failed, "cannot start the throwaway etcd"))?;
        let mut me = Throwaway { child, socket };
        let deadline = Instant::now() + Self::START;
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                let said = fs::read_to_string(log).unwrap_or_default();
                return Err(Error::new(
                    ErrorKind::Failed,
                    format!(
                        "the throwaway etcd exited ({status}) before answering: {}",
                        last_lines(said.trim(), 5)
                    ),
                ));
            }
            if me.status().is_ok() {
                return Ok(me);
            }
            if Instant::now() > deadline {
                return Err(Error::new(
                    ErrorKind::Failed,
                    format!(
                        "the throwaway etcd did not answer within {} s",
                        Self::START.as_secs()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A client over the Unix socket (etcd-client dials only URLs, so the
    /// gRPC channel is built here on a connector that opens the socket).
    fn client(&self) -> Result<etcd_client::Client> {
        let socket = self.socket.clone();
        block_on(async move {
            let channel = tonic::transport::Endpoint::from_static("http://drctl-verify.invalid")
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(30))
                .connect_with_connector(tower::service_fn(move |_| {
                    let socket = socket.clone();
                    async move {
                        tokio::net::UnixStream::connect(socket)
                            .await
                            .map(hyper_util::rt::TokioIo::new)
                    }
                }))
                .await
                .map_err(|e| e.to_string())?;
            etcd_client::Client::from_channel(etcd_client::Channel::Tonic(channel), None)
                .await
                .map_err(|e| e.to_string())
        })
        .map_err(|e| Error::new(ErrorKind::Unavailable, format!("throwaway etcd: {e}")))
    }

    fn status(&self) -> Result<etcd_client::StatusResponse> {
        let mut c = self.client()?;
        block_on(async move { c.status().await })
            .map_err(|e| Error::new(ErrorKind::Unavailable, format!("throwaway etcd: {e}")))
    }

    /// Revision, key count, `HashKV` at `revision`, and version.
    fn answers(&mut self, revision: i64) -> Result<(i64, i64, u32, String)> {
        let mut c = self.client()?;
        block_on(async move {
            let status = c.status().await?;
            let now = status.header().map_or(0, |h| h.revision());
            let count = c
                .get(
                    vec![0u8],
                    Some(
                        etcd_client::GetOptions::new()
                            .with_range(vec![0u8])
                            .with_count_only(),
                    ),
                )
                .await?
                .count();
            let hash = c.hash_kv(revision).await?.hash();
            Ok::<_, etcd_client::Error>((now, count, hash, status.version().to_string()))
        })
        .map_err(|e| {
            Error::new(
                ErrorKind::Failed,
                format!("the throwaway etcd on the restored data failed to answer: {e}"),
            )
        })
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs a future from blocking code, on the caller's runtime when there is
/// one (the CLI runs restores in `block_in_place`).
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    match tokio::runtime::Handle::try_current() {
        Ok(h) => h.block_on(f),
        Err(_) => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(f),
    }
}
