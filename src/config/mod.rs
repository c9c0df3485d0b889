//! The configuration file: parse → override from the environment → validate.
//!
//! One YAML file (`--config` or `DRCTL_CONFIG`) describes where backups go, the
//! catalog, the keys, etcd and the cluster. Every struct rejects unknown keys:
//! a typo in a backup tool's config must be an error, never a silently ignored
//! setting (an ignored `retention_days` is a retention policy you do not have).
//!
//! Secrets can come from the environment instead of the file, so the file can
//! live in a ConfigMap while the secrets live in a Kubernetes Secret. Relative
//! paths in the file are resolved against the file's own directory, and `~/`
//! against `$HOME`, as kubeconfig does.
//!
//! Every key is documented in `docs/configuration.md`; keep the two in step.

mod redact;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
pub use redact::{SecretUrl, redact_url};

/// Environment variable naming the configuration file.
pub const ENV_CONFIG: &str = "DRCTL_CONFIG";
/// Default configuration file when neither `--config` nor `DRCTL_CONFIG` is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/drctl/config.yaml";

/// Environment overrides, applied after the file is parsed. Only values that
/// are secret, or that point at secrets, can be overridden: everything else
/// belongs in the file where it can be reviewed.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("DRCTL_CATALOG_URL", "catalog.url"),
    ("DRCTL_IDENTITY_FILE", "encryption.identity_file"),
    (
        "DRCTL_REPOSITORY_SECRET_FILE",
        "encryption.repository_secret_file",
    ),
];

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where backups are stored.
    pub repository: RepositoryConfig,
    /// The PostgreSQL catalog.
    #[serde(default)]
    pub catalog: CatalogConfig,
    /// age keys and the repository secret.
    pub encryption: EncryptionConfig,
    /// The etcd cluster to snapshot; absent when etcd is not backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<EtcdConfig>,
    /// How to reach the Kubernetes API.
    #[serde(default)]
    pub kubernetes: KubernetesConfig,
    /// `drctl server`: where it listens, its leases, who may call it.
    #[serde(default)]
    pub server: ServerConfig,
    /// What `drctl server` backs up, when, and for how long it keeps it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<crate::schedule::ScheduleSpec>,
    /// Restore drills: what `drctl worker --drills` restores and checks,
    /// and when `drctl server` enqueues them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub drills: Vec<crate::drill::DrillSpec>,
}

/// The `server:` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of the HTTP API and /metrics. Loopback unless set.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Bearer tokens: a file of `ROLE SHA256-HEX-OF-TOKEN` lines, roles
    /// `viewer` and `operator`. Without it only /healthz, /readyz and
    /// /metrics answer (the API refuses everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// The scheduler's leader lease, in seconds: another replica leads
    /// within this time of the leader's death.
    #[serde(default = "default_leader_lease")]
    pub leader_lease_seconds: u64,
    /// A job's lease, renewed every third of it while the job runs.
    #[serde(default = "default_job_lease")]
    pub job_lease_seconds: u64,
    /// On SIGTERM, how long running jobs get before they are interrupted.
    #[serde(default = "default_shutdown")]
    pub shutdown_seconds: u64,
    /// Jobs one replica runs at once.
    #[serde(default = "default_workers")]
    pub workers: usize,
    /// When `gc` runs (a cron expression, UTC); absent: never on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gc_cron: Option<String>,
    /// HTTPS: a certificate chain and its key (PEM). Absent: plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTls>,
}

/// `server.tls`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTls {
    /// The server's certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, SEC1 or PKCS#1).
    pub key_file: PathBuf,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            tokens_file: None,
            leader_lease_seconds: default_leader_lease(),
            job_lease_seconds: default_job_lease(),
            shutdown_seconds: default_shutdown(),
            workers: default_workers(),
            gc_cron: None,
            tls: None,
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9480".into()
}
fn default_leader_lease() -> u64 {
    15
}
fn default_job_lease() -> u64 {
    60
}
fn default_shutdown() -> u64 {
    30
}
fn default_workers() -> usize {
    1
}

/// Exactly one of `s3` or `local`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RepositoryConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Config>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalConfig>,
    /// zstd level for new chunks (1-19); absent: drctl's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zstd_level: Option<i32>,
}

/// The validated choice of storage backend.
#[derive(Debug, Clone, Copy)]
pub enum Repository<'a> {
    S3(&'a S3Config),
    Local(&'a LocalConfig),
}

impl RepositoryConfig {
    /// The configured backend. Only valid after [`Config::validate`].
    pub fn backend(&self) -> Repository<'_> {
        match (&self.s3, &self.local) {
            (Some(s3), _) => Repository::S3(s3),
            (None, Some(local)) => Repository::Local(local),
            (None, None) => unreachable!("validated: one of repository.s3 or repository.local"),
        }
    }
}

/// An S3 (or S3-compatible) bucket with Object Lock. Credentials come from the
/// standard AWS chain (environment, profile, web identity, instance metadata),
/// never from this file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Endpoint URL of an S3-compatible server; omitted for AWS itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    pub bucket: String,
    /// Key prefix for every object, so one bucket can hold several repositories.
    #[serde(default)]
    pub prefix: String,
    /// Region; omitted: taken from the AWS chain (`AWS_REGION`, profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible
    /// servers need.
    #[serde(default)]
    pub force_path_style: bool,
    #[serde(default)]
    pub lock_mode: LockMode,
    /// Default retention of a backup, and so of the lock on its objects.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// The longest one request may take, its retries included (5 to 600):
    /// a stalled server is given up on after it, with an error naming the
    /// endpoint, instead of holding a backup or a restore for many minutes.
    /// Each attempt that gets no answer for a third of it is retried, with
    /// a warning.
    #[serde(default = "default_timeout_seconds")]
    pub timeout_seconds: u32,
}

fn default_retention_days() -> u32 {
    30
}

fn default_timeout_seconds() -> u32 {
    60
}

/// Object Lock mode for every object drctl writes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
pub enum LockMode {
    /// Nobody, the root account included, can delete or shorten before the date.
    #[default]
    #[serde(rename = "COMPLIANCE")]
    Compliance,
    /// Users with `s3:BypassGovernanceRetention` can; everyone else cannot.
    #[serde(rename = "GOVERNANCE")]
    Governance,
}

/// A directory on a local or mounted file system.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    pub path: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// `postgres://user[:password]@host:port/db`; or env `DRCTL_CATALOG_URL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<SecretUrl>,
    /// The longest one catalog call may take (5 to 3600 s): a PostgreSQL
    /// that stops answering ends the command with an error, not a hang.
    #[serde(default = "default_catalog_timeout")]
    pub timeout_seconds: u64,
}

fn default_catalog_timeout() -> u64 {
    crate::catalog::DEFAULT_CALL_TIMEOUT_SECS
}

impl Default for CatalogConfig {
    fn default() -> Self {
        CatalogConfig {
            url: None,
            timeout_seconds: default_catalog_timeout(),
        }
    }
}

impl CatalogConfig {
    /// The catalog URL, for the commands that use the catalog: only those
    /// need it (a restore host may have none).
    pub fn url(&self) -> crate::error::Result<&SecretUrl> {
        self.url.as_ref().ok_or_else(|| {
            crate::error::Error::config("catalog.url is not set, and this command uses the catalog")
                .with_guidance(
                    "set catalog.url in the configuration or DRCTL_CATALOG_URL \
                     (postgres://user@host:5432/db); restores and `backup list --from-bucket` \
                     work without it",
                )
        })
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// age X25519 recipients (`age1…`): public keys, all a writer needs.
    #[serde(default)]
    pub recipients: Vec<String>,
    /// age identity file (private key): only where backups are decrypted
    /// (restore, drills, verify --read-data).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_file: Option<PathBuf>,
    /// The repository secret, for writers that do not hold the identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_secret_file: Option<PathBuf>,
    /// The fingerprint of the repository secret (`drs1-…`, printed by
    /// `drctl repo init` and `drctl repo info`). When set, a repository
    /// whose secret has another fingerprint is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository_fingerprint: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// Client URLs of the members, `https://host:2379`.
    pub endpoints: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Allow plain `http://` endpoints. Off by default: etcd holds every Secret
    /// of the cluster.
    #[serde(default)]
    pub insecure: bool,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    /// kubeconfig file; absent: in-cluster config, then the default kubeconfig.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubeconfig: Option<PathBuf>,
}

/// A configuration as loaded: the validated config plus what the operator
/// should know about how it was resolved.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub config: Config,
    /// `(key, env var)` for each value taken from the environment.
    pub overrides: Vec<(String, String)>,
    /// Things that work but should be fixed (loose key file permissions, …).
    pub warnings: Vec<String>,
}

impl Config {
    /// Reads, overrides and validates the file at `path`, reading overrides
    /// from the process environment.
    pub fn load(path: &Path) -> Result<Loaded> {
        Self::load_with_env(path, |k| std::env::var(k).ok().filter(|v| !v.is_empty()))
    }

    /// As [`Config::load`], with the environment supplied by `env`.
    pub fn load_with_env(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Loaded> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::io(
                e,
                ErrorKind::Config,
                format!("cannot read configuration file {}", path.display()),
            )
            .with_guidance(format!(
                "pass the file with --config FILE or {ENV_CONFIG}=FILE; \
                     docs/configuration.md has an example"
            ))
        })?;
        let mut config = Self::parse(&text).map_err(|e| e.prefixed(path))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let overrides = config.apply_env(&env);
        config.resolve_paths(base, env("HOME").as_deref());
        let warnings = config.validate().map_err(|e| e.prefixed(path))?;
        Ok(Loaded {
            path: path.to_path_buf(),
            config,
            overrides,
            warnings,
        })
    }

    /// Parses YAML text into a config without validating it. Errors name the
    /// key path (`repository.s3.lock_mode`) and the line.
    pub fn parse(text: &str) -> std::result::Result<Config, ConfigError> {
        if text.trim().is_empty() {
            return Err(ConfigError::new(
                "",
                "the file is empty; expected the sections repository, catalog and encryption",
            ));
        }
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // serde_yaml_ng prefixes the message with its own notion of the path;
            // ours is more precise, so keep only the description.
            let mut msg = inner.to_string();
            if let Some((prefix, rest)) = msg.split_once(": ")
                && !prefix.contains(' ')
            {
                msg = rest.to_string();
            }
            ConfigError::new(if key == "." { "" } else { &key }, &hide_values(&msg))
        })
    }

    fn apply_env(&mut self, env: &impl Fn(&str) -> Option<String>) -> Vec<(String, String)> {
        let mut applied = Vec::new();
        for &(var, key) in ENV_OVERRIDES {
            let Some(value) = env(var) else { continue };
            match key {
                "catalog.url" => self.catalog.url = Some(SecretUrl::new(value)),
                "encryption.identity_file" => self.encryption.identity_file = Some(value.into()),
                "encryption.repository_secret_file" => {
                    self.encryption.repository_secret_file = Some(value.into())
                }
                _ => unreachable!("every ENV_OVERRIDES key is handled"),
            }
            applied.push((key.to_string(), var.to_string()));
        }
        applied
    }

    fn resolve_paths(&mut self, base: &Path, home: Option<&str>) {
        let fix = |p: &mut PathBuf| *p = resolve_path(base, home, p);
        if let Some(local) = &mut self.repository.local {
            fix(&mut local.path);
        }
        let enc = &mut self.encryption;
        enc.identity_file.iter_mut().for_each(fix);
        enc.repository_secret_file.iter_mut().for_each(fix);
        if let Some(etcd) = &mut self.etcd {
            etcd.ca_file.iter_mut().for_each(fix);
            etcd.cert_file.iter_mut().for_each(fix);
            etcd.key_file.iter_mut().for_each(fix);
        }
        self.kubernetes.kubeconfig.iter_mut().for_each(fix);
        self.server.tokens_file.iter_mut().for_each(fix);
        if let Some(tls) = &mut self.server.tls {
            fix(&mut tls.cert_file);
            fix(&mut tls.key_file);
        }
        for s in &mut self.schedules {
            if let crate::schedule::SourceSpec::Volume { path } = &mut s.source {
                fix(path);
            }
        }
        for d in &mut self.drills {
            d.kubeconfig.iter_mut().for_each(fix);
            d.scratch_dir.iter_mut().for_each(fix);
        }
    }

    /// Checks values the types cannot: one backend, URL schemes, key formats,
    /// files that must exist. Returns warnings for what works but is unwise.
    pub fn validate(&self) -> std::result::Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        match (&self.repository.s3, &self.repository.local) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::new(
                    "repository",
                    "both s3 and local are set; a repository is exactly one of them",
                ));
            }
            (None, None) => {
                return Err(ConfigError::new(
                    "repository",
                    "neither s3 nor local is set; add `s3: {bucket: …}` or `local: {path: …}`",
                ));
            }
            (Some(s3), None) => s3.validate()?,
            (None, Some(_)) => {}
        }
        if let Some(level) = self.repository.zstd_level
            && !(1..=19).contains(&level)
        {
            return Err(ConfigError::new(
                "repository.zstd_level",
                &format!("{level} is out of range; expected 1 (fastest) to 19 (smallest)"),
            ));
        }

        // Sections are required by the commands that use them, not here:
        // a restore host needs no catalog, a volume backup no kubeconfig.
        // What is set must be well-formed.
        if let Some(url) = &self.catalog.url {
            url.validate_postgres("catalog.url")?;
        }
        if !(5..=3600).contains(&self.catalog.timeout_seconds) {
            return Err(ConfigError::new(
                "catalog.timeout_seconds",
                &format!(
                    "{} is out of range; expected 5 to 3600 seconds",
                    self.catalog.timeout_seconds
                ),
            ));
        }

        self.encryption.validate(&mut warnings)?;
        if let Some(etcd) = &self.etcd {
            etcd.validate()?;
        }
        self.validate_server(&mut warnings)?;
        Ok(warnings)
    }
}

/// An error's message with its guidance, for a [`ConfigError`].
fn with_hint(e: &Error) -> String {
    match e.guidance() {
        Some(g) => format!("{}; {g}", e.what()),
        None => e.what().to_string(),
    }
}

impl Config {
    fn validate_server(&self, warnings: &mut Vec<String>) -> std::result::Result<(), ConfigError> {
        let srv = &self.server;
        if srv.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "server.listen",
                &format!(
                    "{:?} is not an address; expected e.g. 127.0.0.1:9480 or 0.0.0.0:9480",
                    srv.listen
                ),
            ));
        }
        if !(3..=600).contains(&srv.leader_lease_seconds) {
            return Err(ConfigError::new(
                "server.leader_lease_seconds",
                "out of range; expected 3 to 600 seconds",
            ));
        }
        if !(6..=3600).contains(&srv.job_lease_seconds) {
            return Err(ConfigError::new(
                "server.job_lease_seconds",
                "out of range; expected 6 to 3600 seconds",
            ));
        }
        if !(1..=64).contains(&srv.workers) {
            return Err(ConfigError::new(
                "server.workers",
                "out of range; expected 1 to 64",
            ));
        }
        if let Some(gc) = &srv.gc_cron {
            crate::schedule::Cron::parse(gc, "UTC")
                .map_err(|e| ConfigError::new("server.gc_cron", &with_hint(&e)))?;
        }
        let mut seen = std::collections::HashSet::new();
        for (i, s) in self.schedules.iter().enumerate() {
            let key = format!("schedules[{i}]");
            if !seen.insert(s.name.as_str()) {
                return Err(ConfigError::new(
                    &format!("{key}.name"),
                    &format!("{:?} is used by two schedules; names are unique", s.name),
                ));
            }
            s.validate()
                .map_err(|e| ConfigError::new(&key, &with_hint(&e)))?;
            if matches!(s.source, crate::schedule::SourceSpec::Etcd {}) && self.etcd.is_none() {
                return Err(ConfigError::new(
                    &format!("{key}.source"),
                    "backs up etcd, but the configuration has no `etcd:` section",
                ));
            }
            if !s.retention.keeps_history() {
                warnings.push(format!(
                    "{key} ({}): retention keeps only the newest backup; \
                     set keep_last, daily, weekly, … to keep more",
                    s.name
                ));
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, d) in self.drills.iter().enumerate() {
            let key = format!("drills[{i}]");
            if !seen.insert(d.name.as_str()) {
                return Err(ConfigError::new(
                    &format!("{key}.name"),
                    &format!("{:?} is used by two drills; names are unique", d.name),
                ));
            }
            d.validate()
                .map_err(|e| ConfigError::new(&key, &with_hint(&e)))?;
        }
        Ok(())
    }
}

impl S3Config {
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        validate_bucket_name(&self.bucket)
            .map_err(|why| ConfigError::new("repository.s3.bucket", &why))?;
        if let Some(ep) = &self.endpoint {
            let url = url::Url::parse(ep).map_err(|e| {
                ConfigError::new(
                    "repository.s3.endpoint",
                    &format!("not a URL ({e}); expected e.g. http://127.0.0.1:9000"),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(ConfigError::new(
                    "repository.s3.endpoint",
                    &format!("scheme `{}` is not http or https", url.scheme()),
                ));
            }
            if url.password().is_some() || !url.username().is_empty() {
                return Err(ConfigError::new(
                    "repository.s3.endpoint",
                    "contains credentials; remove them and use the AWS credential chain \
                     (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile or a role)",
                ));
            }
        }
        if self.prefix.starts_with('/') {
            return Err(ConfigError::new(
                "repository.s3.prefix",
                "starts with `/`; S3 keys have no leading slash (write e.g. `cluster-1/`)",
            ));
        }
        let longest = crate::store::s3::LONGEST_REQUEST.as_secs() as u32;
        if !(5..=longest).contains(&self.timeout_seconds) {
            return Err(ConfigError::new(
                "repository.s3.timeout_seconds",
                &format!(
                    "{} is out of range; expected 5 to {longest} seconds",
                    self.timeout_seconds
                ),
            ));
        }
        if !(1..=36_500).contains(&self.retention_days) {
            return Err(ConfigError::new(
                "repository.s3.retention_days",
                &format!(
                    "{} is out of range; expected 1 to 36500 days",
                    self.retention_days
                ),
            ));
        }
        if let Some(region) = &self.region
            && (region.is_empty()
                || !region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return Err(ConfigError::new(
                "repository.s3.region",
                &format!("`{region}` is not a region name; expected e.g. us-east-1"),
            ));
        }
        Ok(())
    }

    /// The key prefix, normalised to end in `/` when not empty.
    pub fn key_prefix(&self) -> String {
        match self.prefix.as_str() {
            "" => String::new(),
            p if p.ends_with('/') => p.to_string(),
            p => format!("{p}/"),
        }
    }
}

impl EncryptionConfig {
    fn validate(&self, warnings: &mut Vec<String>) -> std::result::Result<(), ConfigError> {
        for (i, r) in self.recipients.iter().enumerate() {
            age::x25519::Recipient::from_str(r).map_err(|e| {
                ConfigError::new(
                    &format!("encryption.recipients[{i}]"),
                    &format!(
                        "`{r}` is not an age X25519 recipient ({e}); expected `age1…` \
                         as printed by `drctl key generate`"
                    ),
                )
            })?;
        }
        if self.recipients.is_empty() && self.identity_file.is_none() {
            return Err(ConfigError::new(
                "encryption.recipients",
                "empty, and no identity_file either; writers need at least one recipient \
                 (`drctl key generate` prints one)",
            ));
        }
        // An identity file is checked where it is used (it must exist, and
        // a group- or world-readable one is warned about once, by
        // `Identity::from_file`, whether it came from here or --identity).

        if let Some(file) = &self.repository_secret_file {
            // `drctl repo init` writes it, so it may not exist yet.
            if file.exists() {
                require_file("encryption.repository_secret_file", file)?;
                warn_if_readable_by_others("encryption.repository_secret_file", file, warnings);
            } else {
                warnings.push(format!(
                    "encryption.repository_secret_file: {} does not exist yet; \
                     `drctl repo init` writes it",
                    file.display()
                ));
            }
        }
        Ok(())
    }
}

impl EtcdConfig {
    fn validate(&self) -> std::result::Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::new(
                "etcd.endpoints",
                "empty; list the client URLs of the members, e.g. https://10.0.0.1:2379",
            ));
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            let key = format!("etcd.endpoints[{i}]");
            let url = url::Url::parse(ep)
                .ok()
                .filter(|u| u.host_str().is_some())
                .ok_or_else(|| {
                    ConfigError::new(
                        &key,
                        &format!("`{ep}` is not a URL; expected e.g. https://10.0.0.1:2379"),
                    )
                })?;
            match url.scheme() {
                "https" => {}
                "http" if self.insecure => {}
                "http" => {
                    return Err(ConfigError::new(
                        &key,
                        &format!(
                            "`{ep}` is plain http, which exposes every Secret of the cluster; \
                             use https, or set etcd.insecure: true to allow it"
                        ),
                    ));
                }
                other => {
                    return Err(ConfigError::new(
                        &key,
                        &format!("scheme `{other}` is not https (or http with insecure: true)"),
                    ));
                }
            }
        }
        match (&self.cert_file, &self.key_file) {
            (Some(_), None) => {
                return Err(ConfigError::new(
                    "etcd.key_file",
                    "missing; cert_file is set, and a client certificate needs its key",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::new(
                    "etcd.cert_file",
                    "missing; key_file is set, and a client key needs its certificate",
                ));
            }
            _ => {}
        }
        for (key, file) in [
            ("etcd.ca_file", &self.ca_file),
            ("etcd.cert_file", &self.cert_file),
            ("etcd.key_file", &self.key_file),
        ] {
            if let Some(file) = file {
                require_file(key, file)?;
            }
        }
        Ok(())
    }
}

/// A configuration error: the key path (dotted, `[i]` for list items) and what
/// was expected. Converted into an [`Error`] with the file name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(key: &str, message: &str) -> Self {
        ConfigError {
            key: key.to_string(),
            message: message.to_string(),
        }
    }

    fn prefixed(self, file: &Path) -> Error {
        let at = if self.key.is_empty() {
            String::new()
        } else {
            format!(" at `{}`", self.key)
        };
        Error::config(format!(
            "invalid configuration in {}{at}: {}",
            file.display(),
            self.message
        ))
        .with_guidance("fix the key and run `drctl config check`; every key is described in docs/configuration.md")
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

fn resolve_path(base: &Path, home: Option<&str>, p: &Path) -> PathBuf {
    if let (Ok(rest), Some(home)) = (p.strip_prefix("~"), home) {
        return Path::new(home).join(rest);
    }
    if p.is_relative() {
        base.join(p)
    } else {
        p.to_path_buf()
    }
}

fn require_file(key: &str, path: &Path) -> std::result::Result<(), ConfigError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(ConfigError::new(
            key,
            &format!("{} is not a regular file", path.display()),
        )),
        Err(e) => Err(ConfigError::new(
            key,
            &format!("cannot read {}: {e}", path.display()),
        )),
    }
}

fn warn_if_readable_by_others(key: &str, path: &Path, warnings: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        warnings.push(format!(
            "{key}: {} is readable by group or others (mode {:o}); run `chmod 600 {}`",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        ));
    }
}

/// S3 bucket naming rules (the general-purpose bucket subset every S3 server accepts).
fn validate_bucket_name(name: &str) -> std::result::Result<(), String> {
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let edges = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !(3..=63).contains(&name.len())
        || !ok_chars
        || !edges(name.chars().next())
        || !edges(name.chars().last())
        || name.contains("..")
    {
        return Err(format!(
            "`{name}` is not a valid bucket name; expected 3-63 characters of a-z, 0-9, `-` \
             and `.`, starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

/// serde quotes the offending value (`invalid type: string "postgres://u:PASS@db",
/// expected …`); a value in the wrong place may be a secret, so every
/// quoted string is replaced. The key path and the expectation say enough.
fn hide_values(msg: &str) -> String {
    let mut out = String::with_capacity(msg.len());
    let mut rest = msg;
    while let Some(at) = rest.find("string \"") {
        out.push_str(&rest[..at]);
        out.push_str("a string (value not shown)");
        let quoted = &rest[at + "string \"".len()..];
        let mut escaped = false;
        let mut end = quoted.len();
        for (i, c) in quoted.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = i + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &quoted[end..];
    }
    out.push_str(rest);
    out
}
