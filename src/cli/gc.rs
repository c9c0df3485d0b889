use clap::Args;

use super::{Context, Out};
use crate::error::{Error, ErrorKind, Result};

#[derive(Debug, Args)]
pub(crate) struct GcArgs {
    /// How long an object stays marked, or debris an interrupted backup
    /// left stays seen, before it may be deleted: `1h`, `30m`. At least
    /// 15m: a shorter grace could take the work of a slow upload.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_grace)]
    grace: chrono::Duration,
}

fn parse_grace(s: &str) -> std::result::Result<chrono::Duration, String> {
    let zero = s
        .strip_suffix(['s', 'm', 'h', 'd'])
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b == b'0'));
    let grace = if zero {
        chrono::Duration::zero()
    } else {
        super::backup::parse_duration(s)?
    };
    let min = crate::gc::MIN_GRACE.as_secs() / 60;
    if grace < chrono::Duration::minutes(min as i64) {
        return Err(format!(
            "`{s}` is shorter than the minimum grace period, {min}m: a shorter one could \
             delete the work of a backup whose upload is slow but alive"
        ));
    }
    Ok(grace)
}

impl GcArgs {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        let catalog = ctx.catalog(&loaded).await?;
        let store = super::open_store(&loaded.config)?;
        let s = store.clone();
        let (config, _) = tokio::task::spawn_blocking(move || crate::repo::read_config(&*s))
            .await
            .map_err(|e| {
                Error::new(ErrorKind::Failed, "reading the config panicked").with_source(e)
            })??;
        let report = crate::gc::gc(store, &catalog, config.id, self.grace).await?;
        out.emit(&report, || {
            let mut t = format!(
                "expired {} backup(s); marked {} object(s), unmarked {}; deleted {} object(s), {} freed\n",
                report.expired.len(),
                report.marked,
                report.unmarked,
                report.deleted.len(),
                super::progress::human(report.freed_bytes)
            );
            if !report.locked.is_empty() {
                let first = report.locked.iter().map(|l| l.until).min().expect("not empty");
                t.push_str(&format!(
                    "{} object(s) wait for their lock to expire (the first at {first})\n",
                    report.locked.len()
                ));
            }
            if !report.abandoned.is_empty() {
                t.push_str(&format!(
                    "removed {} temporary file(s) or unfinished upload(s) left by interrupted backups\n",
                    report.abandoned.len()
                ));
            }
            if !report.orphans.is_empty() {
                t.push_str(&format!(
                    "deleted {} orphan pack(s) that no backup and no catalog row knows\n",
                    report.orphans.len()
                ));
            }
            if let Some(why) = &report.orphans_skipped {
                t.push_str(&format!("orphan packs not collected: {why}\n"));
            }
            if report.waiting > 0 {
                t.push_str(&format!(
                    "{} object(s) are within the grace period or held by a running backup\n",
                    report.waiting
                ));
            }
            for f in &report.failed {
                t.push_str(&format!("FAILED to delete {}: {}\n", f.key, f.error));
            }
            t
        });
        if !report.failed.is_empty() {
            return Err(Error::new(
                ErrorKind::Partial,
                format!("{} object(s) could not be deleted", report.failed.len()),
            )
            .with_guidance(
                "they are no longer in the catalog and no backup needs them; delete them by hand or leave them",
            ));
        }
        Ok(())
    }
}
