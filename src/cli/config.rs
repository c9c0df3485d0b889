use clap::Subcommand;

use super::{Context, Out};
use crate::error::Result;

#[derive(Debug, Subcommand)]
pub(crate) enum ConfigCommand {
    /// Validate the configuration file and print it resolved, secrets redacted.
    Check,
}

impl ConfigCommand {
    pub(crate) fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        match self {
            ConfigCommand::Check => {
                let loaded = ctx.load_config()?;
                // The check is for the whole service: backups and the
                // scheduler need the catalog, even if a restore does not.
                loaded.config.catalog.url().map_err(|e| {
                    e.context(format!(
                        "invalid configuration in {}",
                        loaded.path.display()
                    ))
                })?;
                let overrides: Vec<_> = loaded
                    .overrides
                    .iter()
                    .map(|(key, env)| serde_json::json!({"key": key, "env": env}))
                    .collect();
                let value = serde_json::json!({
                    "valid": true,
                    "path": loaded.path.display().to_string(),
                    "config": loaded.config,
                    "overrides": overrides,
                    "warnings": loaded.warnings,
                });
                out.emit(&value, || {
                    let mut text = format!("{}: valid\n", loaded.path.display());
                    for (key, env) in &loaded.overrides {
                        text.push_str(&format!("  {key} taken from ${env}\n"));
                    }
                    for w in &loaded.warnings {
                        text.push_str(&format!("warning: {w}\n"));
                    }
                    text.push_str("\n# resolved configuration (secrets redacted)\n");
                    text.push_str(
                        &serde_yaml_ng::to_string(&loaded.config).expect("config serialises"),
                    );
                    text
                });
                Ok(())
            }
        }
    }
}
