//! The server's HTTP side: probes, metrics and the JSON API.
//!
//! `/healthz`, `/readyz` and `/metrics` answer anyone who can reach the
//! listener (loopback unless configured): they say nothing a scrape should
//! not see. Everything under `/api/v1/` needs a bearer token from
//! `server.tokens_file`; reading needs `viewer`, changing (pause, resume,
//! run) needs `operator`. Without a tokens file the API refuses every call.
//! The JSON is what the same CLI command prints with `-o json`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{LEADER_LEASE, Shared};
use crate::error::{Error, ErrorKind};

type S = State<Arc<Shared>>;

/// Serves until `stop`: HTTPS when `tls` is given, else plain HTTP.
pub async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
) {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/v1/schedules", get(schedules))
        .route("/api/v1/schedules/{name}", get(schedule))
        .route("/api/v1/schedules/{name}/pause", post(pause))
        .route("/api/v1/schedules/{name}/resume", post(resume))
        .route("/api/v1/schedules/{name}/run", post(run_now))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/backups", get(backups))
        .merge(super::ui::routes())
        .with_state(shared);
    if let Some(acceptor) = tls {
        return super::tls::serve(listener, acceptor, app, stop).await;
    }
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "the HTTP listener failed");
    }
}

/// A JSON body with a status.
fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_string_pretty(value).expect("API values serialise");
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body + "\n",
    )
        .into_response()
}

/// An error as `-o json` prints it, with the status its kind means.
fn error(e: &Error) -> Response {
    let status = match e.kind() {
        ErrorKind::NotFound => StatusCode::NOT_FOUND,
        ErrorKind::Config => StatusCode::BAD_REQUEST,
        ErrorKind::Permission => StatusCode::FORBIDDEN,
        ErrorKind::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    json(status, &e.to_json())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Role {
    Viewer,
    Operator,
}

/// Why a caller is refused: the status, what is wrong, what to do.
pub(super) struct Refused {
    pub status: StatusCode,
    pub message: &'static str,
    pub guidance: &'static str,
}

/// The role of `token` (the request's bearer token, or the dashboard's
/// cookie) by the tokens file, read on each call so a rotated file takes
/// effect at once. The file holds SHA-256 hashes, never tokens.
pub(super) async fn role(shared: &Shared, token: Option<&str>) -> Result<Role, Refused> {
    let refuse = |status, message, guidance| Refused {
        status,
        message,
        guidance,
    };
    let Some(path) = shared.config().server.tokens_file.clone() else {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "the API is off: the server has no tokens file",
            "set server.tokens_file (lines of `ROLE SHA256-HEX`, roles viewer and operator)",
        ));
    };
    let Some(token) = token.map(str::trim).filter(|t| !t.is_empty()) else {
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            "no bearer token",
            "send `Authorization: Bearer TOKEN`",
        ));
    };
    let tokens = match tokio::fs::read_to_string(&path).await {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(path = %path.display(), error = %e, "cannot read server.tokens_file");
            return Err(refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server cannot read its tokens file",
                "see the server's log",
            ));
        }
    };
    role_of(&tokens, token).ok_or(refuse(
        StatusCode::UNAUTHORIZED,
        "the token is not known",
        "use a token whose SHA-256 is in server.tokens_file",
    ))
}

/// The request's bearer token (`Authorization: Bearer …`).
pub(super) fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
}

/// Checks the request's bearer token for role `need`.
async fn authorize(shared: &Shared, headers: &HeaderMap, need: Role) -> Result<(), Response> {
    let refused = match role(shared, bearer(headers)).await {
        Ok(r) if r >= need => return Ok(()),
        Ok(_) => Refused {
            status: StatusCode::FORBIDDEN,
            message: "this token's role (viewer) may only read",
            guidance: "use an operator token to pause, resume or run schedules",
        },
        Err(r) => r,
    };
    let mut r = json(
        refused.status,
        &serde_json::json!({"error": {"kind": "permission", "message": refused.message,
            "guidance": refused.guidance}}),
    );
    if refused.status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            "Bearer".parse().expect("valid header"),
        );
    }
    Err(r)
}

/// The role the tokens file gives `token`: lines `ROLE SHA256-HEX`, `#`
/// comments. The highest role wins when a hash is listed twice.
fn role_of(tokens: &str, token: &str) -> Option<Role> {
    use sha2::Digest;
    let hash = hex::encode(sha2::Sha256::digest(token.as_bytes()));
    tokens
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (role, h) = l.split_once(char::is_whitespace)?;
            if !h.trim().eq_ignore_ascii_case(&hash) {
                return None;
            }
            match role {
                "viewer" => Some(Role::Viewer),
                "operator" => Some(Role::Operator),
                _ => None,
            }
        })
        .max()
}

/// Ready: not shutting down, the catalog and the store answer, and some
/// replica leads the scheduler.
async fn readyz(State(shared): S) -> Response {
    let mut problems = Vec::new();
    if shared.shutting_down.load(Ordering::SeqCst) {
        problems.push("shutting down".to_string());
    }
    match shared.catalog.lease_holder(LEADER_LEASE).await {
        Ok(Some(_)) => {}
        Ok(None) => problems.push("no replica leads the scheduler yet".into()),
        Err(e) => problems.push(format!("catalog: {e}")),
    }
    if let Err(e) = store_answers(&shared).await {
        problems.push(format!("store: {e}"));
    }
    if problems.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "problems": problems}),
        )
    }
}

/// Whether the store answers a read of the repository config in time.
pub(super) async fn store_answers(shared: &Shared) -> Result<(), String> {
    let store = shared.repo.store.clone();
    let probe = tokio::task::spawn_blocking(move || store.head(crate::repo::CONFIG_KEY));
    let answered = match tokio::time::timeout(Duration::from_secs(10), probe).await {
        Err(_) => Err("no answer within 10s".to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(Err(e))) => Err(e.to_string()),
        Ok(Ok(Ok(None))) => Err("the repository config is gone".to_string()),
        Ok(Ok(Ok(Some(_)))) => Ok(()),
    };
    shared.metrics.set_storage(answered.is_ok());
    answered
}

async fn metrics(State(shared): S) -> Response {
    match shared.catalog.queue_stats(shared.repo_id).await {
        Ok((queued, running, oldest)) => shared.metrics.queue(queued, running, oldest),
        Err(e) => tracing::warn!(error = %e, "queue gauges not updated"),
    }
    match shared
        .catalog
        .drill_runs_after(shared.repo_id, shared.metrics.drills_seen())
        .await
    {
        Ok(runs) => shared.metrics.drills(&runs),
        Err(e) => tracing::warn!(error = %e, "drill metrics not updated"),
    }
    match shared.catalog.health_times(shared.repo_id).await {
        Ok((schedules, gc)) => {
            let gc_every = shared
                .config()
                .server
                .gc_cron
                .as_deref()
                .and_then(|c| crate::schedule::Cron::parse(c, "UTC").ok())
                .and_then(|c| c.interval_after(shared.clock.now()))
                .map(|d| d.num_seconds() as f64);
            shared.metrics.health(&schedules, gc, gc_every);
        }
        Err(e) => tracing::warn!(error = %e, "schedule and gc gauges not updated"),
    }
    let _ = store_answers(&shared).await;
    (
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        shared.metrics.encode(),
    )
        .into_response()
}

async fn schedules(State(shared): S, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Viewer).await {
        return r;
    }
    match crate::server::views::schedules(&shared.catalog, shared.repo_id).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

async fn schedule(State(shared): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Viewer).await {
        return r;
    }
    match crate::server::views::describe(&shared.catalog, shared.repo_id, &name).await {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

async fn pause(State(shared): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Operator).await {
        return r;
    }
    match shared
        .catalog
        .pause_schedule(shared.repo_id, &name, "api")
        .await
    {
        Ok(changed) => json(
            StatusCode::OK,
            &serde_json::json!({"schedule": name, "paused": true, "changed": changed}),
        ),
        Err(e) => error(&e),
    }
}

async fn resume(State(shared): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Operator).await {
        return r;
    }
    match shared
        .catalog
        .resume_schedule(shared.repo_id, &name, shared.clock.now())
        .await
    {
        Ok(changed) => json(
            StatusCode::OK,
            &serde_json::json!({"schedule": name, "paused": false, "changed": changed}),
        ),
        Err(e) => error(&e),
    }
}

async fn run_now(State(shared): S, headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Operator).await {
        return r;
    }
    match crate::server::views::run_now(&shared.catalog, shared.repo_id, &name).await {
        Ok(v) => json(StatusCode::ACCEPTED, &v),
        Err(e) => error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct JobsQuery {
    schedule: Option<String>,
    limit: Option<i64>,
}

async fn jobs(State(shared): S, headers: HeaderMap, Query(q): Query<JobsQuery>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Viewer).await {
        return r;
    }
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    match shared
        .catalog
        .jobs(shared.repo_id, q.schedule.as_deref(), limit)
        .await
    {
        Ok(v) => json(StatusCode::OK, &v),
        Err(e) => error(&e),
    }
}

#[derive(Debug, Deserialize)]
struct BackupsQuery {
    kind: Option<String>,
    name: Option<String>,
}

async fn backups(State(shared): S, headers: HeaderMap, Query(q): Query<BackupsQuery>) -> Response {
    if let Err(r) = authorize(&shared, &headers, Role::Viewer).await {
        return r;
    }
    let filter = crate::catalog::ListFilter {
        kind: q.kind,
        name: q.name,
        status: None,
        since: None,
        latest: None,
    };
    match shared.catalog.list_backups(shared.repo_id, &filter).await {
        Ok(rows) => {
            let listed: Vec<crate::cli::listing::Listed> = rows.iter().map(Into::into).collect();
            json(StatusCode::OK, &listed)
        }
        Err(e) => error(&e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_file_gives_the_highest_role_of_a_known_hash_only() {
        use sha2::Digest;
        let h = |t: &str| hex::encode(sha2::Sha256::digest(t.as_bytes()));
        let file = format!(
            "# who may call\nviewer {}\noperator {}\nviewer {}\nadmin {}\n",
            h("v"),
            h("o"),
            h("o"),
            h("a")
        );
        assert_eq!(role_of(&file, "v"), Some(Role::Viewer));
        assert_eq!(role_of(&file, "o"), Some(Role::Operator));
        assert_eq!(role_of(&file, "a"), None, "unknown roles give nothing");
        assert_eq!(role_of(&file, "x"), None);
        assert_eq!(
            role_of(&file, &h("v")),
            None,
            "the hash itself is not a token"
        );
    }
}
