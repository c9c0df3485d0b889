use clap::Args;

use super::{Context, Out};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct VerifyArgs {
    /// Verify only this backup (id, short id, NAME@latest); default: all.
    backup: Option<String>,
    /// Also download and check data: every pack, or PCT percent of them
    /// chosen at random (`--read-data=10`).
    #[arg(long, value_name = "PCT", num_args = 0..=1, default_missing_value = "100")]
    read_data: Option<String>,
    /// Check every stored object against the catalog instead: present in the
    /// recorded version, same size and SHA-256, locked long enough, not
    /// replaced. Needs no identity: an auditor's scrub.
    #[arg(long, conflicts_with_all = ["backup", "read_data"])]
    storage: bool,
}

impl VerifyArgs {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        if self.storage {
            return verify_storage(ctx, &loaded, out);
        }
        let share = match &self.read_data {
            None => None,
            Some(v) => {
                let pct: f64 = v
                    .trim_end_matches('%')
                    .parse()
                    .ok()
                    .filter(|p| *p > 0.0 && *p <= 100.0)
                    .ok_or_else(|| {
                        Error::config(format!("--read-data={v} is not a percentage"))
                            .with_guidance("give 1 to 100, e.g. --read-data=10")
                    })?;
                Some(pct / 100.0)
            }
        };
        let repo = super::open_repo(&loaded.config, ctx.identity.as_deref(), false)?;
        let ids = match &self.backup {
            Some(b) => vec![super::restore::resolve_backup(ctx, &loaded, &repo, b)?],
            None => Vec::new(),
        };
        let handle = tokio::runtime::Handle::current();
        let catalog = super::restore::optional_catalog(ctx, &loaded);
        let by_catalog = catalog.as_ref().map(|catalog| crate::backup::CatalogView {
            handle: &handle,
            catalog,
            repo_id: repo.config.id,
        });
        let report = crate::verify::verify(
            &repo,
            &ids,
            share,
            by_catalog
                .as_ref()
                .map(|l| l as &dyn crate::repo::tree::Locate),
        )?;
        out.emit(&report, || {
            let mut t = format!(
                "checked {} backup(s), {} pack(s); read {} pack(s), {} chunk(s), {}\n",
                report.backups,
                report.packs,
                report.packs_read,
                report.chunks_checked,
                super::progress::human(report.bytes_read)
            );
            for m in &report.damaged_manifests {
                t.push_str(&format!(
                    "DAMAGED manifest of backup {}: {}\n",
                    m.backup, m.error
                ));
            }
            for p in &report.damaged_packs {
                t.push_str(&format!("DAMAGED {}: {}\n", p.pack, p.error));
                for (b, files) in &p.affected {
                    t.push_str(&format!("  affects backup {b}: {} file(s)\n", files.len()));
                    for f in files.iter().take(20) {
                        t.push_str(&format!("    {f}\n"));
                    }
                    if files.len() > 20 {
                        t.push_str(&format!("    … and {} more\n", files.len() - 20));
                    }
                }
            }
            if report.is_clean() {
                t.push_str("no damage found\n");
            }
            t
        });
        if !report.is_clean() {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!(
                    "the repository is damaged: {} manifest(s), {} pack(s)",
                    report.damaged_manifests.len(),
                    report.damaged_packs.len()
                ),
            )
            .with_guidance("restores of the affected backups will fail for the listed files; take a new backup now"));
        }
        Ok(())
    }
}

fn verify_storage(ctx: &Context, loaded: &crate::config::Loaded, out: &Out) -> Result<()> {
    let store = super::open_store(&loaded.config)?;
    let (config, _) = crate::repo::read_config(&*store)?;
    let handle = tokio::runtime::Handle::current();
    let objects = handle.block_on(async {
        let catalog = ctx.catalog(loaded).await?;
        catalog.recorded_objects(config.id).await
    })?;
    if objects.is_empty() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("the catalog records no object of repository {}", config.id),
        )
        .with_guidance(
            "check catalog.url; after losing the catalog, run `drctl catalog rebuild`",
        ));
    }
    let bar = super::progress::count(objects.len() as u64, "objects");
    let report = crate::verify::storage::verify_storage(&*store, &objects, &|n| bar.inc(n));
    bar.finish_and_clear();
    let report = report?;
    out.emit(&report, || {
        let mut t = format!(
            "checked {} object(s) of repository {}, read {}\n",
            report.objects,
            config.id,
            super::progress::human(report.bytes_read)
        );
        for p in &report.problems {
            t.push_str(&format!("PROBLEM {}: {}\n", p.key, p.problem));
        }
        if report.is_clean() {
            t.push_str("every object is present, intact and locked long enough\n");
        }
        t
    });
    if !report.is_clean() {
        return Err(Error::new(
            ErrorKind::Integrity,
            format!("{} problem(s) with stored objects", report.problems.len()),
        )
        .with_guidance("each is listed above; a replaced or shortened object means the bucket's credentials were used against the backups"));
    }
    Ok(())
}
