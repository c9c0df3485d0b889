//! Markdown and HTML renderings of a drill report.
//!
//! Both formats are rendered from one small document model (`Doc`) built
//! from the [`Report`], so they cannot drift apart: a fact added to the
//! model shows in both, and each format escapes report text in exactly one
//! place (`md_escape`, `esc`). The model holds plain text only; markup is
//! the renderers' business.
//!
//! The HTML page is self-contained (inline CSS and SVG, no script, nothing
//! fetched) because it is mailed, attached to tickets and kept next to the
//! backups, where nothing outside the file can be relied on, and because an
//! auditor's browser should call out to no one when it is opened. A
//! Content-Security-Policy forbids scripts and fetches as well, so a slip in
//! escaping cannot become code.

use std::fmt::Write as _;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::report::{
    BackupUnderTest, Check, CheckStatus, Objective, Phases, Report, TrendPoint, Verdict,
};

/// Writing to a `String` cannot fail: the result is dropped in one place
/// rather than at every write.
macro_rules! put {
    ($dst:expr, $($arg:tt)*) => {
        let _ = write!($dst, $($arg)*);
    };
}

/// The report as Markdown, for pull requests, tickets and terminals.
pub fn markdown(r: &Report) -> String {
    render_markdown(&Doc::of(r))
}

/// The report as one self-contained HTML5 page (see the module docs).
pub fn html(r: &Report) -> String {
    render_html(&Doc::of(r))
}

/// A duration as people say it: `0.42 s`, `1 min 15 s`, `3 h 12 min`,
/// `2 d 3 h`.
///
/// Two units at most, because a drill's times are compared against
/// objectives of minutes or hours, where seconds of an hour are noise; the
/// exact seconds stay in the JSON (and next to this where they matter).
pub fn human_seconds(s: f64) -> String {
    if !s.is_finite() {
        return "n/a".to_string();
    }
    if s < 0.0 {
        // Clock skew can make a tiny negative; "-0 s" would look like a bug.
        let magnitude = human_seconds(-s);
        return if magnitude == "0 s" {
            magnitude
        } else {
            format!("-{magnitude}")
        };
    }
    if s < 10.0 {
        return format!("{} s", trim_zeros(&format!("{s:.2}")));
    }
    // 59.95 and above would print as "60.0 s".
    if s < 59.95 {
        return format!("{} s", trim_zeros(&format!("{s:.1}")));
    }
    let secs = s.round() as u64;
    if secs < 3600 {
        return two_units(secs / 60, "min", secs % 60, "s");
    }
    let mins = (s / 60.0).round() as u64;
    if mins < 2 * 24 * 60 {
        return two_units(mins / 60, "h", mins % 60, "min");
    }
    let hours = (s / 3600.0).round() as u64;
    two_units(hours / 24, "d", hours % 24, "h")
}

/// `3 h` rather than `3 h 0 min`: axis ticks are round numbers.
fn two_units(major: u64, major_unit: &str, minor: u64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major} {major_unit}")
    } else {
        format!("{major} {major_unit} {minor} {minor_unit}")
    }
}

fn trim_zeros(n: &str) -> &str {
    if n.contains('.') {
        n.trim_end_matches('0').trim_end_matches('.')
    } else {
        n
    }
}

// ---------------------------------------------------------------------------
// The document model.

/// How a status reads at a glance; colours in HTML, bold for bad news in
/// Markdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tone {
    Good,
    Warn,
    Bad,
    Neutral,
}

impl Tone {
    fn class(self) -> &'static str {
        match self {
            Tone::Good => "good",
            Tone::Warn => "warn",
            Tone::Bad => "bad",
            Tone::Neutral => "neutral",
        }
    }
}

#[derive(Debug, Clone)]
enum Span {
    Plain(String),
    /// Ids, digests and names a reader copies.
    Code(String),
    Strong(String),
    Badge(String, Tone),
}

type Inline = Vec<Span>;

fn plain(s: impl Into<String>) -> Span {
    Span::Plain(s.into())
}

fn code(s: impl Into<String>) -> Span {
    Span::Code(s.into())
}

fn badge(s: impl Into<String>, tone: Tone) -> Span {
    Span::Badge(s.into(), tone)
}

fn text(s: impl Into<String>) -> Inline {
    vec![plain(s)]
}

#[derive(Debug, Clone, Copy)]
struct Column {
    title: &'static str,
    /// Right-aligned, so digits line up.
    numeric: bool,
}

const fn col(title: &'static str) -> Column {
    Column {
        title,
        numeric: false,
    }
}

const fn num(title: &'static str) -> Column {
    Column {
        title,
        numeric: true,
    }
}

#[derive(Debug)]
struct Table {
    columns: Vec<Column>,
    /// False for a key–value table: no header, and the first column names
    /// the rows.
    head: bool,
    rows: Vec<Vec<Inline>>,
}

#[derive(Debug)]
enum Block {
    /// Label and value pairs.
    Fields(Vec<(&'static str, Inline)>),
    Table(Table),
    List {
        title: &'static str,
        items: Vec<Inline>,
    },
    Note(String),
    /// Figures exist in HTML only; the tables next to them carry the same
    /// numbers for Markdown.
    PhaseBar(Phases),
    TrendChart {
        points: Vec<TrendPoint>,
        rto_objective: Option<f64>,
        rpo_objective: Option<f64>,
    },
}

impl Block {
    fn is_figure(&self) -> bool {
        matches!(self, Block::PhaseBar(_) | Block::TrendChart { .. })
    }
}

#[derive(Debug)]
struct Section {
    /// The HTML anchor.
    id: &'static str,
    title: &'static str,
    /// Drawn as a warning box: the failure.
    alert: bool,
    blocks: Vec<Block>,
}

#[derive(Debug)]
struct Doc {
    drill: String,
    verdict: Verdict,
    /// The numbers a reader wants before anything else.
    headline: String,
    sections: Vec<Section>,
    footer: String,
}

impl Doc {
    fn of(r: &Report) -> Doc {
        let mut sections = vec![summary(r)];
        sections.extend(failure(r));
        sections.extend([rpo(r), rto(r), backups(r), checks(r), cleanup(r), trend(r)]);
        Doc {
            drill: r.drill.clone(),
            verdict: r.verdict,
            headline: headline(r),
            sections,
            footer: format!(
                "Rendered from drill report {} (schema {}); the JSON report is the canonical form.",
                r.drill_id, r.schema
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// From the report to the model.

fn headline(r: &Report) -> String {
    format!(
        "RTO {} ({}) · RPO {} ({}) · {} · {}",
        human_seconds(r.rto.seconds),
        objective_label(r.rto.result),
        human_seconds(r.rpo.seconds),
        objective_label(r.rpo.result),
        count(r.backups.len() as u64, "backup", "backups"),
        check_counts(&r.checks),
    )
}

/// `12 checks (10 passed, 2 not observable)`: the tally a reader scans for.
fn check_counts(checks: &[Check]) -> String {
    let tally = [
        CheckStatus::Passed,
        CheckStatus::Failed,
        CheckStatus::NotObservable,
        CheckStatus::Skipped,
    ]
    .into_iter()
    .filter_map(|status| {
        let n = checks.iter().filter(|c| c.status == status).count();
        (n > 0).then(|| format!("{n} {}", status_label(status)))
    })
    .collect::<Vec<_>>();
    let total = count(checks.len() as u64, "check", "checks");
    if tally.is_empty() {
        total
    } else {
        format!("{total} ({})", tally.join(", "))
    }
}

fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

fn summary(r: &Report) -> Section {
    let trigger = match r.job_id {
        Some(job) => vec![plain(format!("{}, job ", r.trigger)), code(job.to_string())],
        None => text(&r.trigger),
    };
    let took = human_seconds(seconds_between(r.started_at, r.finished_at));
    let rows = vec![
        vec![text("Drill"), text(&r.drill)],
        vec![text("Verdict"), vec![verdict_badge(r.verdict)]],
        vec![text("Drill id"), vec![code(r.drill_id.to_string())]],
        vec![text("Trigger"), trigger],
        vec![text("Run by"), text(&r.run_by)],
        vec![text("drctl version"), text(&r.drctl_version)],
        vec![text("Repository"), vec![code(&r.repository)]],
        vec![text("Started"), text(fmt_time(r.started_at))],
        vec![
            text("Finished"),
            text(format!("{} (took {took})", fmt_time(r.finished_at))),
        ],
    ];
    Section {
        id: "summary",
        title: "Summary",
        alert: false,
        blocks: vec![Block::Table(Table {
            columns: vec![col("Field"), col("Value")],
            head: false,
            rows,
        })],
    }
}

fn failure(r: &Report) -> Option<Section> {
    let f = r.failure.as_ref()?;
    let backup = match f.backup_id {
        Some(id) => backup_ref(r, id),
        None => text("—"),
    };
    Some(Section {
        id: "failure",
        title: "Failure",
        alert: true,
        blocks: vec![Block::Fields(vec![
            ("Stage", text(&f.stage)),
            ("Backup", backup),
            ("Kind", text(&f.kind)),
            ("Reason", text(&f.reason)),
        ])],
    })
}

/// An id alone tells a reader nothing; the name and kind say which target.
fn backup_ref(r: &Report, id: Uuid) -> Inline {
    let mut inline = vec![code(id.to_string())];
    if let Some(b) = find_backup(r, id) {
        inline.push(plain(format!(" ({}, {})", b.name, b.kind)));
    }
    inline
}

fn find_backup(r: &Report, id: Uuid) -> Option<&BackupUnderTest> {
    r.backups.iter().find(|b| b.backup_id == id)
}

fn rpo(r: &Report) -> Section {
    let rpo = &r.rpo;
    Section {
        id: "rpo",
        title: "RPO: data age",
        alert: false,
        blocks: vec![Block::Fields(vec![
            (
                "Data age at drill start",
                text(format!(
                    "{} ({:.0} s)",
                    human_seconds(rpo.seconds),
                    rpo.seconds
                )),
            ),
            ("Objective", objective_text(rpo.objective_seconds)),
            ("Result", vec![objective_badge(rpo.result)]),
            ("Largest gap between backups, 30 days", max_gap(r)),
        ])],
    }
}

fn max_gap(r: &Report) -> Inline {
    let Some(gap) = r.rpo.max_gap_30d_seconds else {
        return text("not known");
    };
    let mut inline = vec![plain(human_seconds(gap))];
    if let Some(name) = &r.rpo.max_gap_name {
        inline.push(plain(", "));
        inline.push(code(name));
    }
    if let Some(at) = r.rpo.max_gap_ended_at {
        inline.push(plain(format!(", ended {}", fmt_time(at))));
    }
    inline
}

fn objective_text(objective: Option<f64>) -> Inline {
    match objective {
        Some(s) => text(human_seconds(s)),
        None => text("none set"),
    }
}

fn rto(r: &Report) -> Section {
    let rto = &r.rto;
    Section {
        id: "rto",
        title: "RTO: time to restore",
        alert: false,
        blocks: vec![
            Block::Fields(vec![
                (
                    "Time to restore",
                    text(format!(
                        "{} ({:.2} s)",
                        human_seconds(rto.seconds),
                        rto.seconds
                    )),
                ),
                ("Objective", objective_text(rto.objective_seconds)),
                ("Result", vec![objective_badge(rto.result)]),
            ]),
            Block::PhaseBar(rto.phases),
            Block::Table(phase_table(&rto.phases)),
            Block::Fields(vec![
                (
                    "Restored",
                    text(format!(
                        "{} ({} bytes), {}",
                        human_bytes(rto.bytes as f64),
                        rto.bytes,
                        count(rto.objects, "object", "objects")
                    )),
                ),
                (
                    "Throughput",
                    text(format!(
                        "{}/s, {:.1} objects/s",
                        human_bytes(rto.bytes_per_second),
                        rto.objects_per_second
                    )),
                ),
            ]),
        ],
    }
}

/// The five phases with what each covers: a slow phase means nothing to a
/// reader who does not know what it measured.
fn phase_list(p: &Phases) -> [(&'static str, &'static str, f64); 5] {
    [
        (
            "Plan",
            "finding the backups, reading manifests, planning",
            p.plan,
        ),
        (
            "Fetch & decrypt",
            "reading packs from the store, decrypting",
            p.fetch_decrypt,
        ),
        (
            "Write",
            "writing files and etcd's data, applying objects",
            p.write,
        ),
        (
            "Start",
            "starting the throwaway etcd and API server",
            p.start,
        ),
        (
            "Checks",
            "comparing with the backup, probes, readiness",
            p.checks,
        ),
    ]
}

/// Negative or NaN phase times would bend the bar and the shares; they
/// count as nothing.
fn phase_total(p: &Phases) -> f64 {
    phase_list(p).iter().map(|(_, _, s)| s.max(0.0)).sum()
}

fn phase_table(p: &Phases) -> Table {
    let total = phase_total(p);
    let mut rows: Vec<Vec<Inline>> = phase_list(p)
        .into_iter()
        .map(|(name, what, secs)| {
            vec![
                text(name),
                text(what),
                text(format!("{secs:.2}")),
                text(share(secs, total)),
            ]
        })
        .collect();
    rows.push(vec![
        vec![Span::Strong("Total".into())],
        Vec::new(),
        vec![Span::Strong(format!("{total:.2}"))],
        vec![Span::Strong(share(total, total))],
    ]);
    Table {
        columns: vec![col("Phase"), col("Covers"), num("Seconds"), num("Share")],
        head: true,
        rows,
    }
}

fn share(part: f64, total: f64) -> String {
    if total > 0.0 {
        format!("{:.1} %", 100.0 * part.max(0.0) / total)
    } else {
        "—".to_string()
    }
}

fn backups(r: &Report) -> Section {
    let blocks = if r.backups.is_empty() {
        vec![Block::Note("No backups were tested.".into())]
    } else {
        vec![Block::Table(Table {
            columns: vec![
                col("Backup id"),
                col("Name"),
                col("Kind"),
                col("Snapshot time"),
                num("etcd revision"),
                col("Manifest SHA-256"),
                col("Retain until"),
                num("Restored"),
            ],
            head: true,
            rows: r.backups.iter().map(backup_row).collect(),
        })]
    };
    Section {
        id: "backups",
        title: "Backups under test",
        alert: false,
        blocks,
    }
}

fn backup_row(b: &BackupUnderTest) -> Vec<Inline> {
    vec![
        vec![code(b.backup_id.to_string())],
        text(&b.name),
        text(&b.kind),
        text(fmt_time(b.snapshot_time)),
        text(
            b.etcd_revision
                .map_or_else(|| "—".into(), |rev| rev.to_string()),
        ),
        vec![code(short_digest(&b.manifest_sha256))],
        text(b.retain_until.map_or_else(|| "—".into(), fmt_time)),
        text(format!(
            "{}, {}",
            human_bytes(b.bytes as f64),
            count(b.objects, "object", "objects")
        )),
    ]
}

/// Sixteen hex digits tell manifests apart at a glance; the full digest is
/// in the JSON.
fn short_digest(hex: &str) -> String {
    if hex.chars().count() > 16 {
        format!("{}…", hex.chars().take(16).collect::<String>())
    } else {
        hex.to_string()
    }
}

fn checks(r: &Report) -> Section {
    let blocks = if r.checks.is_empty() {
        vec![Block::Note("No checks ran.".into())]
    } else {
        vec![Block::Table(Table {
            columns: vec![
                col("Backup"),
                col("Source"),
                col("Check"),
                col("Status"),
                num("Seconds"),
                col("Summary"),
            ],
            head: true,
            rows: r.checks.iter().map(|c| check_row(r, c)).collect(),
        })]
    };
    Section {
        id: "checks",
        title: "Checks",
        alert: false,
        blocks,
    }
}

fn check_row(r: &Report, c: &Check) -> Vec<Inline> {
    let backup = match find_backup(r, c.backup_id) {
        Some(b) => text(&b.name),
        None => vec![code(c.backup_id.to_string())],
    };
    vec![
        backup,
        text(&c.source),
        vec![code(&c.name)],
        vec![status_badge(c.status)],
        text(format!("{:.2}", c.seconds)),
        text(&c.summary),
    ]
}

fn cleanup(r: &Report) -> Section {
    let c = &r.cleanup;
    let tone = match c.result.as_str() {
        "removed" => Tone::Good,
        "failed" => Tone::Bad,
        _ => Tone::Neutral,
    };
    let mut fields = vec![("Result", vec![badge(&c.result, tone)])];
    if let Some(until) = c.kept_until {
        fields.push(("Kept until", text(fmt_time(until))));
    }
    if c.scratch.is_empty() {
        fields.push(("Scratch space", text("none")));
    }
    let mut blocks = vec![Block::Fields(fields)];
    if !c.scratch.is_empty() {
        blocks.push(Block::List {
            title: "Scratch space",
            items: c.scratch.iter().map(|s| vec![code(s)]).collect(),
        });
    }
    if !c.errors.is_empty() {
        blocks.push(Block::List {
            title: "Errors",
            items: c.errors.iter().map(text).collect(),
        });
    }
    Section {
        id: "cleanup",
        title: "Cleanup",
        alert: false,
        blocks,
    }
}

fn trend(r: &Report) -> Section {
    let points = trend_points(r);
    let rows = points
        .iter()
        .enumerate()
        .map(|(i, p)| trend_row(r, i, p))
        .collect();
    Section {
        id: "trend-runs",
        title: "Trend",
        alert: false,
        blocks: vec![
            Block::TrendChart {
                points,
                rto_objective: r.rto.objective_seconds,
                rpo_objective: r.rpo.objective_seconds,
            },
            Block::Table(Table {
                columns: vec![
                    num("#"),
                    col("Run"),
                    col("Started"),
                    num("RTO"),
                    num("RPO"),
                    col("Verdict"),
                ],
                head: true,
                rows,
            }),
        ],
    }
}

/// The trend should end with this run; a report written without one still
/// shows this run rather than an empty chart.
fn trend_points(r: &Report) -> Vec<TrendPoint> {
    if !r.trend.is_empty() {
        return r.trend.clone();
    }
    vec![TrendPoint {
        drill_id: r.drill_id,
        started_at: r.started_at,
        rto_seconds: r.rto.seconds,
        rpo_seconds: r.rpo.seconds,
        verdict: r.verdict,
    }]
}

fn trend_row(r: &Report, i: usize, p: &TrendPoint) -> Vec<Inline> {
    let mut run = vec![code(p.drill_id.to_string())];
    if p.drill_id == r.drill_id {
        run.push(plain(" (this run)"));
    }
    vec![
        text((i + 1).to_string()),
        run,
        text(fmt_time(p.started_at)),
        text(human_seconds(p.rto_seconds)),
        text(human_seconds(p.rpo_seconds)),
        vec![verdict_badge(p.verdict)],
    ]
}

// ---------------------------------------------------------------------------
// Labels.

fn verdict_label(v: Verdict) -> &'static str {
    match v {
        Verdict::Passed => "PASSED",
        Verdict::PartiallyFailed => "PARTIALLY FAILED",
        Verdict::Failed => "FAILED",
    }
}

fn verdict_badge(v: Verdict) -> Span {
    let tone = match v {
        Verdict::Passed => Tone::Good,
        Verdict::PartiallyFailed => Tone::Warn,
        Verdict::Failed => Tone::Bad,
    };
    badge(verdict_label(v), tone)
}

fn objective_label(o: Objective) -> &'static str {
    match o {
        Objective::Pass => "pass",
        Objective::Breach => "breach",
        Objective::None => "none",
    }
}

fn objective_badge(o: Objective) -> Span {
    let tone = match o {
        Objective::Pass => Tone::Good,
        Objective::Breach => Tone::Bad,
        Objective::None => Tone::Neutral,
    };
    badge(objective_label(o), tone)
}

fn status_label(s: CheckStatus) -> &'static str {
    match s {
        CheckStatus::Passed => "passed",
        CheckStatus::Failed => "failed",
        CheckStatus::NotObservable => "not observable",
        CheckStatus::Skipped => "skipped",
    }
}

fn status_badge(s: CheckStatus) -> Span {
    let tone = match s {
        CheckStatus::Passed => Tone::Good,
        CheckStatus::Failed => Tone::Bad,
        CheckStatus::NotObservable | CheckStatus::Skipped => Tone::Neutral,
    };
    badge(status_label(s), tone)
}

/// Always UTC and always spelled out: a report is read in other time zones
/// than the one it ran in.
fn fmt_time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    to.signed_duration_since(from).num_milliseconds() as f64 / 1000.0
}

/// Binary units, as `drctl` prints sizes elsewhere.
fn human_bytes(bytes: f64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if !bytes.is_finite() {
        return "n/a".to_string();
    }
    if bytes < 1024.0 {
        return format!("{:.0} B", bytes.max(0.0));
    }
    let mut value = bytes;
    let mut unit = "B";
    for u in UNITS {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = u;
    }
    format!("{value:.1} {unit}")
}

// ---------------------------------------------------------------------------
// Markdown.

fn render_markdown(doc: &Doc) -> String {
    let mut out = String::with_capacity(8 * 1024);
    put!(
        out,
        "# Drill {}: {}\n\n{}\n",
        md_escape(&doc.drill),
        verdict_label(doc.verdict),
        md_escape(&doc.headline)
    );
    for section in &doc.sections {
        put!(out, "\n## {}\n", section.title);
        for block in section.blocks.iter().filter(|b| !b.is_figure()) {
            out.push('\n');
            md_block(&mut out, block);
        }
    }
    put!(out, "\n---\n\n{}\n", md_escape(&doc.footer));
    out
}

fn md_block(out: &mut String, block: &Block) {
    match block {
        Block::Fields(fields) => {
            for (label, value) in fields {
                put!(out, "- **{label}:** {}\n", md_inline(value));
            }
        }
        Block::Table(table) => md_table(out, table),
        Block::List { title, items } => {
            put!(out, "**{title}:**\n\n");
            for item in items {
                put!(out, "- {}\n", md_inline(item));
            }
        }
        Block::Note(note) => {
            put!(out, "{}\n", md_escape(note));
        }
        Block::PhaseBar(_) | Block::TrendChart { .. } => {}
    }
}

fn md_table(out: &mut String, table: &Table) {
    let head = table
        .columns
        .iter()
        .map(|c| String::from(if table.head { c.title } else { "" }))
        .collect::<Vec<_>>();
    md_row(out, &head);
    let rule = table
        .columns
        .iter()
        .map(|c| String::from(if c.numeric { "---:" } else { "---" }))
        .collect::<Vec<_>>();
    md_row(out, &rule);
    for row in &table.rows {
        let cells = row
            .iter()
            .enumerate()
            .map(|(i, cell)| {
                let rendered = md_inline(cell);
                // Without a header the first column names the row.
                if !table.head && i == 0 && !rendered.is_empty() {
                    format!("**{rendered}**")
                } else {
                    rendered
                }
            })
            .collect::<Vec<_>>();
        md_row(out, &cells);
    }
}

fn md_row(out: &mut String, cells: &[String]) {
    put!(out, "| {} |\n", cells.join(" | "));
}

fn md_inline(spans: &[Span]) -> String {
    spans.iter().map(md_span).collect()
}

fn md_span(span: &Span) -> String {
    match span {
        Span::Code(t) if md_code_safe(t) => format!("`{}`", md_escape(t)),
        Span::Strong(t) | Span::Badge(t, Tone::Bad) => format!("**{}**", md_escape(t)),
        Span::Plain(t) | Span::Code(t) | Span::Badge(t, _) => md_escape(t),
    }
}

/// A code span shows backslashes literally, so the escaping a table cell
/// needs would show too; such text, and text that would end the span, is
/// written as plain text instead.
fn md_code_safe(t: &str) -> bool {
    !t.is_empty() && !t.contains(['`', '\\', '\n', '\r'])
}

/// Keeps report text inside its table cell or list item: a `|` would start
/// a new cell and a newline end the row. Backslashes are doubled so that
/// one before a `|` cannot undo its escape.
fn md_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '|' => out.push_str("\\|"),
            '\r' => {
                if chars.peek() == Some(&'\n') {
                    chars.next();
                }
                out.push_str("<br>");
            }
            '\n' => out.push_str("<br>"),
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// HTML.

/// The only URL in the page: the SVG namespace, a name rather than a place,
/// which no browser fetches.
const SVG_NS: &str = "http://www.w3.org/2000/svg";

/// Scripts, fetches and frames are refused even if escaping were to fail;
/// inline styles are all the page needs.
const CSP: &str =
    "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'";

const CSS: &str = r##"
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff;
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
.page { max-width: 1160px; margin: 0 auto; padding: 24px 24px 48px; }
.banner { border-radius: 8px; padding: 18px 24px; color: #fff; }
.banner[data-verdict="passed"] { background: #1a7f37; }
.banner[data-verdict="failed"] { background: #cf222e; }
.banner[data-verdict="partially_failed"] { background: #d29922; color: #1f2328; }
.banner .verdict { margin: 0; font-size: 15px; font-weight: 700; letter-spacing: .1em; }
.banner h1 { margin: 2px 0 6px; font-size: 28px; line-height: 1.25; overflow-wrap: anywhere; }
.banner .headline { margin: 0; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 15px; margin: 16px 0 6px; }
section.alert { margin-top: 24px; padding: 2px 20px 8px; border: 1px solid #ffcecb;
  border-left: 5px solid #cf222e; border-radius: 6px; background: #fff5f5; }
section.alert h2 { color: #a40e26; border-bottom: 0; margin-top: 12px; }
dl.fields { display: grid; grid-template-columns: minmax(200px, max-content) 1fr; gap: 4px 24px; margin: 8px 0 16px; }
dl.fields dt { color: var(--muted); }
dl.fields dd { margin: 0; white-space: pre-line; overflow-wrap: anywhere; }
.table-wrap { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; width: 100%; font-size: 14px; }
th, td { text-align: left; vertical-align: top; padding: 6px 10px; border-bottom: 1px solid var(--line); }
thead th { background: var(--soft); border-bottom: 2px solid var(--line); }
tbody th { width: 200px; color: var(--muted); font-weight: normal; white-space: nowrap; }
td { white-space: pre-line; overflow-wrap: break-word; }
.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
code { font: 13px/1.4 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; background: var(--soft);
  padding: 1px 4px; border-radius: 4px; }
.badge { display: inline-block; padding: 0 8px; border: 1px solid; border-radius: 999px;
  font-size: 12px; font-weight: 600; line-height: 20px; white-space: nowrap; }
.badge.good { background: #dafbe1; color: #116329; border-color: #aceebb; }
.badge.bad { background: #ffebe9; color: #a40e26; border-color: #ffcecb; }
.badge.warn { background: #fff8c5; color: #7d4e00; border-color: #eac54f; }
.badge.neutral { background: #eff2f5; color: #424a53; border-color: #d1d9e0; }
figure { margin: 12px 0 16px; }
figure svg { display: block; width: 100%; height: auto; }
.note { color: var(--muted); font-style: italic; }
footer { margin-top: 40px; padding-top: 8px; border-top: 1px solid var(--line); color: var(--muted); font-size: 13px; }
@media print {
  @page { margin: 14mm; }
  body { font-size: 10pt; }
  .page { max-width: none; padding: 0; }
  .banner, .badge, section.alert, thead th, figure svg { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
  h2, h3 { break-after: avoid; }
  tr, figure, dl.fields, .banner { break-inside: avoid; }
  .table-wrap { overflow: visible; }
  table { font-size: 8pt; }
  th, td { padding: 3px 5px; }
  code { font-size: 7.5pt; }
  .badge { font-size: 7pt; line-height: 1.6; }
  .num { white-space: normal; }
}
"##;

fn render_html(doc: &Doc) -> String {
    let mut out = String::with_capacity(48 * 1024);
    let title = format!("Drill {}: {}", doc.drill, verdict_label(doc.verdict));
    put!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<div class=\"page\">\n",
        esc(&title)
    );
    html_banner(&mut out, doc);
    out.push_str("<main>\n");
    for section in &doc.sections {
        html_section(&mut out, section);
    }
    put!(
        out,
        "</main>\n<footer>{}</footer>\n</div>\n</body>\n</html>\n",
        esc(&doc.footer)
    );
    out
}

fn html_banner(out: &mut String, doc: &Doc) {
    put!(
        out,
        "<header class=\"banner\" data-verdict=\"{}\">\n<p class=\"verdict\">{}</p>\n\
         <h1>Drill {}</h1>\n<p class=\"headline\">{}</p>\n</header>\n",
        doc.verdict.as_str(),
        verdict_label(doc.verdict),
        esc(&doc.drill),
        esc(&doc.headline)
    );
}

fn html_section(out: &mut String, section: &Section) {
    let class = if section.alert {
        " class=\"alert\""
    } else {
        ""
    };
    put!(
        out,
        "<section id=\"{}\"{class}>\n<h2>{}</h2>\n",
        section.id,
        esc(section.title)
    );
    for block in &section.blocks {
        html_block(out, block);
    }
    out.push_str("</section>\n");
}

fn html_block(out: &mut String, block: &Block) {
    match block {
        Block::Fields(fields) => {
            out.push_str("<dl class=\"fields\">\n");
            for (label, value) in fields {
                put!(out, "<dt>{}</dt><dd>", esc(label));
                html_inline(out, value);
                out.push_str("</dd>\n");
            }
            out.push_str("</dl>\n");
        }
        Block::Table(table) => html_table(out, table),
        Block::List { title, items } => {
            put!(out, "<h3>{}</h3>\n<ul>\n", esc(title));
            for item in items {
                out.push_str("<li>");
                html_inline(out, item);
                out.push_str("</li>\n");
            }
            out.push_str("</ul>\n");
        }
        Block::Note(note) => {
            put!(out, "<p class=\"note\">{}</p>\n", esc(note));
        }
        Block::PhaseBar(phases) => {
            out.push_str("<figure>\n");
            phase_svg(out, phases);
            out.push_str("</figure>\n");
        }
        Block::TrendChart {
            points,
            rto_objective,
            rpo_objective,
        } => {
            out.push_str("<figure>\n");
            trend_svg(out, points, *rto_objective, *rpo_objective);
            out.push_str("</figure>\n");
        }
    }
}

fn html_table(out: &mut String, table: &Table) {
    out.push_str("<div class=\"table-wrap\"><table>\n");
    if table.head {
        out.push_str("<thead><tr>");
        for c in &table.columns {
            put!(out, "<th{}>{}</th>", num_class(c), esc(c.title));
        }
        out.push_str("</tr></thead>\n");
    }
    out.push_str("<tbody>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for (i, (cell, column)) in row.iter().zip(&table.columns).enumerate() {
            let tag = if !table.head && i == 0 { "th" } else { "td" };
            let scope = if tag == "th" { " scope=\"row\"" } else { "" };
            put!(out, "<{tag}{scope}{}>", num_class(column));
            html_inline(out, cell);
            put!(out, "</{tag}>");
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</tbody>\n</table></div>\n");
}

fn num_class(c: &Column) -> &'static str {
    if c.numeric { " class=\"num\"" } else { "" }
}

fn html_inline(out: &mut String, spans: &[Span]) {
    for span in spans {
        match span {
            Span::Plain(t) => out.push_str(&esc(t)),
            Span::Code(t) => {
                put!(out, "<code>{}</code>", esc(t));
            }
            Span::Strong(t) => {
                put!(out, "<strong>{}</strong>", esc(t));
            }
            Span::Badge(t, tone) => {
                put!(
                    out,
                    "<span class=\"badge {}\">{}</span>",
                    tone.class(),
                    esc(t)
                );
            }
        }
    }
}

/// Every character that can end text or an attribute value in HTML.
pub(crate) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// SVG figures. Colours are attributes rather than CSS so that a figure
// saved on its own still draws the same.

/// Okabe–Ito colours: told apart with the common colour-vision
/// deficiencies, and none is the verdict's green or red.
const PHASE_COLOURS: [&str; 5] = ["#56b4e9", "#0072b2", "#009e73", "#e69f00", "#cc79a7"];
const RTO_COLOUR: &str = "#0072b2";
const RPO_COLOUR: &str = "#d55e00";
const GRID_COLOUR: &str = "#d1d9e0";
const AXIS_COLOUR: &str = "#8c959f";
/// Text style on the root, not in the page's CSS, for the same reason.
const SVG_TEXT: &str = "font-family=\"system-ui, sans-serif\" font-size=\"13\" fill=\"#424a53\"";
/// A white outline behind a label, so a line crossing it does not hide it.
const HALO: &str =
    "stroke=\"#ffffff\" stroke-width=\"4\" stroke-linejoin=\"round\" paint-order=\"stroke\"";

fn phase_svg(out: &mut String, phases: &Phases) {
    const WIDTH: f64 = 1000.0;
    let total = phase_total(phases);
    put!(
        out,
        "<svg id=\"phases\" class=\"chart\" xmlns=\"{SVG_NS}\" viewBox=\"0 0 1000 100\" \
         role=\"img\" aria-labelledby=\"phases-title\" {SVG_TEXT}>\n\
         <title id=\"phases-title\">Time to restore by phase: {} in total</title>\n\
         <rect x=\"0\" y=\"6\" width=\"1000\" height=\"34\" rx=\"4\" fill=\"#eff2f5\"/>\n",
        esc(&human_seconds(total))
    );
    if total > 0.0 {
        let mut x = 0.0;
        for ((name, _, secs), colour) in phase_list(phases).into_iter().zip(PHASE_COLOURS) {
            let width = WIDTH * secs.max(0.0) / total;
            if width > 0.0 {
                put!(
                    out,
                    "<rect class=\"phase\" x=\"{x:.1}\" y=\"6\" width=\"{width:.1}\" height=\"34\" \
                     fill=\"{colour}\"><title>{}: {} ({})</title></rect>\n",
                    esc(name),
                    esc(&human_seconds(secs)),
                    esc(&share(secs, total))
                );
            }
            x += width;
        }
    } else {
        out.push_str(
            "<text x=\"500\" y=\"28\" text-anchor=\"middle\">no phase time recorded</text>\n",
        );
    }
    phase_legend(out, phases, total);
    out.push_str("</svg>\n");
}

fn phase_legend(out: &mut String, phases: &Phases, total: f64) {
    for (i, ((name, _, secs), colour)) in phase_list(phases)
        .into_iter()
        .zip(PHASE_COLOURS)
        .enumerate()
    {
        let x = 200.0 * i as f64;
        put!(
            out,
            "<rect x=\"{x:.0}\" y=\"56\" width=\"14\" height=\"14\" rx=\"2\" fill=\"{colour}\"/>\
             <text x=\"{:.0}\" y=\"68\" font-weight=\"600\">{}</text>\
             <text x=\"{:.0}\" y=\"88\">{:.2} s · {}</text>\n",
            x + 20.0,
            esc(name),
            x + 20.0,
            secs,
            esc(&share(secs, total))
        );
    }
}

/// One value axis of the trend: from zero to a round duration, in at most
/// five steps a person would pick.
#[derive(Debug, Clone, Copy)]
struct Axis {
    max: f64,
    step: f64,
}

impl Axis {
    /// Steps are whole seconds, minutes, hours and days, so tick labels read
    /// `30 min`, `1 h`, not `1728 s`.
    const STEPS: [f64; 27] = [
        0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0,
        3600.0, 7200.0, 10800.0, 21600.0, 43200.0, 86400.0, 172800.0, 432000.0, 864000.0,
        1728000.0, 4320000.0, 8640000.0,
    ];

    /// A little headroom keeps an objective equal to the largest value off
    /// the plot's frame, where its dashes would vanish.
    fn fit(values: impl Iterator<Item = f64>) -> Axis {
        let top = values.filter(|v| v.is_finite()).fold(0.0, f64::max) * 1.08;
        let top = if top > 0.0 { top } else { 1.0 };
        // The epsilon keeps 0.3 / 0.1 = 3.0000000000000004 at three steps.
        let steps_for = |step: f64| (top / step - 1e-9).ceil().max(1.0);
        let step = Self::STEPS
            .into_iter()
            .find(|&s| steps_for(s) <= 5.0)
            .unwrap_or_else(|| (top / 5.0 / 86400.0).ceil() * 86400.0);
        Axis {
            max: steps_for(step) * step,
            step,
        }
    }

    fn ticks(self) -> impl Iterator<Item = f64> {
        let n = (self.max / self.step).round() as u32;
        (0..=n).map(move |k| f64::from(k) * self.step)
    }
}

/// The trend's plot area in SVG units (the whole chart is 1000 × 320).
struct Plot {
    left: f64,
    right: f64,
    top: f64,
    bottom: f64,
}

const TREND: Plot = Plot {
    left: 90.0,
    right: 910.0,
    top: 40.0,
    bottom: 250.0,
};

impl Plot {
    /// Runs are evenly spaced, not placed by date: drills run on a
    /// schedule, and a gap in time would squeeze the runs that matter.
    fn x(&self, i: usize, n: usize) -> f64 {
        if n < 2 {
            (self.left + self.right) / 2.0
        } else {
            self.left + (self.right - self.left) * i as f64 / (n - 1) as f64
        }
    }

    fn y(&self, value: f64, axis: Axis) -> f64 {
        let v = if value.is_finite() {
            value.clamp(0.0, axis.max)
        } else {
            0.0
        };
        self.bottom - (self.bottom - self.top) * v / axis.max
    }
}

/// One trend series, for drawing.
struct Series {
    class: &'static str,
    label: &'static str,
    colour: &'static str,
    axis: Axis,
    objective: Option<f64>,
    value: fn(&TrendPoint) -> f64,
}

/// The RTO/RPO trend of `points` as an inline SVG figure (the dashboard's).
pub(crate) fn trend_chart(
    points: &[TrendPoint],
    rto_objective: Option<f64>,
    rpo_objective: Option<f64>,
) -> String {
    let mut out = String::new();
    trend_svg(&mut out, points, rto_objective, rpo_objective);
    out
}

/// RTO and RPO differ by orders of magnitude (minutes against hours), so
/// each has its own axis: RTO on the left, RPO on the right, each in its
/// series' colour.
fn trend_svg(
    out: &mut String,
    points: &[TrendPoint],
    rto_objective: Option<f64>,
    rpo_objective: Option<f64>,
) {
    let rto_value: fn(&TrendPoint) -> f64 = |p| p.rto_seconds;
    let rpo_value: fn(&TrendPoint) -> f64 = |p| p.rpo_seconds;
    let rto = Series {
        class: "rto",
        label: "RTO",
        colour: RTO_COLOUR,
        axis: Axis::fit(points.iter().map(rto_value).chain(rto_objective)),
        objective: rto_objective,
        value: rto_value,
    };
    let rpo = Series {
        class: "rpo",
        label: "RPO",
        colour: RPO_COLOUR,
        axis: Axis::fit(points.iter().map(rpo_value).chain(rpo_objective)),
        objective: rpo_objective,
        value: rpo_value,
    };
    put!(
        out,
        "<svg id=\"trend\" class=\"chart\" xmlns=\"{SVG_NS}\" viewBox=\"0 0 1000 320\" \
         role=\"img\" aria-labelledby=\"trend-title\" {SVG_TEXT}>\n\
         <title id=\"trend-title\">RTO and RPO over {} of this drill</title>\n",
        count(points.len() as u64, "run", "runs")
    );
    trend_axes(out, &rto, &rpo);
    trend_dates(out, points);
    objective_line(out, &rto, true);
    objective_line(out, &rpo, false);
    trend_series(out, points, &rto);
    trend_series(out, points, &rpo);
    if points.len() < 2 {
        put!(
            out,
            "<text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"middle\" font-style=\"italic\">\
             first run: no trend yet</text>\n",
            (TREND.left + TREND.right) / 2.0,
            TREND.top - 16.0
        );
    }
    trend_legend(out);
    out.push_str("</svg>\n");
}

fn trend_axes(out: &mut String, left: &Series, right: &Series) {
    let p = &TREND;
    for v in left.axis.ticks() {
        let y = p.y(v, left.axis);
        put!(
            out,
            "<line x1=\"{:.0}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{GRID_COLOUR}\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{}\">{}</text>\n",
            p.left,
            p.right,
            p.left - 8.0,
            y + 4.0,
            left.colour,
            esc(&human_seconds(v))
        );
    }
    for v in right.axis.ticks() {
        let y = p.y(v, right.axis);
        put!(
            out,
            "<line x1=\"{:.0}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"{AXIS_COLOUR}\"/>\
             <text x=\"{:.0}\" y=\"{:.1}\" fill=\"{}\">{}</text>\n",
            p.right,
            p.right + 5.0,
            p.right + 8.0,
            y + 4.0,
            right.colour,
            esc(&human_seconds(v))
        );
    }
    put!(
        out,
        "<path d=\"M{l:.0} {t:.0}V{b:.0}H{r:.0}V{t:.0}\" fill=\"none\" stroke=\"{AXIS_COLOUR}\"/>\n\
         <text x=\"{l:.0}\" y=\"{ty:.0}\" text-anchor=\"middle\" font-weight=\"600\" fill=\"{}\">{}</text>\
         <text x=\"{r:.0}\" y=\"{ty:.0}\" text-anchor=\"middle\" font-weight=\"600\" fill=\"{}\">{}</text>\n",
        left.colour,
        left.label,
        right.colour,
        right.label,
        l = p.left,
        r = p.right,
        t = p.top,
        b = p.bottom,
        ty = p.top - 16.0,
    );
}

/// Date and time on two lines under a handful of runs: every run's label
/// would overlap past a dozen runs.
fn trend_dates(out: &mut String, points: &[TrendPoint]) {
    let n = points.len();
    let mut shown: Vec<usize> = if n <= 6 {
        (0..n).collect()
    } else {
        (0..=5).map(|k| k * (n - 1) / 5).collect()
    };
    shown.dedup();
    for i in shown {
        let x = TREND.x(i, n);
        let at = points[i].started_at;
        put!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>\
             <text x=\"{x:.1}\" y=\"{:.0}\" text-anchor=\"middle\">{}</text>\n",
            TREND.bottom + 18.0,
            at.format("%Y-%m-%d"),
            TREND.bottom + 34.0,
            at.format("%H:%M UTC")
        );
    }
}

/// Objectives are today's, drawn across all runs: the trend does not record
/// what the objective was back then.
fn objective_line(out: &mut String, series: &Series, label_left: bool) {
    let Some(objective) = series.objective.filter(|o| o.is_finite() && *o >= 0.0) else {
        return;
    };
    let y = TREND.y(objective, series.axis);
    let (x, anchor) = if label_left {
        (TREND.left + 6.0, "start")
    } else {
        (TREND.right - 6.0, "end")
    };
    put!(
        out,
        "<line class=\"objective {}-objective\" x1=\"{:.0}\" x2=\"{:.0}\" y1=\"{y:.1}\" y2=\"{y:.1}\" \
         stroke=\"{}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/>\
         <text x=\"{x:.0}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"{}\" {HALO}>{} objective {}</text>\n",
        series.class,
        TREND.left,
        TREND.right,
        series.colour,
        y - 5.0,
        series.colour,
        series.label,
        esc(&human_seconds(objective))
    );
}

/// Runs that did not pass are hollow, so a fast but failed restore does
/// not read as a good one.
fn trend_series(out: &mut String, points: &[TrendPoint], series: &Series) {
    let n = points.len();
    let coords: Vec<(f64, f64)> = points
        .iter()
        .enumerate()
        .map(|(i, p)| (TREND.x(i, n), TREND.y((series.value)(p), series.axis)))
        .collect();
    if coords.len() >= 2 {
        let line = coords
            .iter()
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect::<Vec<_>>()
            .join(" ");
        put!(
            out,
            "<polyline class=\"{}\" points=\"{line}\" fill=\"none\" stroke=\"{}\" \
             stroke-width=\"2.5\" stroke-linejoin=\"round\"/>\n",
            series.class,
            series.colour
        );
    }
    for ((x, y), p) in coords.iter().zip(points) {
        let fill = if p.verdict == Verdict::Passed {
            series.colour
        } else {
            "#ffffff"
        };
        let tip = format!(
            "{}: {} {}, {}",
            fmt_time(p.started_at),
            series.label,
            human_seconds((series.value)(p)),
            verdict_label(p.verdict).to_lowercase()
        );
        put!(
            out,
            "<circle class=\"{}-point\" cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"{fill}\" \
             stroke=\"{}\" stroke-width=\"2\"><title>{}</title></circle>\n",
            series.class,
            series.colour,
            esc(&tip)
        );
    }
}

fn trend_legend(out: &mut String) {
    put!(
        out,
        "<g transform=\"translate(90 306)\">\
         <line x1=\"0\" x2=\"28\" y1=\"-4\" y2=\"-4\" stroke=\"{RTO_COLOUR}\" stroke-width=\"2.5\"/>\
         <circle cx=\"14\" cy=\"-4\" r=\"4\" fill=\"{RTO_COLOUR}\"/>\
         <text x=\"36\" y=\"0\">RTO, time to restore (left axis)</text>\
         <line x1=\"290\" x2=\"318\" y1=\"-4\" y2=\"-4\" stroke=\"{RPO_COLOUR}\" stroke-width=\"2.5\"/>\
         <circle cx=\"304\" cy=\"-4\" r=\"4\" fill=\"{RPO_COLOUR}\"/>\
         <text x=\"326\" y=\"0\">RPO, data age (right axis)</text>\
         <line x1=\"540\" x2=\"568\" y1=\"-4\" y2=\"-4\" stroke=\"{AXIS_COLOUR}\" stroke-width=\"1.5\" \
         stroke-dasharray=\"6 4\"/>\
         <text x=\"576\" y=\"0\">objective</text>\
         <circle cx=\"670\" cy=\"-4\" r=\"4.5\" fill=\"#ffffff\" stroke=\"{AXIS_COLOUR}\" stroke-width=\"2\"/>\
         <text x=\"682\" y=\"0\">run did not pass</text>\
         </g>\n"
    );
}

#[cfg(test)]
mod tests {
    use super::super::report::{Cleanup, Failure, Rpo, Rto, SCHEMA};
    use super::*;

    const SCRIPT_SUMMARY: &str = "probe said <script>alert('x')</script> & \"done\"";
    const PIPE_SUMMARY: &str = "a | b\nsecond line";

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("an RFC 3339 time")
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    fn backup(n: u128, name: &str, kind: &str, revision: Option<i64>) -> BackupUnderTest {
        BackupUnderTest {
            backup_id: id(n),
            name: name.into(),
            kind: kind.into(),
            snapshot_time: at("2025-06-01T00:00:00Z"),
            etcd_revision: revision,
            manifest_sha256: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                .into(),
            retain_until: Some(at("2025-09-01T00:00:00Z")),
            bytes: 512 * 1024 * 1024,
            objects: 1200,
        }
    }

    fn check(backup: u128, source: &str, name: &str, status: CheckStatus, summary: &str) -> Check {
        Check {
            backup_id: id(backup),
            source: source.into(),
            name: name.into(),
            status,
            seconds: 1.25,
            summary: summary.into(),
            evidence: serde_json::json!({ "count": 3 }),
        }
    }

    fn point(n: u128, day: u32, rto: f64, rpo: f64, verdict: Verdict) -> TrendPoint {
        TrendPoint {
            drill_id: id(n),
            started_at: at(&format!("2025-06-{day:02}T02:00:00Z")),
            rto_seconds: rto,
            rpo_seconds: rpo,
            verdict,
        }
    }

    /// A scheduled drill of three backups that passed, with five runs of
    /// trend, the last one this.
    fn passed() -> Report {
        Report {
            schema: SCHEMA.into(),
            drill_id: id(100),
            drill: "nightly-prod".into(),
            trigger: "scheduled".into(),
            job_id: Some(id(7)),
            run_by: "drctl-server-0".into(),
            drctl_version: "0.1.0".into(),
            repository: "s3://dr-backups/prod".into(),
            started_at: at("2025-06-05T02:00:00Z"),
            finished_at: at("2025-06-05T02:05:12.400Z"),
            backups: vec![
                backup(1, "etcd-hourly", "etcd", Some(123_456)),
                backup(2, "resources-hourly", "resources", None),
                backup(3, "pg-data", "volume", None),
            ],
            rpo: Rpo {
                seconds: 11_520.0,
                objective_seconds: Some(14_400.0),
                result: Objective::Pass,
                max_gap_30d_seconds: Some(21_700.0),
                max_gap_name: Some("etcd-hourly".into()),
                max_gap_ended_at: Some(at("2025-05-20T06:00:00Z")),
            },
            rto: Rto {
                seconds: 312.4,
                objective_seconds: Some(900.0),
                result: Objective::Pass,
                phases: Phases {
                    plan: 1.2,
                    fetch_decrypt: 120.5,
                    write: 150.3,
                    start: 20.4,
                    checks: 20.0,
                },
                bytes: 1536 * 1024 * 1024,
                objects: 3600,
                bytes_per_second: 5.2 * 1024.0 * 1024.0,
                objects_per_second: 11.5,
            },
            checks: vec![
                check(
                    1,
                    "etcd",
                    "revision",
                    CheckStatus::Passed,
                    "revision 123456",
                ),
                check(1, "etcd", "hashkv", CheckStatus::Passed, "hash matches"),
                check(
                    2,
                    "resources",
                    "api_object_counts",
                    CheckStatus::Passed,
                    "412 objects",
                ),
                check(
                    2,
                    "resources",
                    "object_digests",
                    CheckStatus::Passed,
                    PIPE_SUMMARY,
                ),
                check(
                    2,
                    "resources",
                    "readiness",
                    CheckStatus::NotObservable,
                    "no controllers",
                ),
                check(
                    3,
                    "volume",
                    "file_digests",
                    CheckStatus::Passed,
                    "1200 files",
                ),
                check(3, "volume", "probe", CheckStatus::Passed, SCRIPT_SUMMARY),
            ],
            verdict: Verdict::Passed,
            failure: None,
            cleanup: Cleanup {
                result: "removed".into(),
                kept_until: None,
                scratch: vec!["/var/lib/drctl/drill/0190".into(), "drill-0190".into()],
                errors: Vec::new(),
            },
            trend: vec![
                point(96, 1, 290.0, 10_800.0, Verdict::Passed),
                point(97, 2, 305.5, 12_000.0, Verdict::Passed),
                point(98, 3, 950.0, 9_000.0, Verdict::Failed),
                point(99, 4, 300.1, 11_000.0, Verdict::Passed),
                point(100, 5, 312.4, 11_520.0, Verdict::Passed),
            ],
        }
    }

    /// A manual first run that failed writing a volume and kept its scratch.
    fn failed() -> Report {
        let mut r = passed();
        r.trigger = "manual".into();
        r.job_id = None;
        r.verdict = Verdict::Failed;
        r.rto.result = Objective::Breach;
        r.failure = Some(Failure {
            stage: "write".into(),
            backup_id: Some(id(3)),
            kind: "integrity".into(),
            reason: "pack 3f2a failed authentication".into(),
        });
        r.checks.push(check(
            3,
            "volume",
            "mount",
            CheckStatus::Skipped,
            "write failed",
        ));
        r.cleanup = Cleanup {
            result: "kept".into(),
            kept_until: Some(at("2025-06-06T02:00:00Z")),
            scratch: vec!["drill-0190".into()],
            errors: vec!["namespace drill-0190: forbidden".into()],
        };
        r.trend = vec![point(100, 5, 312.4, 11_520.0, Verdict::Failed)];
        r
    }

    fn without_svg_namespace(html: &str) -> String {
        html.replace(&format!("xmlns=\"{SVG_NS}\""), "")
    }

    /// A tag-balance check: enough to catch a renderer that forgets to
    /// close what it opens.
    fn assert_balanced(html: &str) {
        const VOID: [&str; 2] = ["meta", "br"];
        let mut open: Vec<&str> = Vec::new();
        let mut rest = html;
        while let Some(start) = rest.find('<') {
            let after = &rest[start + 1..];
            let end = after.find('>').expect("every tag is closed");
            let tag = &after[..end];
            rest = &after[end + 1..];
            if tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                assert_eq!(open.pop(), Some(name), "closing </{name}>");
                continue;
            }
            let name = tag.split_whitespace().next().unwrap_or(tag);
            if !VOID.contains(&name) {
                open.push(name);
            }
        }
        assert!(open.is_empty(), "left open: {open:?}");
    }

    #[test]
    fn markdown_names_the_verdict_and_every_check() {
        let r = passed();
        let md = markdown(&r);
        assert!(md.starts_with("# Drill nightly-prod: PASSED\n"), "{md}");
        for c in &r.checks {
            assert!(md.contains(&c.name), "check {} missing", c.name);
        }
        for section in [
            "## Summary",
            "## RPO",
            "## RTO",
            "## Backups",
            "## Checks",
            "## Cleanup",
            "## Trend",
        ] {
            assert!(md.contains(section), "{section} missing");
        }
        assert!(!md.contains("## Failure"));
        assert!(md.contains("3 h 12 min"));
        assert!(md.contains("9f86d081884c7d65…"));
        assert!(!md.contains("9f86d081884c7d659"));
        assert!(md.contains(
            "| Fetch & decrypt | reading packs from the store, decrypting | 120.50 | 38.6 % |"
        ));
    }

    #[test]
    fn markdown_keeps_cells_in_their_row() {
        let md = markdown(&passed());
        assert!(md.contains("a \\| b<br>second line"), "{md}");
        // Every row of a table has as many unescaped pipes as its header.
        let mut expected = None;
        for line in md.lines() {
            if !line.starts_with('|') {
                expected = None;
                continue;
            }
            let pipes = line
                .replace("\\\\", "")
                .replace("\\|", "")
                .matches('|')
                .count();
            assert_eq!(*expected.get_or_insert(pipes), pipes, "row {line}");
        }
    }

    #[test]
    fn html_escapes_report_text() {
        let page = html(&passed());
        assert!(page.contains(
            "probe said &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;done&quot;"
        ));
        assert!(!page.to_lowercase().contains("<script"));
    }

    #[test]
    fn html_fetches_nothing() {
        let page = html(&passed());
        assert_eq!(
            page.matches("xmlns=\"http://www.w3.org/2000/svg\"").count(),
            2
        );
        let rest = without_svg_namespace(&page);
        assert!(
            !rest.contains("http://"),
            "http:// outside the SVG namespace"
        );
        assert!(
            !rest.contains("https://"),
            "https:// outside the SVG namespace"
        );
        for fetch in [
            "src=", "href=", "url(", "@import", "<link", "<img", "<iframe",
        ] {
            assert!(!rest.contains(fetch), "{fetch} in the page");
        }
    }

    #[test]
    fn html_marks_verdict_and_figures() {
        let page = html(&passed());
        assert!(page.contains("data-verdict=\"passed\""));
        assert!(page.contains("<svg id=\"phases\""));
        assert!(page.contains("<svg id=\"trend\""));
        assert!(page.contains("<polyline class=\"rto\""));
        assert!(page.contains("<polyline class=\"rpo\""));
        assert_eq!(page.matches("class=\"rto-point\"").count(), 5);
        assert_eq!(page.matches("class=\"rpo-point\"").count(), 5);
        assert_eq!(page.matches("class=\"phase\"").count(), 5);
        assert!(page.contains("rto-objective"));
        assert!(page.contains("rpo-objective"));
        assert!(!page.contains("first run: no trend yet"));
        assert!(!page.contains("NaN"));
        assert_balanced(&page);
    }

    #[test]
    fn failure_is_shown_in_both() {
        let r = failed();
        let md = markdown(&r);
        assert!(md.starts_with("# Drill nightly-prod: FAILED\n"));
        assert!(md.contains("## Failure"));
        assert!(md.contains("- **Stage:** write"));
        assert!(md.contains("- **Kind:** integrity"));
        assert!(md.contains("pack 3f2a failed authentication"));
        assert!(md.contains("(pg-data, volume)"));
        assert!(md.contains("**breach**"));
        assert!(md.contains("namespace drill-0190: forbidden"));
        assert!(md.contains("2025-06-06 02:00:00 UTC"));

        let page = html(&r);
        assert!(page.contains("data-verdict=\"failed\""));
        assert!(page.contains("<section id=\"failure\" class=\"alert\">"));
        assert!(page.contains("first run: no trend yet"));
        assert!(!page.contains("<polyline"));
        assert_eq!(page.matches("class=\"rto-point\"").count(), 1);
        assert_balanced(&page);
    }

    #[test]
    fn partial_failure_is_amber() {
        let mut r = passed();
        r.verdict = Verdict::PartiallyFailed;
        assert!(markdown(&r).starts_with("# Drill nightly-prod: PARTIALLY FAILED\n"));
        assert!(html(&r).contains("data-verdict=\"partially_failed\""));
    }

    #[test]
    fn a_report_without_trend_draws_this_run() {
        let mut r = passed();
        r.trend.clear();
        r.rto.phases = Phases::default();
        let page = html(&r);
        assert_eq!(page.matches("class=\"rpo-point\"").count(), 1);
        assert!(page.contains("first run: no trend yet"));
        assert!(page.contains("no phase time recorded"));
        assert!(!page.contains("NaN") && !page.contains("\"inf"));
        assert!(markdown(&r).contains("(this run)"));
        assert_balanced(&page);
    }

    #[test]
    fn human_seconds_reads_like_speech() {
        let cases = [
            (0.0, "0 s"),
            (0.42, "0.42 s"),
            (1.5, "1.5 s"),
            (42.34, "42.3 s"),
            (59.96, "1 min"),
            (75.0, "1 min 15 s"),
            (3599.6, "1 h"),
            (11_520.0, "3 h 12 min"),
            (90_000.0, "25 h"),
            (183_600.0, "2 d 3 h"),
            (-75.0, "-1 min 15 s"),
            (-0.001, "0 s"),
            (f64::NAN, "n/a"),
        ];
        for (seconds, expected) in cases {
            assert_eq!(human_seconds(seconds), expected, "{seconds}");
        }
    }

    #[test]
    fn axes_end_on_round_durations() {
        let axis = Axis::fit([312.4, 900.0].into_iter());
        assert_eq!((axis.step, axis.max), (300.0, 1200.0));
        let axis = Axis::fit([0.25].into_iter());
        assert_eq!((axis.step, axis.ticks().count()), (0.1, 4));
        let axis = Axis::fit(std::iter::empty());
        assert_eq!(axis.ticks().count(), 6);
    }
}
