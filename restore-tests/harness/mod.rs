//! The test harness: each test gets its own database, bucket and etcd key
//! prefix on the shared real services, so tests run in parallel without
//! seeing each other, and a helper to run the real `drctl` binary.

pub mod etcd;
pub mod fault_proxy;
pub mod flip_proxy;
pub mod open_watch;
mod services;
pub mod tcp_stall;

use std::path::PathBuf;
use std::process::{Command, Output};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use sqlx::{Connection, PgConnection, PgPool};

pub use services::services;

/// A short random name, unique per test.
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..16])
}

/// A fresh, empty database of its own on the shared PostgreSQL server.
pub struct TestDb {
    /// URL of this database (superuser; the server is throwaway).
    pub url: String,
    pub pool: PgPool,
}

pub async fn database() -> TestDb {
    let admin_url = &services().pg_url;
    let name = unique("drctl_t_");
    let mut admin = PgConnection::connect(admin_url)
        .await
        .unwrap_or_else(|e| panic!("connect to the test PostgreSQL at {admin_url}: {e}"));
    // The name is ours (a prefix and hex digits), not input: safe to splice.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    let mut url = url::Url::parse(admin_url).expect("DRCTL_TEST_PG_URL is a URL");
    url.set_path(&name);
    let url = url.to_string();
    let pool = PgPool::connect(&url)
        .await
        .expect("connect to the test database");
    TestDb { url, pool }
}

/// A bucket of its own on the S3 server, created with Object Lock enabled.
pub struct TestBucket {
    pub name: String,
    pub client: aws_sdk_s3::Client,
}

/// An S3 client for the test server, on a path independent of drctl's code.
pub fn s3_client() -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(&services().s3_endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new("test", "test", None, None, "drctl-tests"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub async fn locked_bucket() -> TestBucket {
    let client = s3_client();
    let name = unique("drctl-t-");
    client
        .create_bucket()
        .bucket(&name)
        .object_lock_enabled_for_bucket(true)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "create bucket on the test S3 server at {}: {e:?}",
                services().s3_endpoint
            )
        });
    TestBucket { name, client }
}

/// An etcd key prefix of its own (etcd is shared; keys are not).
pub fn etcd_prefix() -> String {
    format!("/{}/", unique("drctl-t-"))
}

/// The `drctl` binary built for these tests.
pub fn drctl() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_drctl"));
    controlled_env(&mut cmd);
    cmd
}

/// The shell block tagged `runbook=NAME` in docs/runbook.md, as written.
pub fn recipe(name: &str) -> String {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/runbook.md"))
        .expect("docs/runbook.md");
    let open = format!("```sh runbook={name}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("docs/runbook.md has no block `{open}`"))
        + open.len();
    let end = doc[start..].find("```").expect("the block ends") + start;
    doc[start..end].to_string()
}

/// Runs the runbook's recipe `name` with bash (`-euo pipefail`, as an
/// operator's careful shell), `drctl` on PATH, `DRCTL_CONFIG` and
/// `DRCTL_IDENTITY_FILE` set, and `vars`.
pub fn run_recipe(
    name: &str,
    config: &std::path::Path,
    identity: &std::path::Path,
    vars: &[(&str, &str)],
) -> (Output, String, String) {
    let script = recipe(name);
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_drctl"))
        .parent()
        .unwrap()
        .to_path_buf();
    let mut cmd = Command::new("bash");
    controlled_env(&mut cmd);
    cmd.args(["-euo", "pipefail", "-c", &script])
        .env(
            "PATH",
            format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        )
        .env("DRCTL_CONFIG", config)
        .env("DRCTL_IDENTITY_FILE", identity);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    let (out, stdout, stderr) = run(&mut cmd);
    (out, stdout, format!("recipe {name}:\n{script}\n{stderr}"))
}

/// The environment every drctl a test runs sees.
fn controlled_env(cmd: &mut Command) {
    // A test controls the environment drctl sees.
    for var in [
        "DRCTL_CONFIG",
        "DRCTL_CATALOG_URL",
        "DRCTL_IDENTITY_FILE",
        "DRCTL_REPOSITORY_SECRET_FILE",
        "DRCTL_LOG",
    ] {
        cmd.env_remove(var);
    }
    // The test S3 server's credentials, and nothing from this machine's AWS
    // configuration (profiles, instance metadata).
    cmd.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN");
}

/// Runs `drctl` with `args` and returns the output, stdout and stderr as text.
pub fn run(cmd: &mut Command) -> (Output, String, String) {
    let out = cmd.output().expect("run drctl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out, stdout, stderr)
}

/// A scratch directory with an age key and a config file for drctl.
pub struct Workspace {
    pub dir: tempfile::TempDir,
    pub recipient: String,
}

impl Workspace {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let identity = dir.path().join("identity.txt");
        let key = drctl::keys::generate(&identity).expect("generate a key");
        Workspace {
            dir,
            recipient: key.recipient,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `yaml` to `name` and returns its path.
    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, yaml).expect("write config");
        path
    }

    /// A minimal valid config: local repository, the given catalog URL.
    pub fn config(&self, catalog_url: &str) -> PathBuf {
        self.write(
            "drctl.yaml",
            &format!(
                "repository:\n  local:\n    path: {repo}\n\
                 catalog:\n  url: {catalog_url}\n\
                 encryption:\n  recipients: [{recipient}]\n",
                repo = self.path("repo").display(),
                recipient = self.recipient,
            ),
        )
    }
}

/// Asserts `haystack` contains none of `secrets`.
pub fn assert_no_secret(haystack: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(
            !haystack.contains(s),
            "secret {s:?} appears in output:\n{haystack}"
        );
    }
}

/// A repository on a local directory with its own catalog database: the
/// writer's config (recipients + repository secret, no identity) and the
/// identity a restore passes with `--identity`.
pub struct VolumeEnv {
    pub ws: Workspace,
    pub db: TestDb,
    pub config: PathBuf,
    pub identity: PathBuf,
}

impl VolumeEnv {
    pub async fn new() -> Self {
        let ws = Workspace::new();
        let repo = format!("  local:\n    path: {}\n", ws.path("repo").display());
        Self::with_repository(ws, &repo, &[]).await
    }

    /// A repository in `bucket` on the S3 server at `endpoint` (the test
    /// server, or a proxy in front of it), locked for `retention_days`.
    pub async fn s3(endpoint: &str, bucket: &str, retention_days: u32) -> Self {
        let repo = format!(
            "  s3:\n    endpoint: {endpoint}\n    bucket: {bucket}\n    force_path_style: true\n    \
             retention_days: {retention_days}\n"
        );
        Self::with_repository(Workspace::new(), &repo, &[]).await
    }

    /// `repository:` is `repo` (indented YAML); `repo init` gets `init_args`.
    pub async fn with_repository(ws: Workspace, repo: &str, init_args: &[&str]) -> Self {
        let db = database().await;
        let identity = ws.path("identity.txt");
        let config = ws.write(
            "drctl.yaml",
            &format!(
                "repository:\n{repo}\
                 catalog:\n  url: {url}\n\
                 encryption:\n  recipients: [{r}]\n  repository_secret_file: {secret}\n",
                url = db.url,
                r = ws.recipient,
                secret = ws.path("repo-secret.json").display(),
            ),
        );
        let env = VolumeEnv {
            ws,
            db,
            config,
            identity,
        };
        env.ok(&["catalog", "migrate"]);
        let mut init = vec!["repo", "init"];
        init.extend(init_args);
        env.ok(&init);
        env
    }

    /// `drctl --config CONFIG args…`
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = drctl();
        c.arg("--config").arg(&self.config).args(args);
        c
    }

    /// Runs and asserts success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let (out, stdout, stderr) = run(&mut self.cmd(args));
        assert!(
            out.status.success(),
            "drctl {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// Runs with `-o json` and asserts success.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("json output")
    }

    /// Backs up `dir` as volume `name`; returns the summary.
    pub fn backup(&self, dir: &std::path::Path, name: &str) -> serde_json::Value {
        self.json(&[
            "backup",
            "volume",
            "--path",
            dir.to_str().unwrap(),
            "--name",
            name,
        ])
    }

    /// `drctl --identity ID restore volume BACKUP --to DIR`
    pub fn restore(&self, backup: &str, to: &std::path::Path) -> (Output, String, String) {
        run(self
            .cmd(&["restore", "volume", backup, "--to", to.to_str().unwrap()])
            .arg("--identity")
            .arg(&self.identity))
    }

    /// Restores `backup` into a new directory and asserts it equals `src`.
    pub fn restore_equals(&self, backup: &serde_json::Value, src: &std::path::Path) {
        let id = backup["backup_id"].as_str().expect("a backup summary");
        let dst = self.ws.path(&format!("restored-{id}"));
        let (out, stdout, stderr) = self.restore(id, &dst);
        assert!(
            out.status.success(),
            "restore of {id} failed:\n{stdout}{stderr}"
        );
        crate::tree::assert_same(src, &dst);
    }

    pub fn repo(&self) -> PathBuf {
        self.ws.path("repo")
    }

    /// Moves everything gc has marked or sighted `by` into the past (an SQL
    /// interval, `'2 hours'`), as if that much time had gone by: gc's grace
    /// period cannot be shortened below its minimum, so tests age the
    /// catalog instead of waiting.
    pub async fn age_gc(&self, by: &str) {
        for sql in [
            "UPDATE gc_candidates SET marked_at = marked_at - $1::interval",
            "UPDATE gc_sightings SET first_seen_at = first_seen_at - $1::interval",
        ] {
            sqlx::query(sql)
                .bind(by)
                .execute(&self.db.pool)
                .await
                .expect("aging the catalog's gc marks");
        }
    }
}
