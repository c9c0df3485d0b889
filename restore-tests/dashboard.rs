//! The dashboard in a real browser: headless Chromium driven through
//! chromedriver (W3C WebDriver), against `drctl server` with real backups
//! and a drill in its catalog. Every page loads, shows what the API says,
//! a viewer token signs in, no token and a wrong one are refused, and each
//! page's screenshot is kept as a test artifact.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::etcd::which;
use crate::harness::{VolumeEnv, run};
use crate::server::{Server, sha256_hex, wait_for};

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    port: u16,
    session: String,
    _profile: tempfile::TempDir,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.call("DELETE", "", Value::Null);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One WebDriver request: the JSON answer's `value`.
fn webdriver(port: u16, method: &str, path: &str, body: &Value) -> Value {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to chromedriver");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    // chromedriver may keep the connection open: read the head, then as
    // many bytes as it says (or chunks, or to the end).
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).expect("chromedriver answers");
        assert!(n > 0, "chromedriver closed the connection: {raw:?}");
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    let chunked = head.contains("transfer-encoding: chunked");
    loop {
        let have = raw.len() - head_end;
        let done = match length {
            Some(n) => have >= n,
            None if chunked => raw.ends_with(b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s.read(&mut buf).expect("chromedriver answers");
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let body = String::from_utf8_lossy(&raw[head_end..]).to_string();
    let body = if chunked {
        crate::server::dechunk(&body)
    } else {
        body
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_else(|e| {
        panic!("chromedriver answered {method} {path} with {head} {body} ({e})")
    });
    v["value"].clone()
}

impl Driver {
    fn start() -> Driver {
        let bin = which("chromedriver").unwrap_or_else(|| {
            panic!(
                "chromedriver not found on PATH: install the Debian package chromium-driver \
                 (./scripts/setup does)"
            )
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(bin)
            .arg(format!("--port={port}"))
            .env("HOME", profile.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not listen");
            std::thread::sleep(Duration::from_millis(100));
        }
        let session = webdriver(
            port,
            "POST",
            "/session",
            &json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": which("chromium").expect("chromium on PATH (./scripts/setup installs it)"),
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--window-size=1400,1000", "--hide-scrollbars",
                         format!("--user-data-dir={}", profile.path().join("chrome").display())],
            }}}}),
        );
        let id = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {session}"))
            .to_string();
        Driver {
            child,
            port,
            session: id,
            _profile: profile,
        }
    }

    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        webdriver(
            self.port,
            method,
            &format!("/session/{}{path}", self.session),
            &body,
        )
    }

    fn open(&self, url: &str) -> String {
        self.call("POST", "/url", json!({"url": url}));
        self.source()
    }

    fn source(&self) -> String {
        self.call("GET", "/source", Value::Null)
            .as_str()
            .unwrap()
            .to_string()
    }

    fn element(&self, css: &str) -> String {
        let e = self.call(
            "POST",
            "/element",
            json!({"using": "css selector", "value": css}),
        );
        e.as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    }

    fn sign_in(&self, base: &str, token: &str) -> String {
        self.open(&format!("{base}/ui/login"));
        let field = self.element("#token");
        self.call(
            "POST",
            &format!("/element/{field}/value"),
            json!({"text": token}),
        );
        let button = self.element("#sign-in");
        self.call("POST", &format!("/element/{button}/click"), json!({}));
        // The click may return before the form's answer (and its redirect)
        // is the page: wait for a page that says how the sign-in went.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let page = self.source();
            if page.contains("signed in:") || page.contains("class=\"bad\"") {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "no answer to the sign-in: {page}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Keeps a screenshot of the current page as `name`.
    fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.call("GET", "/screenshot", Value::Null);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(crate::drill::artifacts().join(name), bytes).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_what_the_api_says_to_a_signed_in_viewer() {
    let env = VolumeEnv::new().await;
    let src = env.ws.path("data");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("a.txt"), "first\n").unwrap();
    std::fs::write(src.join("b.bin"), vec![7u8; 300_000]).unwrap();
    env.backup(&src, "vol");
    std::fs::write(src.join("c.txt"), "second\n").unwrap();
    env.backup(&src, "vol");
    let (out, report, stderr) = run(env
        .cmd(&[
            "drill",
            "run",
            "--backup",
            "vol@latest",
            "-o",
            "json",
            "--identity",
        ])
        .arg(&env.identity));
    assert!(out.status.success(), "{report}\n{stderr}");
    let report: Value = serde_json::from_str(&report).unwrap();
    let drill_id = report["drill_id"].as_str().unwrap().to_string();

    let tokens = env.ws.write(
        "tokens",
        &format!(
            "viewer {}\noperator {}\n",
            sha256_hex("viewer-token"),
            sha256_hex("operator-token")
        ),
    );
    let mut config = std::fs::read_to_string(&env.config).unwrap();
    config.push_str(&format!(
        "server:\n  tokens_file: {}\n  leader_lease_seconds: 3\n\
         schedules:\n  - name: vol\n    cron: \"@hourly\"\n    skip_immediately: true\n    \
         rpo_seconds: 7200\n    source:\n      volume:\n        path: {}\n",
        tokens.display(),
        src.display()
    ));
    std::fs::write(&env.config, config).unwrap();
    let server = Server::start(&env);
    let log = env.ws.path("server.log");
    wait_for(60, "ready", &log, || {
        (server.call("GET", "/readyz", None).0 == 200).then_some(())
    });
    let base = format!("http://{}", server.addr);

    // Without a token, and with a wrong one, nothing but the sign-in page.
    let (status, page) = server.call("GET", "/ui/backups", None);
    assert_eq!(status, 401, "{page}");
    assert!(page.contains("Sign in") && !page.contains("vol"), "{page}");
    assert_eq!(server.call("GET", "/ui", Some("wrong")).0, 401);
    assert_eq!(server.call("GET", "/ui", Some("viewer-token")).0, 200);

    let driver = Driver::start();
    let page = driver.open(&format!("{base}/ui"));
    assert!(page.contains("id=\"token\""), "{page}");
    driver.screenshot("dashboard-sign-in.png");
    let page = driver.sign_in(&base, "not-a-token");
    assert!(page.contains("the token is not known"), "{page}");

    // A viewer signs in and sees what the API gives.
    let page = driver.sign_in(&base, "viewer-token");
    assert!(
        page.contains("signed in: viewer"),
        "{page}\ncookies: {}",
        driver.call("GET", "/cookie", Value::Null)
    );
    let schedules: Value = serde_json::from_str(
        &server
            .call("GET", "/api/v1/schedules", Some("viewer-token"))
            .1,
    )
    .unwrap();
    assert_eq!(schedules[0]["name"], "vol");
    assert!(page.contains("data-schedule=\"vol\""), "{page}");
    assert!(page.contains("2 h"), "the RPO objective: {page}");
    assert!(page.contains("id=\"leader\""), "{page}");
    assert!(page.contains("answers"), "storage and catalog: {page}");
    driver.screenshot("dashboard-overview.png");

    let api: Value = serde_json::from_str(
        &server
            .call("GET", "/api/v1/backups", Some("viewer-token"))
            .1,
    )
    .unwrap();
    let api = api.as_array().unwrap();
    assert_eq!(api.len(), 2);
    let page = driver.open(&format!("{base}/ui/backups"));
    assert!(page.contains("2 backup(s)"), "{page}");
    for b in api {
        let id = b["id"].as_str().unwrap();
        assert!(page.contains(&format!("data-id=\"{id}\"")), "{id}: {page}");
        assert!(page.contains(b["short_id"].as_str().unwrap()));
    }
    let verified = api
        .iter()
        .find(|b| b["verified_by"].is_string())
        .expect("the drilled backup is verified");
    assert_eq!(verified["verified_by"], drill_id.as_str());
    assert!(
        page.contains(&format!("href=\"/ui/drills/{drill_id}\"")),
        "{page}"
    );
    driver.screenshot("dashboard-backups.png");

    let page = driver.open(&format!("{base}/ui/drills"));
    assert!(page.contains(&format!("data-id=\"{drill_id}\"")), "{page}");
    assert!(page.contains(">passed<"), "{page}");
    assert!(page.contains("<svg"), "the RTO/RPO trend: {page}");
    driver.screenshot("dashboard-drills.png");

    let page = driver.open(&format!("{base}/ui/drills/{drill_id}"));
    assert!(page.contains(&drill_id), "{page}");
    driver.screenshot("dashboard-drill-report.png");

    // No secret on any page: not the tokens, not the repository's keys.
    let secret = std::fs::read_to_string(env.ws.path("repo-secret.json")).unwrap();
    for path in ["/ui", "/ui/backups", "/ui/drills"] {
        let page = driver.open(&format!("{base}{path}"));
        assert!(!page.contains("viewer-token") && !page.contains("operator-token"));
        let secret: Value = serde_json::from_str(&secret).unwrap();
        for key in ["chunk_id_key", "manifest_mac_key"] {
            let v = secret[key].as_str().expect("the secret file's keys");
            assert!(!page.contains(v), "{key} on {path}");
        }
    }

    // Signed out, the pages are refused again.
    let button = driver.element("header form button");
    driver.call("POST", &format!("/element/{button}/click"), json!({}));
    let page = driver.open(&format!("{base}/ui/backups"));
    assert!(page.contains("id=\"token\""), "{page}");
}
