//! `drctl server`, `drctl schedule …` and `drctl retention plan`.

use chrono::Utc;
use clap::{Args, Subcommand};

use super::{Context, Out};
use crate::error::Result;
use crate::server::views;

#[derive(Debug, Args)]
pub(crate) struct ServerArgs {
    /// Address to listen on (overrides server.listen); port 0 picks a free
    /// one, printed at start.
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
}

impl ServerArgs {
    pub(crate) async fn run(self, ctx: &Context) -> Result<()> {
        let mut loaded = ctx.load_config()?;
        if let Some(listen) = self.listen {
            loaded.config.server.listen = listen;
        }
        // The server applies pending migrations itself: no require_current.
        let catalog = Context::connect_catalog(&loaded).await?;
        // A writer: `--identity` is refused, encryption.identity_file ignored.
        let repo = super::open_writer(&loaded.config, ctx.identity.clone()).await?;
        crate::server::run(loaded, catalog, repo).await
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum ScheduleCommand {
    /// The schedules `drctl server` runs, with their next and last runs.
    List,
    /// One schedule: its configuration and its recent runs.
    Describe { name: String },
    /// Stop starting runs of a schedule (kept across configuration reloads
    /// until `resume`). A run already going finishes.
    Pause { name: String },
    /// Start running a paused schedule again. Without `skip_immediately`
    /// the latest slot runs at once.
    Resume { name: String },
    /// Queue a run of a schedule now; a running `drctl server` takes it.
    Run { name: String },
}

impl ScheduleCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let loaded = ctx.load_config()?;
        let catalog = ctx.catalog(&loaded).await?;
        let repo = super::listing::repository_id(&catalog, &loaded).await?;
        match self {
            ScheduleCommand::List => {
                let list = views::schedules(&catalog, repo).await?;
                out.emit(&list, || render_list(&list));
            }
            ScheduleCommand::Describe { name } => {
                let d = views::describe(&catalog, repo, &name).await?;
                out.emit(&d, || render_detail(&d));
            }
            ScheduleCommand::Pause { name } => {
                let by = std::env::var("USER").unwrap_or_else(|_| "cli".into());
                let changed = catalog.pause_schedule(repo, &name, &by).await?;
                out.emit(
                    &serde_json::json!({"schedule": name, "paused": true, "changed": changed}),
                    || {
                        if changed {
                            format!(
                                "paused {name}; `drctl schedule resume {name}` starts it again\n"
                            )
                        } else {
                            format!("{name} was already paused\n")
                        }
                    },
                );
            }
            ScheduleCommand::Resume { name } => {
                let changed = catalog.resume_schedule(repo, &name, Utc::now()).await?;
                out.emit(
                    &serde_json::json!({"schedule": name, "paused": false, "changed": changed}),
                    || {
                        if changed {
                            format!("resumed {name}\n")
                        } else {
                            format!("{name} was not paused from the CLI (a pause in the configuration stays)\n")
                        }
                    },
                );
            }
            ScheduleCommand::Run { name } => {
                let e = views::run_now(&catalog, repo, &name).await?;
                out.emit(&e, || format!("{}\n", e.message));
            }
        }
        Ok(())
    }
}

fn when(t: Option<chrono::DateTime<Utc>>) -> String {
    t.map_or("-".into(), |t| t.format("%Y-%m-%d %H:%M:%SZ").to_string())
}

fn render_list(list: &[views::ScheduleView]) -> String {
    if list.is_empty() {
        return "no schedules in the catalog; `drctl server` mirrors them from the \
                configuration's `schedules:` when it starts\n"
            .into();
    }
    let mut t = format!(
        "{:<20} {:<9} {:<16} {:<14} {:<6} {:<21} {}\n",
        "NAME", "KIND", "CRON", "TIME ZONE", "PAUSED", "NEXT RUN", "LAST RUN"
    );
    for s in list {
        let last = s.last_run.as_ref().map_or("-".to_string(), |r| {
            format!(
                "{} ({})",
                r.state,
                r.scheduled_for.format("%Y-%m-%d %H:%MZ")
            )
        });
        t.push_str(&format!(
            "{:<20} {:<9} {:<16} {:<14} {:<6} {:<21} {}\n",
            s.name,
            s.kind,
            s.cron,
            s.time_zone,
            if s.paused { "yes" } else { "no" },
            when(s.next_run),
            last
        ));
    }
    t
}

fn render_detail(d: &views::ScheduleDetail) -> String {
    let v = &d.view;
    let mut t = format!(
        "schedule   {}\nsource     {}\ncron       {} ({})\npaused     {}\nnext run   {}\nlast ok    {}\n",
        v.name,
        v.kind,
        v.cron,
        v.time_zone,
        match (&v.paused, &v.paused_by) {
            (true, Some(by)) => format!("yes (by {by})"),
            (true, None) => "yes (in the configuration)".into(),
            _ => "no".into(),
        },
        when(v.next_run),
        when(v.last_success),
    );
    if let Some(rpo) = v.rpo_seconds {
        t.push_str(&format!("rpo        {rpo}s\n"));
    }
    t.push_str("\nRUNS\n");
    if d.runs.is_empty() {
        t.push_str("  none yet\n");
    }
    for j in &d.runs {
        t.push_str(&format!(
            "  {:<10} {:<21} {:<11} {:<8} {}\n",
            j.kind,
            when(Some(j.scheduled_for)),
            j.state,
            j.trigger,
            j.reason.as_deref().unwrap_or("")
        ));
    }
    t
}

#[derive(Debug, Subcommand)]
pub(crate) enum RetentionCommand {
    /// What retention would keep and delete now, and why; changes nothing.
    /// Reads the policy from the configuration file, so a new policy can
    /// be tried before the server loads it.
    Plan { schedule: String },
}

impl RetentionCommand {
    pub(crate) async fn run(self, ctx: &Context, out: &Out) -> Result<()> {
        let RetentionCommand::Plan { schedule } = self;
        let loaded = ctx.load_config()?;
        let catalog = ctx.catalog(&loaded).await?;
        let repo = super::listing::repository_id(&catalog, &loaded).await?;
        let spec = match loaded.config.schedules.iter().find(|s| s.name == schedule) {
            Some(s) => s.clone(),
            None => catalog.schedule(repo, &schedule).await?.spec,
        };
        let (_, plan) =
            crate::server::worker::plan_retention(&catalog, repo, &spec, Utc::now()).await?;
        out.emit(&plan, || {
            let kept = plan.iter().filter(|v| v.keep).count();
            let mut t = format!(
                "{schedule}: keep {kept}, delete {} of {} backup(s)\n",
                plan.len() - kept,
                plan.len()
            );
            for v in &plan {
                t.push_str(&format!(
                    "  {:<6} {}  {}  {}{}\n",
                    if v.keep { "keep" } else { "delete" },
                    &v.backup_id.simple().to_string()[..12],
                    v.created.format("%Y-%m-%d %H:%MZ"),
                    v.reasons.join(", "),
                    v.keep_until
                        .map(|u| format!(" (until {})", u.format("%Y-%m-%d")))
                        .unwrap_or_default()
                ));
            }
            t
        });
        Ok(())
    }
}
