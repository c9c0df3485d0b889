//! The dashboard: server-rendered HTML under `/ui`, for operators who are
//! not at a terminal. No JavaScript and no build chain: each page is one
//! response, styled inline, its figures inline SVG, under a Content
//! Security Policy that allows nothing else.
//!
//! It reads what the API reads (the same catalog views, so a page shows
//! the numbers `/api/v1` and `-o json` give) and needs the API's tokens:
//! `viewer` is enough. A browser signs in once at `/ui/login`; the token
//! goes into an HttpOnly, SameSite=Strict cookie scoped to `/ui`. It shows
//! no secret and no object body: names, sizes, times, verdicts.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use serde::Deserialize;

use super::Shared;
use super::http::{Role, role};
use crate::drill::render::{esc, human_seconds};

type S = State<Arc<Shared>>;

const COOKIE: &str = "drctl_ui";
/// Backups per page: a page stays fast with any number in the catalog.
const PAGE: i64 = 100;

pub(super) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/backups", get(backups))
        .route("/ui/drills", get(drills))
        .route("/ui/drills/{id}", get(drill_report))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
}

/// The token a request presents: its bearer token, else the dashboard's
/// cookie.
fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(t) = super::http::bearer(headers) {
        return Some(t.to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The viewer's role, or the sign-in page with why.
async fn signed_in(shared: &Shared, headers: &HeaderMap) -> Result<Role, Response> {
    match role(shared, presented(headers).as_deref()).await {
        Ok(r) => Ok(r),
        Err(refused) => {
            let why = if presented(headers).is_none() {
                "Sign in with a viewer or operator token.".to_string()
            } else {
                format!("{} ({})", refused.message, refused.guidance)
            };
            let status = if refused.status == StatusCode::UNAUTHORIZED {
                StatusCode::UNAUTHORIZED
            } else {
                refused.status
            };
            Err(login_form(status, &why))
        }
    }
}

/// A page: the frame, the navigation, `body`.
fn page(title: &str, active: &str, role: Option<Role>, body: &str) -> Response {
    page_with(StatusCode::OK, title, active, role, body)
}

fn page_with(
    status: StatusCode,
    title: &str,
    active: &str,
    role: Option<Role>,
    body: &str,
) -> Response {
    let mut nav = String::new();
    for (href, label) in [
        ("/ui", "Overview"),
        ("/ui/backups", "Backups"),
        ("/ui/drills", "Drills"),
    ] {
        let _ = write!(
            nav,
            "<a href=\"{href}\"{}>{label}</a>",
            if label == active {
                " aria-current=\"page\""
            } else {
                ""
            }
        );
    }
    let who = match role {
        Some(r) => format!(
            "<form method=\"post\" action=\"/ui/logout\"><span>signed in: {}</span> \
             <button>sign out</button></form>",
            if r == Role::Operator {
                "operator"
            } else {
                "viewer"
            }
        ),
        None => String::new(),
    };
    let html = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · drctl</title><style>{CSS}</style></head>\n<body>\
         <header><strong>drctl</strong><nav>{nav}</nav>{who}</header>\n<main>\
         <h1>{}</h1>\n{body}</main></body></html>\n",
        esc(title),
        esc(title)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; style-src 'unsafe-inline'; img-src data:; \
                 form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        html,
    )
        .into_response()
}

const CSS: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}\
header{display:flex;gap:1.5em;align-items:center;padding:.6em 1.2em;background:#24292f;color:#fff}\
header nav a{color:#d0d7de;margin-right:1em;text-decoration:none}\
header nav a[aria-current]{color:#fff;font-weight:600;border-bottom:2px solid #fff}\
header form{margin-left:auto;font-size:.9em}\
main{padding:1em 1.5em;max-width:1400px}\
table{border-collapse:collapse;width:100%;background:#fff;font-size:.9em;margin-bottom:1.5em}\
th,td{border-bottom:1px solid #d0d7de;padding:.35em .6em;text-align:left;white-space:nowrap}\
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}\
.cards{display:flex;gap:1em;flex-wrap:wrap;margin-bottom:1.5em}\
.card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:.7em 1em;min-width:12em}\
.card b{display:block;font-size:1.2em;margin-top:.2em}\
.ok{color:#1a7f37}.bad{color:#cf222e}.warn{color:#9a6700}.muted{color:#656d76}\
.chart{max-width:900px;background:#fff;border:1px solid #d0d7de}\
form.login{background:#fff;border:1px solid #d0d7de;padding:1em;max-width:28em}\
input[type=password]{width:100%;padding:.4em;margin:.5em 0}\
.pager a{margin-right:1em}";

fn login_form(status: StatusCode, why: &str) -> Response {
    let body = format!(
        "<p class=\"{}\">{}</p><form class=\"login\" method=\"post\" action=\"/ui/login\">\
         <label for=\"token\">API token (viewer or operator)</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\
         <button id=\"sign-in\">Sign in</button></form>",
        if status == StatusCode::OK {
            "muted"
        } else {
            "bad"
        },
        esc(why)
    );
    page_with(status, "Sign in", "", None, &body)
}

async fn login_page() -> Response {
    login_form(StatusCode::OK, "Sign in with a viewer or operator token.")
}

#[derive(Deserialize)]
struct Login {
    token: String,
}

async fn login(State(shared): S, Form(form): Form<Login>) -> Response {
    let token = form.token.trim();
    // Only what a cookie value carries as it is.
    if token.is_empty()
        || !token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
    {
        return login_form(
            StatusCode::UNAUTHORIZED,
            "the token is not known (use a token whose SHA-256 is in server.tokens_file)",
        );
    }
    match role(&shared, Some(token)).await {
        Ok(_) => {
            let secure = if shared.config().server.tls.is_some() {
                "; Secure"
            } else {
                ""
            };
            (
                StatusCode::SEE_OTHER,
                [
                    (header::LOCATION, "/ui".to_string()),
                    (
                        header::SET_COOKIE,
                        format!(
                            "{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict; \
                             Max-Age=43200{secure}"
                        ),
                    ),
                ],
            )
                .into_response()
        }
        Err(r) => login_form(r.status, &format!("{} ({})", r.message, r.guidance)),
    }
}

async fn logout() -> Response {
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/ui/login".to_string()),
            (
                header::SET_COOKIE,
                format!("{COOKIE}=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0"),
            ),
        ],
    )
        .into_response()
}

fn when(t: Option<DateTime<Utc>>) -> String {
    t.map_or("—".into(), |t| t.format("%Y-%m-%d %H:%M UTC").to_string())
}

fn bytes(n: Option<u64>) -> String {
    n.map_or("—".into(), crate::cli::progress::human)
}

/// A state as a word in its colour.
fn state(s: &str) -> String {
    let class = match s {
        "complete" | "succeeded" | "passed" | "ok" => "ok",
        "failed" | "interrupted" | "missed" => "bad",
        "partial" | "running" | "queued" | "skipped" => "warn",
        _ => "muted",
    };
    format!("<span class=\"{class}\">{}</span>", esc(s))
}

async fn overview(State(shared): S, headers: HeaderMap) -> Response {
    let role = match signed_in(&shared, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let now = shared.clock.now();
    let mut b = String::from("<div class=\"cards\">");
    let leader = shared.catalog.lease_holder(super::LEADER_LEASE).await;
    let (catalog_ok, leader_text) = match &leader {
        Ok(Some((holder, _))) => (true, format!("<b class=\"ok\">{}</b>", esc(holder))),
        Ok(None) => (true, "<b class=\"bad\">none</b>".to_string()),
        Err(_) => (false, "<b class=\"bad\">unknown</b>".to_string()),
    };
    let _ = write!(
        b,
        "<div class=\"card\" id=\"leader\">Leader{leader_text}</div>"
    );
    let storage = super::http::store_answers(&shared).await;
    let _ = write!(
        b,
        "<div class=\"card\" id=\"storage\">Storage ({}){}</div>",
        esc(&shared.repo.store.location()),
        match &storage {
            Ok(()) => "<b class=\"ok\">answers</b>".to_string(),
            Err(e) => format!("<b class=\"bad\">{}</b>", esc(e)),
        }
    );
    let queue = shared.catalog.queue_stats(shared.repo_id).await;
    let _ = write!(
        b,
        "<div class=\"card\" id=\"catalog\">Catalog{}</div>",
        if catalog_ok && queue.is_ok() {
            "<b class=\"ok\">answers</b>"
        } else {
            "<b class=\"bad\">unreachable</b>"
        }
    );
    if let Ok((queued, running, oldest)) = queue {
        let _ = write!(
            b,
            "<div class=\"card\" id=\"queue\">Job queue<b>{queued} queued, {running} running</b>\
             <span class=\"muted\">oldest waiting {}</span></div>",
            oldest.map_or("—".into(), human_seconds)
        );
    }
    b.push_str("</div>\n<h2>Schedules</h2>\n");
    match super::views::schedules(&shared.catalog, shared.repo_id).await {
        Ok(list) if list.is_empty() => b.push_str("<p class=\"muted\">No schedules.</p>"),
        Ok(list) => {
            b.push_str(
                "<table id=\"schedules\"><tr><th>name</th><th>kind</th><th>cron</th>\
                 <th>next run</th><th>last run</th><th>last success</th>\
                 <th class=\"num\">RPO now</th><th class=\"num\">RPO objective</th></tr>\n",
            );
            for s in &list {
                let rpo_now = s
                    .last_success
                    .map(|t| (now - t).num_milliseconds().max(0) as f64 / 1000.0);
                let breach = matches!((rpo_now, s.rpo_seconds), (Some(n), Some(o)) if n > o as f64)
                    || (rpo_now.is_none() && s.last_run.is_some());
                let _ = writeln!(
                    b,
                    "<tr data-schedule=\"{}\"><td>{}</td><td>{}</td><td>{} ({}){}</td>\
                     <td>{}</td><td>{}</td><td>{}</td><td class=\"num {}\">{}</td>\
                     <td class=\"num\">{}</td></tr>",
                    esc(&s.name),
                    esc(&s.name),
                    s.kind,
                    esc(&s.cron),
                    esc(&s.time_zone),
                    if s.paused {
                        " <span class=\"warn\">paused</span>"
                    } else {
                        ""
                    },
                    when(s.next_run),
                    s.last_run.as_ref().map_or("—".into(), |r| state(&r.state)),
                    when(s.last_success),
                    if breach { "bad" } else { "ok" },
                    rpo_now.map_or("—".into(), human_seconds),
                    s.rpo_seconds
                        .map_or("—".into(), |o| human_seconds(o as f64)),
                );
            }
            b.push_str("</table>\n");
        }
        Err(e) => {
            let _ = write!(b, "<p class=\"bad\">{}</p>", esc(e.what()));
        }
    }
    page("Overview", "Overview", Some(role), &b)
}

#[derive(Deserialize)]
struct BackupsQuery {
    kind: Option<String>,
    name: Option<String>,
    page: Option<i64>,
}

async fn backups(State(shared): S, headers: HeaderMap, Query(q): Query<BackupsQuery>) -> Response {
    let role = match signed_in(&shared, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let kind = q.kind.filter(|k| !k.is_empty());
    let name = q.name.filter(|n| !n.is_empty());
    let page_no = q.page.unwrap_or(1).max(1);
    let got = shared
        .catalog
        .backups_page(
            shared.repo_id,
            kind.as_deref(),
            name.as_deref(),
            (page_no - 1) * PAGE,
            PAGE,
        )
        .await;
    let (rows, total) = match got {
        Ok(x) => x,
        Err(e) => {
            return page(
                "Backups",
                "Backups",
                Some(role),
                &format!("<p class=\"bad\">{}</p>", esc(e.what())),
            );
        }
    };
    let pages = ((total + PAGE - 1) / PAGE).max(1);
    let mut b = format!(
        "<p id=\"count\">{total} backup(s){}{} · page {page_no} of {pages}</p>\n\
         <table id=\"backups\"><tr><th>id</th><th>kind</th><th>name</th><th>status</th>\
         <th>started</th><th class=\"num\">took</th><th class=\"num\">size</th>\
         <th class=\"num\">stored</th><th class=\"num\">dedup</th><th>locked until</th>\
         <th>verified by drill</th></tr>\n",
        kind.as_deref()
            .map(|k| format!(" of kind {}", esc(k)))
            .unwrap_or_default(),
        name.as_deref()
            .map(|n| format!(" named {}", esc(n)))
            .unwrap_or_default(),
    );
    for r in &rows {
        let l: crate::cli::listing::Listed = r.into();
        let dedup = match (l.bytes, l.stored_bytes) {
            (Some(b), Some(s)) if s > 0 => format!("{:.1}×", b as f64 / s as f64),
            _ => "—".into(),
        };
        let _ = writeln!(
            b,
            "<tr data-id=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{dedup}</td><td>{}</td><td>{}</td></tr>",
            l.id,
            esc(&l.short_id),
            esc(&l.kind),
            esc(&l.name),
            state(&l.status),
            when(Some(l.started_at)),
            l.seconds.map_or("—".into(), human_seconds),
            bytes(l.bytes),
            bytes(l.stored_bytes),
            l.retain_until
                .map_or("until deleted".into(), |t| when(Some(t))),
            l.verified_by.map_or("—".into(), |d| format!(
                "<a href=\"/ui/drills/{d}\">{}</a>",
                &d.simple().to_string()[24..]
            )),
        );
    }
    b.push_str("</table>\n<p class=\"pager\">");
    let link = |p: i64, label: &str| {
        let mut q = format!("?page={p}");
        if let Some(k) = &kind {
            q.push_str(&format!("&kind={}", esc(k)));
        }
        if let Some(n) = &name {
            q.push_str(&format!("&name={}", esc(n)));
        }
        format!("<a href=\"/ui/backups{q}\">{label}</a>")
    };
    if page_no > 1 {
        b.push_str(&link(page_no - 1, "← newer"));
    }
    if page_no < pages {
        b.push_str(&link(page_no + 1, "older →"));
    }
    b.push_str("</p>");
    page("Backups", "Backups", Some(role), &b)
}

async fn drills(State(shared): S, headers: HeaderMap) -> Response {
    let role = match signed_in(&shared, &headers).await {
        Ok(r) => r,
        Err(r) => return r,
    };
    let runs = match shared.catalog.drill_runs(shared.repo_id, None, 200).await {
        Ok(r) => r,
        Err(e) => {
            return page(
                "Drills",
                "Drills",
                Some(role),
                &format!("<p class=\"bad\">{}</p>", esc(e.what())),
            );
        }
    };
    let mut b = String::new();
    if runs.is_empty() {
        b.push_str("<p class=\"muted\">No drill has run yet.</p>");
    }
    // Each drill's trend, from its newest report (it carries the runs
    // before it).
    let mut drawn = std::collections::HashSet::new();
    for r in &runs {
        if !drawn.insert(r.drill.clone()) {
            continue;
        }
        if let Ok(report) = shared
            .catalog
            .drill_report(shared.repo_id, &r.id.to_string())
            .await
        {
            let _ = write!(
                b,
                "<h2>{}</h2>\n<figure>{}</figure>\n",
                esc(&r.drill),
                crate::drill::render::trend_chart(
                    &report.trend,
                    r.rto_objective_seconds,
                    r.rpo_objective_seconds
                )
            );
        }
    }
    b.push_str(
        "<h2>Runs</h2>\n<table id=\"drills\"><tr><th>started</th><th>drill</th><th>verdict</th>\
         <th>failed at</th><th class=\"num\">RTO</th><th class=\"num\">objective</th>\
         <th class=\"num\">RPO</th><th class=\"num\">objective</th>\
         <th class=\"num\">checks failed</th><th>report</th></tr>\n",
    );
    for r in &runs {
        let _ = writeln!(
            b,
            "<tr data-id=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td>\
             <td><a href=\"/ui/drills/{}\">report</a></td></tr>",
            r.id,
            when(Some(r.started_at)),
            esc(&r.drill),
            state(&r.verdict),
            r.failure_stage.as_deref().map_or("—".into(), esc),
            human_seconds(r.rto_seconds),
            r.rto_objective_seconds.map_or("—".into(), human_seconds),
            human_seconds(r.rpo_seconds),
            r.rpo_objective_seconds.map_or("—".into(), human_seconds),
            r.checks_failed,
            r.id,
        );
    }
    b.push_str("</table>");
    page("Drills", "Drills", Some(role), &b)
}

/// A drill's own HTML report, as `drctl drill report ID -o html` writes it.
async fn drill_report(State(shared): S, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = signed_in(&shared, &headers).await {
        return r;
    }
    match shared.catalog.drill_report(shared.repo_id, &id).await {
        Ok(report) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/html; charset=utf-8"),
                (
                    header::CONTENT_SECURITY_POLICY,
                    "default-src 'none'; style-src 'unsafe-inline'; img-src data:",
                ),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            crate::drill::render::html(&report),
        )
            .into_response(),
        Err(e) => page_with(
            StatusCode::NOT_FOUND,
            "Drill report",
            "Drills",
            None,
            &format!("<p class=\"bad\">{}</p>", esc(e.what())),
        ),
    }
}
