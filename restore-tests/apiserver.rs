//! The stand-in API server, driven by the real `kubectl`: what it accepts
//! is what resource backups and restores can rely on.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness;
use crate::harness::etcd::which;

/// A server of a test's own (its own etcd prefix on the shared etcd), and a
/// kubectl that talks to it with private caches.
pub(crate) struct Cluster {
    pub(crate) running: drctl::dev::apiserver::Running,
    pub(crate) dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        Cluster::on(&harness::services().etcd_endpoints, &harness::etcd_prefix()).await
    }

    /// A server on the etcd at `endpoints`, its objects under `prefix`.
    pub(crate) async fn on(endpoints: &[String], prefix: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let running = drctl::dev::apiserver::start(drctl::dev::apiserver::Options {
            etcd: endpoints.to_vec(),
            prefix: prefix.to_string(),
            listen: "127.0.0.1:0".parse().unwrap(),
            kubeconfig: dir.path().join("kubeconfig"),
        })
        .await
        .expect("start the test API server");
        Cluster { running, dir }
    }

    pub(crate) fn kubectl(&self, args: &[&str]) -> Command {
        let bin = which("kubectl").unwrap_or_else(|| {
            panic!("kubectl not found on PATH: install kubectl (the google-cloud-cli `kubectl` package or upstream v1.32)")
        });
        let mut c = Command::new(bin);
        c.env("KUBECONFIG", &self.running.kubeconfig)
            .env("KUBECACHEDIR", self.dir.path().join("cache"))
            .env("HOME", self.dir.path())
            .args(args);
        c
    }

    /// Runs kubectl, asserts it failed, returns stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            !out.status.success(),
            "kubectl {args:?} succeeded:\n{stderr}"
        );
        stderr
    }

    /// Runs kubectl, asserts success, returns stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args).output().unwrap();
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(
            out.status.success(),
            "kubectl {args:?} failed:\n{stdout}\n{stderr}"
        );
        stdout
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&all)).expect("kubectl printed JSON")
    }

    pub(crate) fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }
}

pub(crate) const CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wg]}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
    subresources: {status: {}}
"#;

fn manifest(ns: &str, color: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata:
  name: {ns}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: settings
  namespace: {ns}
  labels: {{app: shop}}
data:
  color: {color}
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: {ns}
  labels: {{app: shop}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      containers:
      - name: web
        image: nginx:1.27
        ports: [{{containerPort: 80}}]
---{CRD}---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w1
  namespace: {ns}
spec: {{size: 1}}
---
apiVersion: example.com/v1
kind: Widget
metadata:
  name: w2
  namespace: {ns}
spec: {{size: 2}}
"#
    )
}

fn names(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_applies_a_manifest_with_a_crd_and_its_custom_resources() {
    let c = Cluster::start().await;
    // As against a real cluster, kubectl maps every object before applying
    // the first: the custom resources of a definition created by the same
    // run fail ("ensure CRDs are installed first"), the rest is applied, and
    // the second run applies them.
    let file = c.write("shop.yaml", &manifest("shop", "blue"));
    let stderr = c.fails(&["apply", "-f", file.to_str().unwrap()]);
    assert!(
        stderr.contains("ensure CRDs are installed first"),
        "{stderr}"
    );
    let out = c.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("widget.example.com/w2 created"), "{out}");

    let widgets = c.json(&["get", "widgets", "-n", "shop"]);
    assert_eq!(names(&widgets), ["w1", "w2"]);
    assert_eq!(widgets["items"][0]["spec"]["size"], 1);
    // Custom resources are listed with their apiVersion and kind.
    assert_eq!(widgets["items"][0]["kind"], "Widget");

    // Re-applied with a change: a patch, and the change is there.
    let file = c.write("shop.yaml", &manifest("shop", "green"));
    let out = c.ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(out.contains("configmap/settings configured"), "{out}");
    assert!(out.contains("deployment.apps/web unchanged"), "{out}");
    let cm = c.json(&["get", "configmap", "settings", "-n", "shop"]);
    assert_eq!(cm["data"]["color"], "green");
    assert!(
        cm["metadata"]["uid"]
            .as_str()
            .is_some_and(|u| !u.is_empty())
    );

    // Server-side apply of the same objects in another namespace.
    // The CRD exists now: one run does it all.
    let file = c.write("shop2.yaml", &manifest("shop2", "red"));
    let out = c.ok(&["apply", "--server-side", "-f", file.to_str().unwrap()]);
    assert!(out.contains("serverside-applied"), "{out}");
    let cm = c.json(&[
        "get",
        "configmap",
        "settings",
        "-n",
        "shop2",
        "--show-managed-fields",
    ]);
    let managers: Vec<&str> = cm["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["manager"].as_str().unwrap())
        .collect();
    assert!(managers.contains(&"kubectl"), "{cm}");

    // Label selection across namespaces.
    let all = c.json(&["get", "configmaps", "-A", "-l", "app=shop"]);
    let mut ns: Vec<&str> = all["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["namespace"].as_str().unwrap())
        .collect();
    ns.sort();
    assert_eq!(ns, ["shop", "shop2"]);

    // A strategic merge patch.
    c.ok(&[
        "patch",
        "deployment",
        "web",
        "-n",
        "shop",
        "-p",
        r#"{"spec":{"replicas":3}}"#,
    ]);
    let d = c.json(&["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(d["spec"]["replicas"], 3);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["name"],
        "web"
    );
    assert_eq!(d["metadata"]["generation"], 2);

    // A JSON patch, with a test that must hold.
    c.ok(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "shop2",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/data/color","value":"red"},{"op":"replace","path":"/data/color","value":"teal"}]"#,
    ]);
    let cm = c.json(&["get", "configmap", "settings", "-n", "shop2"]);
    assert_eq!(cm["data"]["color"], "teal");
    c.fails(&[
        "patch",
        "configmap",
        "settings",
        "-n",
        "shop2",
        "--type",
        "json",
        "-p",
        r#"[{"op":"test","path":"/data/color","value":"red"}]"#,
    ]);

    let resources = c.ok(&["api-resources"]);
    for r in [
        "widgets",
        "deployments",
        "configmaps",
        "customresourcedefinitions",
    ] {
        assert!(resources.contains(r), "{r} missing from:\n{resources}");
    }

    // Deleting the namespace deletes what is in it.
    c.ok(&["delete", "namespace", "shop"]);
    let left = c.json(&["get", "widgets,configmaps,deployments", "-n", "shop"]);
    assert_eq!(left["items"].as_array().unwrap().len(), 0, "{left}");
    let left = c.json(&["get", "widgets", "-n", "shop2"]);
    assert_eq!(names(&left), ["w1", "w2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_status_objects_kubectl_understands() {
    let c = Cluster::start().await;
    let err = c.fails(&["get", "configmap", "nope", "-n", "default"]);
    assert!(err.contains(r#"configmaps "nope" not found"#), "{err}");

    // (kubectl's generators, `create configmap`, send protobuf, which this
    // server refuses with 415; files go as JSON.)
    let orphan = c.write(
        "orphan.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: missing-ns}\n",
    );
    let err = c.fails(&["create", "-f", orphan.to_str().unwrap()]);
    assert!(
        err.contains(r#"namespaces "missing-ns" not found"#),
        "{err}"
    );

    let file = c.write(
        "x.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x, namespace: default}\n",
    );
    c.ok(&["create", "-f", file.to_str().unwrap()]);
    let err = c.fails(&["create", "-f", file.to_str().unwrap()]);
    assert!(err.contains(r#"configmaps "x" already exists"#), "{err}");

    // An invalid name is refused with the rule it breaks.
    let bad = c.write(
        "bad.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n",
    );
    let err = c.fails(&["create", "-f", bad.to_str().unwrap()]);
    assert!(
        err.contains("is invalid") && err.contains("RFC 1123"),
        "{err}"
    );
}

/// A raw GET: status code and the body as text (a watch's chunks included).
async fn http_text(c: &Cluster, path: &str) -> (u16, String) {
    request(c, "GET", path, "application/json", "").await
}

/// A raw request with a body of `content_type`.
async fn request(
    c: &Cluster,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    raw_request(c.running.addr, method, path, content_type, body).await
}

/// A raw request to the server at `addr` (for tasks that outlive a borrow).
pub(crate) async fn raw_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, String) {
    use std::io::{Read, Write};
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Authorization: Bearer {}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\n\r\n{body}",
        drctl::dev::apiserver::TOKEN,
        body.len()
    );
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(head.as_bytes()).unwrap();
        let mut raw = String::new();
        s.read_to_string(&mut raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").unwrap();
        (
            head.split(' ').nth(1).unwrap().parse().unwrap(),
            body.to_string(),
        )
    })
    .await
    .unwrap()
}

/// A raw GET against the server, for what kubectl does not show: status
/// code and JSON body.
async fn http(c: &Cluster, path: &str) -> (u16, Value) {
    let (code, body) = http_text(c, path).await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_page_with_opaque_tokens_and_built_in_items_carry_no_kind() {
    let c = Cluster::start().await;
    let mut docs = String::new();
    for i in 0..25 {
        docs.push_str(&format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm-{i:02}, namespace: default, labels: {{half: \"{}\"}}}}\ndata: {{i: \"{i}\"}}\n---\n",
            i % 2
        ));
    }
    let file = c.write("many.yaml", &docs);
    c.ok(&["apply", "-f", file.to_str().unwrap()]);

    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let path = format!(
            "/api/v1/namespaces/default/configmaps?limit=10&labelSelector=half%3D1{}",
            if token.is_empty() {
                String::new()
            } else {
                format!("&continue={token}")
            }
        );
        let (code, page) = http(&c, &path).await;
        assert_eq!(code, 200, "{page}");
        assert_eq!(page["kind"], "ConfigMapList");
        for item in page["items"].as_array().unwrap() {
            assert!(
                item.get("kind").is_none() && item.get("apiVersion").is_none(),
                "{item}"
            );
            seen.push(item["metadata"]["name"].as_str().unwrap().to_string());
        }
        pages += 1;
        match page["metadata"]["continue"].as_str() {
            Some(t) => token = t.to_string(),
            None => break,
        }
    }
    let want: Vec<String> = (0..25)
        .filter(|i| i % 2 == 1)
        .map(|i| format!("cm-{i:02}"))
        .collect();
    assert_eq!(seen, want);
    assert_eq!(pages, 2);

    let (code, status) = http(&c, "/api/v1/namespaces/default/configmaps?continue=garbage").await;
    assert_eq!(code, 400, "{status}");
    assert_eq!(status["kind"], "Status");
    let (code, status) = http(&c, "/api/v1/namespaces/default/widgets").await;
    assert_eq!(code, 404, "{status}");
}

/// A kube client from the server's kubeconfig, as a program would make it.
async fn kube_client(c: &Cluster) -> kube::Client {
    drctl::install_crypto_provider();
    let kubeconfig = kube::config::Kubeconfig::read_from(&c.running.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kube_crate_discovers_pages_applies_deletes_and_watches() {
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams,
    };
    use kube::core::GroupVersionKind;
    use kube::discovery::{Discovery, Scope};
    use tokio_stream::StreamExt;

    let c = Cluster::start().await;
    let client = kube_client(&c).await;

    let discovery = Discovery::new(client.clone())
        .run()
        .await
        .expect("discovery");
    let (ar, caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment"))
        .expect("deployments discovered");
    assert_eq!(ar.plural, "deployments");
    assert_eq!(caps.scope, Scope::Namespaced);
    let (ns_ar, ns_caps) = discovery
        .resolve_gvk(&GroupVersionKind::gvk("", "v1", "Namespace"))
        .expect("namespaces discovered");
    assert_eq!(ns_ar.plural, "namespaces");
    assert_eq!(ns_caps.scope, Scope::Cluster);

    // 1,000 objects, created concurrently, read back page by page.
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap"));
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let names: Vec<String> = (0..1000).map(|i| format!("cm-{i:04}")).collect();
    for batch in names.chunks(50) {
        let creates = batch.iter().map(|n| {
            let api = api.clone();
            let obj: DynamicObject = serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": n}, "data": {"n": n},
            }))
            .unwrap();
            async move { api.create(&PostParams::default(), &obj).await }
        });
        for r in futures::future::join_all(creates).await {
            r.expect("create");
        }
    }
    let mut seen = Vec::new();
    let mut params = ListParams::default().limit(150);
    let mut pages = 0;
    loop {
        let page = api.list(&params).await.expect("list");
        pages += 1;
        seen.extend(page.items.iter().map(|o| o.metadata.name.clone().unwrap()));
        match page.metadata.continue_.filter(|t| !t.is_empty()) {
            Some(t) => params = params.continue_token(&t),
            None => break,
        }
    }
    assert_eq!(seen, names);
    assert_eq!(pages, 7);

    // get; server-side apply of a field another manager set conflicts
    // until forced; delete.
    let got = api.get("cm-0007").await.expect("get");
    assert_eq!(got.data["data"]["n"], "cm-0007");
    let config = Patch::Apply(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "cm-0007", "labels": {"owner": "drctl"}},
        "data": {"n": "changed"},
    }));
    let conflict = api
        .patch("cm-0007", &PatchParams::apply("drctl-test"), &config)
        .await
        .unwrap_err();
    assert!(
        matches!(conflict, kube::Error::Api(ref s) if s.code == 409 && s.message.contains(".data.n")),
        "{conflict:?}"
    );
    let applied = api
        .patch(
            "cm-0007",
            &PatchParams::apply("drctl-test").force(),
            &config,
        )
        .await
        .expect("apply");
    assert_eq!(applied.data["data"]["n"], "changed");
    let managers: Vec<String> = applied
        .metadata
        .managed_fields
        .unwrap_or_default()
        .iter()
        .filter_map(|m| m.manager.clone())
        .collect();
    assert!(managers.contains(&"drctl-test".to_string()), "{managers:?}");
    api.delete("cm-0007", &DeleteParams::default())
        .await
        .expect("delete");
    let gone = api.get("cm-0007").await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref s) if s.code == 404),
        "{gone:?}"
    );

    // A watcher sees what changes after it started.
    let watched: Api<DynamicObject> = Api::namespaced_with(client.clone(), "kube-public", &ar);
    let mut events = Box::pin(kube::runtime::watcher(
        watched.clone(),
        kube::runtime::watcher::Config::default(),
    ));
    let mut ready = false;
    while !ready {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("the watcher starts")
            .unwrap()
            .unwrap();
        ready = matches!(e, kube::runtime::watcher::Event::InitDone);
    }
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "watched"},
    }))
    .unwrap();
    watched.create(&PostParams::default(), &obj).await.unwrap();
    watched
        .delete("watched", &DeleteParams::default())
        .await
        .unwrap();
    let mut applied = false;
    loop {
        let e = tokio::time::timeout(std::time::Duration::from_secs(10), events.next())
            .await
            .expect("the watcher reports the change")
            .unwrap()
            .unwrap();
        match e {
            kube::runtime::watcher::Event::Apply(o)
                if o.metadata.name.as_deref() == Some("watched") =>
            {
                applied = true
            }
            kube::runtime::watcher::Event::Delete(o)
                if o.metadata.name.as_deref() == Some("watched") =>
            {
                assert!(applied, "the deletion came before the creation");
                break;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_come_back_when_etcd_is_restored_from_a_drctl_backup() {
    let mut etcd = crate::harness::etcd::Etcd::start();
    etcd.ready(true).await;
    let c = Cluster::on(std::slice::from_ref(&etcd.client_url), "/registry/").await;
    let app = c.write(
        "app.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: app}\n---\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings, namespace: app}\ndata: {mode: prod}\n---\n\
         apiVersion: v1\nkind: Secret\nmetadata: {name: creds, namespace: app}\nstringData: {password: hunter2}\n---\n\
         apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: app}\nspec:\n  selector: {matchLabels: {app: web}}\n  \
         template:\n    metadata: {labels: {app: web}}\n    spec: {containers: [{name: web, image: nginx}]}\n",
    );
    c.ok(&["apply", "-f", app.to_str().unwrap()]);
    let before = c.json(&["get", "configmaps,secrets,deployments", "-n", "app"]);
    assert_eq!(before["items"].as_array().unwrap().len(), 3, "{before}");

    let env = crate::etcd::env_for(&[&etcd.client_url]).await;
    let backup = env.json(&["backup", "etcd"]);
    let id = backup["backup_id"].as_str().unwrap().to_string();

    // The namespace is lost, then the whole control plane.
    c.ok(&["delete", "namespace", "app"]);
    c.running.stop();
    etcd.stop();

    let data = env.ws.path("restored-etcd");
    let peer = crate::etcd::free_peer_url();
    env.ok(&[
        "--identity",
        env.identity.to_str().unwrap(),
        "restore",
        "etcd",
        &id,
        "--data-dir",
        data.to_str().unwrap(),
        "--name",
        "r",
        "--initial-cluster",
        &format!("r={peer}"),
        "--initial-advertise-peer-urls",
        &peer,
    ]);
    let mut restored = crate::harness::etcd::Etcd::start_on(&data, "r", &peer, env.ws.dir.path());
    restored.ready(true).await;
    let c = Cluster::on(std::slice::from_ref(&restored.client_url), "/registry/").await;
    let after = c.json(&["get", "configmaps,secrets,deployments", "-n", "app"]);
    assert_eq!(
        after["items"], before["items"],
        "the objects came back changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watches_send_bookmarks_and_410_for_compacted_history() {
    // An etcd of its own: compaction is cluster-wide.
    let mut etcd = crate::harness::etcd::Etcd::start();
    etcd.ready(true).await;
    let c = Cluster::on(std::slice::from_ref(&etcd.client_url), "/registry/").await;
    let cm = c.write(
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a, namespace: default}\ndata: {v: \"1\"}\n",
    );
    c.ok(&["apply", "-f", cm.to_str().unwrap()]);
    let first = c.json(&["get", "configmap", "a"]);
    let old_rv = first["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();

    // Changes after a version arrive as events; bookmarks when allowed.
    c.ok(&["patch", "configmap", "a", "-p", r#"{"data":{"v":"2"}}"#]);
    let (code, body) = http_text(
        &c,
        &format!(
            "/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_rv}&allowWatchBookmarks=true&timeoutSeconds=2"
        ),
    )
    .await;
    assert_eq!(code, 200);
    assert!(body.contains(r#""type":"MODIFIED""#), "{body}");
    assert!(body.contains(r#""type":"BOOKMARK""#), "{body}");
    let (_, body) = http_text(
        &c,
        "/api/v1/namespaces/default/configmaps?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true&timeoutSeconds=1",
    )
    .await;
    assert!(body.contains(r#""type":"ADDED""#), "{body}");
    assert!(body.contains("k8s.io/initial-events-end"), "{body}");

    // A list as it was at a version.
    let (code, then) = http(
        &c,
        &format!(
            "/api/v1/namespaces/default/configmaps?resourceVersion={old_rv}&resourceVersionMatch=Exact"
        ),
    )
    .await;
    assert_eq!(code, 200, "{then}");
    assert_eq!(then["items"][0]["data"]["v"], "1", "{then}");
    assert_eq!(then["metadata"]["resourceVersion"], old_rv.as_str());

    // A list in pages, then history compacted away: the next page and a
    // watch from before are both 410.
    for i in 0..3 {
        let f = c.write(
            "more.yaml",
            &format!(
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: m{i}, namespace: default}}\n"
            ),
        );
        c.ok(&["apply", "-f", f.to_str().unwrap()]);
    }
    let (_, page) = http(&c, "/api/v1/namespaces/default/configmaps?limit=1").await;
    let token = page["metadata"]["continue"].as_str().unwrap().to_string();
    c.ok(&["patch", "configmap", "a", "-p", r#"{"data":{"v":"3"}}"#]);
    let mut client = etcd.client().await;
    let now = client.status().await.unwrap().header().unwrap().revision();
    client.compact(now, None).await.unwrap();
    let (code, status) = http(
        &c,
        &format!("/api/v1/namespaces/default/configmaps?limit=1&continue={token}"),
    )
    .await;
    assert_eq!(code, 410, "{status}");
    assert_eq!(status["reason"], "Expired");
    let (_, body) = http_text(
        &c,
        &format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={old_rv}"),
    )
    .await;
    assert!(
        body.contains(r#""type":"ERROR""#) && body.contains("410"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_keep_the_rules_of_a_real_server() {
    use kube::api::{
        Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams,
    };
    use kube::core::GroupVersionKind;

    let c = Cluster::start().await;
    let client = kube_client(&c).await;
    let cms: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("", "v1", "ConfigMap")),
    );
    let obj = |v: Value| -> DynamicObject { serde_json::from_value(v).unwrap() };
    let merge = |v: Value| Patch::Merge(v);

    // generateName, and a PUT with a stale resourceVersion.
    let made = cms
        .create(
            &PostParams::default(),
            &obj(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"generateName": "gen-"}, "data": {"v": "1"}})),
        )
        .await
        .unwrap();
    let name = made.metadata.name.clone().unwrap();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let mut stale = made.clone();
    cms.patch(
        &name,
        &PatchParams::default(),
        &merge(serde_json::json!({"data": {"v": "2"}})),
    )
    .await
    .unwrap();
    stale.data["data"]["v"] = "3".into();
    let err = cms
        .replace(&name, &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Finalizers: a delete only marks; removing the last one deletes.
    cms.create(
        &PostParams::default(),
        &obj(serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kept", "finalizers": ["example.com/keep"]}})),
    )
    .await
    .unwrap();
    cms.delete("kept", &DeleteParams::default()).await.unwrap();
    let marked = cms.get("kept").await.unwrap();
    assert!(marked.metadata.deletion_timestamp.is_some());
    cms.patch(
        "kept",
        &PatchParams::default(),
        &merge(serde_json::json!({"metadata": {"finalizers": null}})),
    )
    .await
    .unwrap();
    let gone = cms.get("kept").await.unwrap_err();
    assert!(
        matches!(gone, kube::Error::Api(ref s) if s.code == 404),
        "{gone:?}"
    );

    // Status is the subresource's: ignored on the object, set on /status.
    let deploys: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        "default",
        &ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
    );
    let d = deploys
        .create(
            &PostParams::default(),
            &obj(
                serde_json::json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "d"},
                "spec": {"selector": {"matchLabels": {"a": "b"}},
                         "template": {"metadata": {"labels": {"a": "b"}},
                                      "spec": {"containers": [{"name": "c", "image": "x"}]}}},
                "status": {"replicas": 9}}),
            ),
        )
        .await
        .unwrap();
    assert!(
        d.data.get("status").is_none(),
        "status set on create: {:?}",
        d.data
    );
    let s = deploys
        .patch_status(
            "d",
            &PatchParams::default(),
            &merge(serde_json::json!({"status": {"replicas": 2}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["replicas"], 2);
    assert_eq!(
        s.metadata.generation,
        Some(1),
        "a status change is no new generation"
    );
    let s = deploys
        .patch(
            "d",
            &PatchParams::default(),
            &merge(serde_json::json!({"status": {"replicas": 7}, "spec": {"replicas": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(s.data["status"]["replicas"], 2);
    assert_eq!(s.metadata.generation, Some(2));

    // Server-side apply needs a field manager; strategic merge is for
    // built-in kinds only.
    let (code, body) = request(
        &c,
        "PATCH",
        "/api/v1/namespaces/default/configmaps/x",
        "application/apply-patch+yaml",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"x"}}"#,
    )
    .await;
    assert_eq!(code, 422, "{body}");
    c.ok(&["apply", "-f", c.write("crd.yaml", CRD).to_str().unwrap()]);
    let w = c.write(
        "w.yaml",
        "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w, namespace: default}\nspec: {size: 1}\n",
    );
    c.ok(&["apply", "-f", w.to_str().unwrap()]);
    let (code, body) = request(
        &c,
        "PATCH",
        "/apis/example.com/v1/namespaces/default/widgets/w",
        "application/strategic-merge-patch+json",
        r#"{"spec":{"size":2}}"#,
    )
    .await;
    assert_eq!(code, 415, "{body}");
    c.ok(&[
        "patch",
        "widget",
        "w",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"size":3}}"#,
    ]);
    assert_eq!(c.json(&["get", "widget", "w"])["spec"]["size"], 3);
}

/// kubectl's imperative commands send built-in kinds as protobuf and do not
/// fall back to JSON: each one works, and what it made reads back as it
/// would from a real server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_create_sends_protobuf_and_the_objects_read_back() {
    use base64::Engine as _;
    let c = Cluster::start().await;
    c.ok(&["create", "namespace", "shop"]);
    c.ok(&[
        "create",
        "configmap",
        "settings",
        "-n",
        "shop",
        "--from-literal=mode=fast",
        "--from-literal=size=3",
    ]);
    c.ok(&[
        "create",
        "secret",
        "generic",
        "creds",
        "-n",
        "shop",
        "--from-literal=password=s3cr3t",
    ]);
    c.ok(&["create", "serviceaccount", "runner", "-n", "shop"]);
    c.ok(&[
        "create",
        "deployment",
        "web",
        "-n",
        "shop",
        "--image=nginx:1.27",
        "--replicas=2",
        "--port=8080",
    ]);

    let ns = c.json(&["get", "namespace", "shop"]);
    assert_eq!(ns["metadata"]["name"], "shop", "{ns:#}");
    assert!(ns["metadata"]["uid"].is_string());
    let cm = c.json(&["get", "configmap", "settings", "-n", "shop"]);
    assert_eq!(cm["data"], serde_json::json!({"mode": "fast", "size": "3"}));
    let secret = c.json(&["get", "secret", "creds", "-n", "shop"]);
    assert_eq!(
        secret["data"]["password"],
        base64::engine::general_purpose::STANDARD.encode("s3cr3t")
    );
    let sa = c.json(&["get", "serviceaccount", "runner", "-n", "shop"]);
    assert_eq!(sa["metadata"]["namespace"], "shop");
    let d = c.json(&["get", "deployment", "web", "-n", "shop"]);
    assert_eq!(d["spec"]["replicas"], 2, "{d:#}");
    assert_eq!(d["spec"]["selector"]["matchLabels"]["app"], "web");
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "nginx:1.27", "{d:#}");
    assert_eq!(container["ports"][0]["containerPort"], 8080, "{d:#}");

    // As on a real server: a name in use is refused, and kubectl says so.
    let err = c.fails(&["create", "namespace", "shop"]);
    assert!(err.contains("AlreadyExists"), "{err}");
    // `kubectl auth can-i` sends its review as protobuf too.
    assert_eq!(
        c.ok(&["auth", "can-i", "create", "deployments", "-n", "shop"])
            .trim(),
        "yes"
    );
}
