//! A fault-injecting HTTP proxy to put in front of the test S3 server, so
//! tests can see what drctl does when S3 and the network misbehave the way
//! they do in production: `503 SlowDown`, `500 InternalError`, slow answers
//! and connections closed without an answer.
//!
//! Each request gets its fate from a deterministic generator seeded by
//! [`Faults::seed`]: the n-th request the proxy receives always gets the same
//! fate, whatever the interleaving of concurrent requests. Everything not
//! faulted is forwarded unchanged — method, path and query, every header
//! including `Host` (SigV4 signs it), the body streamed — and the answer is
//! relayed back the same way.
//!
//! The proxy runs on a thread of its own with its own tokio runtime, so sync
//! and async tests use it alike, and stops when the [`FaultProxy`] is dropped.

use std::convert::Infallible;
use std::net::TcpListener as StdTcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::sync::{Notify, oneshot};

/// Which share of requests gets which fault, each between 0 and 1.
///
/// `slow_down`, `internal_error` and `drop` exclude each other (their sum
/// must not exceed 1): a request gets at most one of them, and is forwarded
/// when it gets none. `delay` is drawn independently and comes first: a
/// delayed request is then answered, faulted or dropped like any other.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Faults {
    /// Answered `503 Slow Down` with S3's `SlowDown` error body.
    pub slow_down: f64,
    /// Answered `500 Internal Server Error` with S3's `InternalError` body.
    pub internal_error: f64,
    /// Held 200–800 ms before anything else happens to it.
    pub delay: f64,
    /// The connection is closed without an answer once the request head is
    /// read: the client sees the connection closed or reset mid-request.
    pub drop: f64,
    /// Seed of the generator deciding each request's fate.
    pub seed: u64,
}

impl Faults {
    /// No faults: a transparent proxy.
    pub fn none() -> Faults {
        Faults::default()
    }
}

/// What the proxy did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// TCP connections accepted from clients.
    pub connections: u64,
    /// Requests received (every request, faulted or not).
    pub requests: u64,
    /// Requests sent on to the upstream server.
    pub forwarded: u64,
    /// Requests answered `503 SlowDown`.
    pub slow_down: u64,
    /// Requests answered `500 InternalError`.
    pub internal_error: u64,
    /// Requests held back before their fate.
    pub delayed: u64,
    /// Requests whose connection was closed without an answer.
    pub dropped: u64,
    /// Forwarded requests the upstream did not answer (relayed as `502`).
    pub upstream_errors: u64,
}

impl FaultStats {
    /// Requests that failed because of an injected fault (delays excluded).
    pub fn faults(&self) -> u64 {
        self.slow_down + self.internal_error + self.dropped
    }
}

/// A running proxy. Dropping it stops it and closes its connections.
pub struct FaultProxy {
    /// `http://127.0.0.1:PORT`: give this to the client as its endpoint.
    pub endpoint: String,
    state: Arc<State>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) on a random loopback
    /// port, on its own thread with its own tokio runtime. It accepts
    /// connections when this returns.
    pub fn start(upstream: &str, faults: Faults) -> FaultProxy {
        for (name, share) in [
            ("slow_down", faults.slow_down),
            ("internal_error", faults.internal_error),
            ("delay", faults.delay),
            ("drop", faults.drop),
        ] {
            assert!(
                (0.0..=1.0).contains(&share),
                "fault share {name} = {share} is not between 0 and 1"
            );
        }
        assert!(
            faults.slow_down + faults.internal_error + faults.drop <= 1.0 + 1e-9,
            "slow_down + internal_error + drop exceed 1: {faults:?}"
        );
        let upstream_uri: Uri = upstream
            .parse()
            .unwrap_or_else(|e| panic!("upstream {upstream:?} is not a URI: {e}"));
        assert!(
            upstream_uri.scheme_str() == Some("http") && upstream_uri.authority().is_some(),
            "upstream {upstream:?} is not http://host:port"
        );
        let upstream = format!("http://{}", upstream_uri.authority().unwrap());

        // Bound (and so accepting into the backlog) before we return.
        let listener = StdTcpListener::bind("127.0.0.1:0").expect("bind the fault proxy");
        listener
            .set_nonblocking(true)
            .expect("non-blocking listener");
        let endpoint = format!("http://{}", listener.local_addr().unwrap());

        let state = Arc::new(State {
            faults,
            enabled: AtomicBool::new(true),
            next_request: AtomicU64::new(0),
            lose_put_answers: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            clock_offset: AtomicI64::new(0),
            stats: Counters::default(),
        });
        let (shutdown, stop) = oneshot::channel();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("fault-proxy".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the fault proxy");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("register the proxy listener");
                    let _ = ready_tx.send(());
                    accept_loop(listener, thread_state, upstream, stop).await;
                });
                // Dropping the runtime cancels the connection tasks, which
                // closes their sockets.
            })
            .expect("spawn the fault proxy thread");
        ready_rx
            .recv()
            .expect("the fault proxy thread failed to start");
        FaultProxy {
            endpoint,
            state,
            shutdown: Some(shutdown),
            thread: Some(thread),
        }
    }

    /// How many connections and requests were seen, forwarded and faulted.
    pub fn stats(&self) -> FaultStats {
        let c = &self.state.stats;
        let get = |n: &AtomicU64| n.load(Ordering::SeqCst);
        FaultStats {
            connections: get(&c.connections),
            requests: get(&c.requests),
            forwarded: get(&c.forwarded),
            slow_down: get(&c.slow_down),
            internal_error: get(&c.internal_error),
            delayed: get(&c.delayed),
            dropped: get(&c.dropped),
            upstream_errors: get(&c.upstream_errors),
        }
    }

    /// The next `n` object PUTs (whole objects: not parts, not lock
    /// changes) reach the server, which stores them, and then their answers
    /// are lost: the connection closes instead, as when a network drops a
    /// response. The client cannot tell whether the write happened.
    pub fn lose_put_answers(&self, n: u64) {
        self.state.lose_put_answers.store(n, Ordering::SeqCst);
    }

    /// While on, every request is held for ever: the connection stays open
    /// and nothing is answered, as from a server stopped with SIGSTOP.
    pub fn stall(&self, on: bool) {
        self.state.stalled.store(on, Ordering::SeqCst);
    }

    /// Every answer's `Date` says the server's clock is `seconds` ahead of
    /// this machine's (behind, when negative): a store whose clock is off.
    pub fn shift_clock(&self, seconds: i64) {
        self.state.clock_offset.store(seconds, Ordering::SeqCst);
    }

    /// Turns injection off (every request forwarded at once) or back on.
    /// Requests received while it is off draw no fate: the sequence of fates
    /// resumes where it stopped.
    pub fn set_enabled(&self, on: bool) {
        self.state.enabled.store(on, Ordering::SeqCst);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct State {
    faults: Faults,
    enabled: AtomicBool,
    /// Index of the next request that draws a fate.
    next_request: AtomicU64,
    /// Object PUTs still to forward and then answer with a closed
    /// connection ([`FaultProxy::lose_put_answers`]).
    lose_put_answers: AtomicU64,
    /// Requests are held for ever ([`FaultProxy::stall`]).
    stalled: AtomicBool,
    /// Seconds added to the server's clock in answers' `Date`
    /// ([`FaultProxy::shift_clock`]).
    clock_offset: AtomicI64,
    stats: Counters,
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    requests: AtomicU64,
    forwarded: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    delayed: AtomicU64,
    dropped: AtomicU64,
    upstream_errors: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::SeqCst);
}

/// What happens to one request.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Forward,
    SlowDown,
    InternalError,
    Drop,
}

#[derive(Debug, Clone, Copy)]
struct Fate {
    delay: Option<Duration>,
    outcome: Outcome,
}

/// SplitMix64: a small, good generator; no crate needed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl State {
    /// The fate of the request with index `n`: a function of the seed and `n`
    /// only.
    fn fate(&self, n: u64) -> Fate {
        let f = &self.faults;
        // Scramble the index into a generator state of its own.
        let mut rng =
            SplitMix64(SplitMix64(f.seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93)).next_u64());
        let delay =
            (rng.next_f64() < f.delay).then(|| Duration::from_millis(200 + rng.next_u64() % 601));
        let r = rng.next_f64();
        let outcome = if r < f.slow_down {
            Outcome::SlowDown
        } else if r < f.slow_down + f.internal_error {
            Outcome::InternalError
        } else if r < f.slow_down + f.internal_error + f.drop {
            Outcome::Drop
        } else {
            Outcome::Forward
        };
        Fate { delay, outcome }
    }
}

type Body = BoxBody<Bytes, hyper::Error>;
type Upstream = Client<HttpConnector, Incoming>;

async fn accept_loop(
    listener: tokio::net::TcpListener,
    state: Arc<State>,
    upstream: String,
    mut stop: oneshot::Receiver<()>,
) {
    // No idle upstream connections: reusing one the server is closing at that
    // moment would fail a request, and that fault would be ours, not one the
    // test asked for. Loopback connections are cheap.
    let client: Upstream = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .set_host(false)
        .build(HttpConnector::new());
    let upstream: Arc<str> = upstream.into();
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors and the like: try again shortly.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        bump(&state.stats.connections);
        let _ = stream.set_nodelay(true);
        tokio::spawn(serve_connection(
            stream,
            state.clone(),
            client.clone(),
            upstream.clone(),
        ));
    }
}

/// Serves one client connection, keep-alive included, until the client
/// closes it or a request's fate is to drop it.
async fn serve_connection(
    stream: tokio::net::TcpStream,
    state: Arc<State>,
    client: Upstream,
    upstream: Arc<str>,
) {
    let kill = Arc::new(Notify::new());
    let service = {
        let kill = kill.clone();
        service_fn(move |req| {
            handle(
                req,
                state.clone(),
                client.clone(),
                upstream.clone(),
                kill.clone(),
            )
        })
    };
    let conn = http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        // Dropping the connection closes the socket with nothing written.
        _ = kill.notified() => {}
    }
}

async fn handle(
    req: Request<Incoming>,
    state: Arc<State>,
    client: Upstream,
    upstream: Arc<str>,
    kill: Arc<Notify>,
) -> Result<Response<Body>, Infallible> {
    bump(&state.stats.requests);
    if state.stalled.load(Ordering::SeqCst) {
        return std::future::pending().await;
    }
    let fate = if state.enabled.load(Ordering::SeqCst) {
        state.fate(state.next_request.fetch_add(1, Ordering::SeqCst))
    } else {
        Fate {
            delay: None,
            outcome: Outcome::Forward,
        }
    };
    if let Some(delay) = fate.delay {
        bump(&state.stats.delayed);
        tokio::time::sleep(delay).await;
    }
    let object_put = req.method() == hyper::Method::PUT
        && req.uri().query().is_none_or(|q| {
            !q.contains("uploadId") && !q.contains("retention") && !q.contains("object-lock")
        })
        && req.uri().path().trim_matches('/').contains('/');
    if object_put
        && state
            .lose_put_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        let answer = forward(req, &state, &client, &upstream).await;
        // The server has stored it; wait for its whole answer, then lose it.
        let _ = answer.into_body().collect().await;
        bump(&state.stats.dropped);
        kill.notify_one();
        return std::future::pending().await;
    }
    match fate.outcome {
        Outcome::Forward => Ok(forward(req, &state, &client, &upstream).await),
        Outcome::SlowDown => {
            bump(&state.stats.slow_down);
            Ok(s3_error(
                req,
                StatusCode::SERVICE_UNAVAILABLE,
                "SlowDown",
                "Please reduce your request rate.",
            )
            .await)
        }
        Outcome::InternalError => {
            bump(&state.stats.internal_error);
            Ok(s3_error(
                req,
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                "We encountered an internal error. Please try again.",
            )
            .await)
        }
        Outcome::Drop => {
            bump(&state.stats.dropped);
            kill.notify_one();
            // The connection task drops this future with the connection.
            std::future::pending().await
        }
    }
}

/// An S3 error answer. The request body is read first, as S3 does: closing
/// a socket with unread data resets it, and the client could then see the
/// reset instead of the answer.
async fn s3_error(
    req: Request<Incoming>,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Response<Body> {
    let _ = req.into_body().collect().await;
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
         <Error><Code>{code}</Code><Message>{message}</Message>\
         <RequestId>FAULTPROXY</RequestId></Error>"
    );
    let mut resp = Response::new(full(xml));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/xml"),
    );
    resp.headers_mut().insert(
        HeaderName::from_static("x-amz-request-id"),
        HeaderValue::from_static("FAULTPROXY"),
    );
    resp
}

async fn forward(
    req: Request<Incoming>,
    state: &State,
    client: &Upstream,
    upstream: &str,
) -> Response<Body> {
    let (mut parts, body) = req.into_parts();
    let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
    parts.uri = match format!("{upstream}{path}").parse() {
        Ok(uri) => uri,
        Err(e) => return bad_gateway(state, &format!("bad request target {path:?}: {e}")),
    };
    strip_hop_by_hop(&mut parts.headers);
    bump(&state.stats.forwarded);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(resp) => {
            let (mut parts, body) = resp.into_parts();
            strip_hop_by_hop(&mut parts.headers);
            let offset = state.clock_offset.load(Ordering::SeqCst);
            if offset != 0 {
                let date = (chrono::Utc::now() + chrono::Duration::seconds(offset))
                    .format("%a, %d %b %Y %H:%M:%S GMT")
                    .to_string();
                parts
                    .headers
                    .insert(header::DATE, HeaderValue::from_str(&date).unwrap());
            }
            Response::from_parts(parts, body.boxed())
        }
        Err(e) => bad_gateway(state, &format!("upstream {upstream}: {e:?}")),
    }
}

fn bad_gateway(state: &State, why: &str) -> Response<Body> {
    bump(&state.stats.upstream_errors);
    let mut resp = Response::new(full(format!("fault proxy: {why}\n")));
    *resp.status_mut() = StatusCode::BAD_GATEWAY;
    resp
}

/// Removes the headers that describe one connection, not the message
/// (RFC 9110 7.6.1): each side of the proxy has its own connection. Framing
/// (`Content-Length`, `Transfer-Encoding`) stays: hyper frames the forwarded
/// body by it.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        if name != header::CONTENT_LENGTH && name != header::TRANSFER_ENCODING {
            headers.remove(name);
        }
    }
    for name in [
        header::CONNECTION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
        header::TE,
        header::TRAILER,
        header::UPGRADE,
    ] {
        headers.remove(name);
    }
}

fn full(text: String) -> Body {
    Full::new(Bytes::from(text))
        .map_err(|never| match never {})
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_depend_on_seed_and_index_only() {
        let state = |seed| State {
            faults: Faults {
                slow_down: 0.2,
                internal_error: 0.2,
                delay: 0.3,
                drop: 0.2,
                seed,
            },
            enabled: AtomicBool::new(true),
            next_request: AtomicU64::new(0),
            lose_put_answers: AtomicU64::new(0),
            stalled: AtomicBool::new(false),
            clock_offset: AtomicI64::new(0),
            stats: Counters::default(),
        };
        let (a, b) = (state(7), state(7));
        let outcomes = |s: &State| (0..1000).map(|n| s.fate(n).outcome).collect::<Vec<_>>();
        assert_eq!(outcomes(&a), outcomes(&b));
        assert_ne!(outcomes(&a), outcomes(&state(8)));
        let share = |o| outcomes(&a).iter().filter(|&&x| x == o).count();
        for o in [Outcome::SlowDown, Outcome::InternalError, Outcome::Drop] {
            assert!((150..250).contains(&share(o)), "{o:?}: {}", share(o));
        }
        let delays: Vec<_> = (0..1000).filter_map(|n| a.fate(n).delay).collect();
        assert!((250..350).contains(&delays.len()), "{}", delays.len());
        assert!(delays.iter().all(|d| (200..=800).contains(&d.as_millis())));
    }
}
