//! Resource backups and restores against the stand-in API server, the
//! cluster set up and inspected with the real kubectl: what an on-call
//! engineer restoring a namespace relies on.

use serde_json::Value;

use crate::apiserver::{CRD, Cluster};
use crate::harness::{VolumeEnv, assert_no_secret, run};

/// The Secret's value: it must never appear in drctl's output.
const SECRET: &str = "hunter2-d0-not-print";

/// The application of namespace `ns`: every kind the issue names.
fn app(ns: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Namespace
metadata: {{name: {ns}, labels: {{team: shop}}}}
---
apiVersion: v1
kind: ServiceAccount
metadata: {{name: web, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: reader, namespace: {ns}}}
rules:
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: web-reads, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: reader}}
subjects:
- {{kind: ServiceAccount, name: web, namespace: {ns}}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: settings, namespace: {ns}, labels: {{app: shop}}}}
data: {{color: red, size: "3"}}
---
apiVersion: v1
kind: Secret
metadata: {{name: db, namespace: {ns}}}
type: Opaque
stringData: {{password: {SECRET}}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: data, namespace: {ns}}}
spec:
  accessModes: [ReadWriteOnce]
  resources: {{requests: {{storage: 1Gi}}}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: {ns}, labels: {{app: shop}}}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      serviceAccountName: web
      containers:
      - name: web
        image: nginx:1.27
        envFrom: [{{configMapRef: {{name: settings}}}}]
        volumeMounts: [{{name: data, mountPath: /data}}]
      volumes: [{{name: data, persistentVolumeClaim: {{claimName: data}}}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: {ns}}}
spec:
  type: NodePort
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
---
apiVersion: example.com/v1
kind: Widget
metadata: {{name: w1, namespace: {ns}}}
spec: {{size: 1}}
---
apiVersion: example.com/v1
kind: Widget
metadata: {{name: w2, namespace: {ns}}}
spec: {{size: 2}}
"#
    )
}

/// The namespaced objects of [`app`], as kubectl names them.
const OBJECTS: &[(&str, &str)] = &[
    ("serviceaccount", "web"),
    ("role.rbac.authorization.k8s.io", "reader"),
    ("rolebinding.rbac.authorization.k8s.io", "web-reads"),
    ("configmap", "settings"),
    ("secret", "db"),
    ("persistentvolumeclaim", "data"),
    ("deployment.apps", "web"),
    ("service", "web"),
    ("widget.example.com", "w1"),
    ("widget.example.com", "w2"),
];

/// A cluster with the application in namespace `shop`, and a repository
/// whose configuration points at the cluster's kubeconfig.
struct Env {
    c: Cluster,
    env: VolumeEnv,
}

impl Env {
    async fn new() -> Env {
        let c = Cluster::start().await;
        let env = VolumeEnv::new().await;
        let mut config = std::fs::read_to_string(&env.config).unwrap();
        config.push_str(&format!(
            "kubernetes:\n  kubeconfig: {}\n",
            c.running.kubeconfig.display()
        ));
        std::fs::write(&env.config, config).unwrap();
        let crd = c.write("crd.yaml", CRD);
        c.ok(&["apply", "-f", crd.to_str().unwrap()]);
        let file = c.write("shop.yaml", &app("shop"));
        c.ok(&["apply", "-f", file.to_str().unwrap()]);
        Env { c, env }
    }

    /// `drctl backup resources ARGS` (JSON summary); checks that the
    /// Secret's value is not in the output.
    fn backup(&self, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json", "backup", "resources"];
        all.extend(args);
        let (out, stdout, stderr) = run(&mut self.env.cmd(&all));
        assert!(out.status.success(), "backup failed:\n{stdout}\n{stderr}");
        assert_no_secret(&format!("{stdout}{stderr}"), &[SECRET]);
        serde_json::from_str(&stdout).expect("JSON summary")
    }

    /// `drctl restore resources ID ARGS` in text; returns (code, stdout,
    /// stderr), checking the Secret's value is not in them.
    fn restore_text(&self, id: &str, args: &[&str]) -> (i32, String, String) {
        let mut all = vec!["restore", "resources", id];
        all.extend(args);
        let (out, stdout, stderr) =
            run(self.env.cmd(&all).arg("--identity").arg(&self.env.identity));
        assert_no_secret(&format!("{stdout}{stderr}"), &[SECRET]);
        (out.status.code().unwrap_or(-1), stdout, stderr)
    }

    /// `drctl -o json restore resources ID ARGS`, asserted to succeed.
    fn restore(&self, id: &str, args: &[&str]) -> Value {
        let mut all = vec!["-o", "json"];
        all.extend(["restore", "resources", id]);
        all.extend(args);
        let (out, stdout, stderr) =
            run(self.env.cmd(&all).arg("--identity").arg(&self.env.identity));
        assert_no_secret(&format!("{stdout}{stderr}"), &[SECRET]);
        assert!(out.status.success(), "restore failed:\n{stdout}\n{stderr}");
        serde_json::from_str(&stdout).expect("JSON report")
    }

    fn get(&self, ns: &str, kind: &str, name: &str) -> Value {
        self.c.json(&["get", "-n", ns, kind, name])
    }

    fn exists(&self, ns: &str, kind: &str, name: &str) -> bool {
        self.c
            .kubectl(&["get", "-n", ns, kind, name])
            .output()
            .unwrap()
            .status
            .success()
    }
}

/// An object without what the server sets: identity, versions, times,
/// status, and the addresses a Service gets.
fn user_fields(mut o: Value) -> Value {
    let meta = o["metadata"].as_object_mut().unwrap();
    for f in [
        "uid",
        "resourceVersion",
        "creationTimestamp",
        "generation",
        "managedFields",
    ] {
        meta.remove(f);
    }
    let m = o.as_object_mut().unwrap();
    m.remove("status");
    if m["kind"] == "Service" {
        let spec = m["spec"].as_object_mut().unwrap();
        spec.remove("clusterIP");
        spec.remove("clusterIPs");
        for p in spec["ports"].as_array_mut().unwrap() {
            p.as_object_mut().unwrap().remove("nodePort");
        }
    }
    o
}

/// (create, skip, update, recreate, fail): a restore's `summary`, or a
/// dry run's `plan` (which never says "created").
fn counts(report: &Value) -> (u64, u64, u64, u64, u64) {
    let dry = report["dry_run"] == true;
    let s = if dry {
        assert!(report.get("summary").is_none(), "{report:#}");
        &report["plan"]
    } else {
        assert!(report.get("plan").is_none(), "{report:#}");
        &report["summary"]
    };
    let n = |done: &str, planned: &str| s[if dry { planned } else { done }].as_u64().unwrap();
    (
        n("created", "create"),
        n("skipped", "skip"),
        n("updated", "update"),
        n("recreated", "recreate"),
        n("failed", "cannot_restore"),
    )
}

/// The plan's step for `kind` `name`.
fn step<'a>(report: &'a Value, kind: &str, name: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == kind && s["name"] == name)
        .unwrap_or_else(|| panic!("no step for {kind} {name} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_namespace_restores_equal_to_the_original() {
    let e = Env::new().await;
    let originals: Vec<Value> = OBJECTS
        .iter()
        .map(|(k, n)| user_fields(e.get("shop", k, n)))
        .collect();
    let ns_before = user_fields(e.c.json(&["get", "namespace", "shop"]));

    let b = e.backup(&["--include-namespaces", "shop"]);
    // Ten objects, their Namespace and the CRD of the widgets (auto).
    assert_eq!(b["objects"], 12, "{b:#}");
    assert_eq!(b["status"], "complete");
    let id = b["backup_id"].as_str().unwrap();

    e.c.ok(&["delete", "namespace", "shop"]);
    assert!(!e.exists("shop", "configmap", "settings"));

    let r = e.restore(id, &[]);
    // The CRD is still there: skipped; everything else created.
    assert_eq!(counts(&r), (11, 1, 0, 0, 0), "{r:#}");
    assert_eq!(
        step(&r, "CustomResourceDefinition", "widgets.example.com")["action"],
        "skip"
    );
    // Dependency order: CRD, Namespace, ServiceAccount and RBAC, config,
    // claims, workloads, the rest.
    let order: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        order,
        [
            "CustomResourceDefinition",
            "Namespace",
            "ServiceAccount",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Secret",
            "PersistentVolumeClaim",
            "Deployment",
            "Service",
            "Widget",
            "Widget"
        ]
    );
    for ((k, n), original) in OBJECTS.iter().zip(&originals) {
        assert_eq!(
            &user_fields(e.get("shop", k, n)),
            original,
            "{k} {n} differs"
        );
    }
    assert_eq!(
        user_fields(e.c.json(&["get", "namespace", "shop"])),
        ns_before
    );
    // The Secret's data is the original's, and drctl is its field manager.
    let secret =
        e.c.json(&["get", "-n", "shop", "secret", "db", "--show-managed-fields"]);
    assert_eq!(secret["data"]["password"], base64_of(SECRET), "{secret:#}");
    assert!(
        secret["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["manager"] == "drctl" && m["operation"] == "Apply"),
        "{secret:#}"
    );

    // A second backup of the unchanged namespace stores no object again.
    let again = e.backup(&["--include-namespaces", "shop"]);
    assert_eq!(again["objects"], 12);
    // The restored objects are new objects (new uids, versions): stored
    // again once; a backup after that stores none.
    let third = e.backup(&["--include-namespaces", "shop"]);
    assert_eq!(third["new_objects"], 0, "{third:#}");
    // Its object table is unchanged too: only the manifest is uploaded.
    assert_eq!(third["table_new_bytes"], 0, "{third:#}");
    assert_eq!(third["stored_bytes"], 0, "{third:#}");
    assert_eq!(
        third["uploaded_bytes"], third["manifest_bytes"],
        "{third:#}"
    );

    // verify reads every backup's object table and every object's pack.
    let id_file = e.env.identity.to_str().unwrap();
    let report = e
        .env
        .json(&["--identity", id_file, "verify", "--read-data"]);
    assert_eq!(report["backups"], 3, "{report:#}");
    assert!(
        report["damaged_packs"].as_array().unwrap().is_empty(),
        "{report:#}"
    );
    // The three backups' objects (24 distinct) and their tables.
    assert!(
        report["chunks_checked"].as_u64().unwrap() >= 24,
        "{report:#}"
    );
}

fn base64_of(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_restore_lands_next_to_the_original() {
    let e = Env::new().await;
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    let before: Vec<Value> = OBJECTS.iter().map(|(k, n)| e.get("shop", k, n)).collect();

    let r = e.restore(id, &["--namespace-mapping", "shop=shop-copy"]);
    assert_eq!(counts(&r).4, 0, "{r:#}");
    assert_eq!(step(&r, "ConfigMap", "settings")["from_namespace"], "shop");
    assert_eq!(step(&r, "ConfigMap", "settings")["namespace"], "shop-copy");
    // The original is untouched: same resourceVersions.
    for ((k, n), old) in OBJECTS.iter().zip(&before) {
        let now = e.get("shop", k, n);
        assert_eq!(
            now["metadata"]["resourceVersion"], old["metadata"]["resourceVersion"],
            "{k} {n} in shop was changed"
        );
        // The copy equals it, in its own namespace.
        let mut copy = user_fields(e.get("shop-copy", k, n));
        copy["metadata"]["namespace"] = "shop".into();
        if *k == "rolebinding.rbac.authorization.k8s.io" {
            assert_eq!(copy["subjects"][0]["namespace"], "shop-copy");
            copy["subjects"][0]["namespace"] = "shop".into();
        }
        assert_eq!(
            copy,
            user_fields(old.clone()),
            "{k} {n} differs in shop-copy"
        );
    }
    let ns = e.c.json(&["get", "namespace", "shop-copy"]);
    assert_eq!(ns["metadata"]["labels"]["team"], "shop");
}

/// Every object's resourceVersion in `shop`, and the namespaces.
fn versions(e: &Env) -> Vec<(String, String)> {
    let list = e.c.json(&[
        "get",
        "-n",
        "shop",
        "serviceaccounts,roles,rolebindings,configmaps,secrets,persistentvolumeclaims,deployments,services,widgets",
    ]);
    let nss = e.c.json(&["get", "namespaces"]);
    list["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(nss["items"].as_array().unwrap())
        .map(|i| {
            (
                format!("{}/{}", i["kind"], i["metadata"]["name"]),
                i["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_prints_the_plan_and_changes_nothing() {
    let e = Env::new().await;
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    e.c.ok(&["delete", "-n", "shop", "secret", "db"]);
    let before = versions(&e);

    let plan = e.restore(id, &["--dry-run", "--existing", "update"]);
    assert_eq!(plan["dry_run"], true);
    assert_eq!(step(&plan, "Secret", "db")["action"], "create");
    assert_eq!(step(&plan, "ConfigMap", "settings")["action"], "update");
    assert!(
        plan["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s.get("outcome").is_none())
    );
    assert_eq!(counts(&plan), (1, 0, 11, 0, 0), "{plan:#}");
    assert_eq!(versions(&e), before, "a dry run changed the cluster");
    assert!(!e.exists("shop", "secret", "db"));

    // The text plan names each object with its action, in order.
    let (code, text, _) = e.restore_text(id, &["--dry-run"]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("nothing was changed"), "{text}");
    assert!(text.contains("create     Secret shop/db"), "{text}");
    assert!(
        text.contains("skip       ConfigMap shop/settings"),
        "{text}"
    );
    assert_eq!(versions(&e), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_existing_policy_does_what_it_promises() {
    let e = Env::new().await;
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    let change = |color: &str| {
        e.c.ok(&[
            "patch",
            "-n",
            "shop",
            "configmap",
            "settings",
            "--type",
            "merge",
            "-p",
            &format!(r#"{{"data":{{"color":"{color}","extra":"x"}}}}"#),
        ]);
    };
    change("blue");
    e.c.ok(&["delete", "-n", "shop", "service", "web"]);
    let uid = |e: &Env| e.get("shop", "configmap", "settings")["metadata"]["uid"].clone();
    let ns_uid = e.c.json(&["get", "namespace", "shop"])["metadata"]["uid"].clone();

    // skip: the changed object stays changed, the missing one comes back.
    let r = e.restore(id, &[]);
    assert_eq!(counts(&r), (1, 11, 0, 0, 0), "{r:#}");
    assert_eq!(step(&r, "Service", "web")["outcome"], "created");
    let cm = e.get("shop", "configmap", "settings");
    assert_eq!(cm["data"]["color"], "blue");
    assert!(e.exists("shop", "service", "web"));

    // update: the backup's fields win; the object is the same object, and
    // a field only the live object has stays (server-side apply).
    let before = uid(&e);
    let r = e.restore(id, &["--existing", "update"]);
    assert_eq!(counts(&r).2, 12, "{r:#}");
    let cm = e.get("shop", "configmap", "settings");
    assert_eq!(cm["data"]["color"], "red");
    assert_eq!(cm["data"]["extra"], "x");
    assert_eq!(uid(&e), before);

    // recreate: a new object equal to the backup's; the namespace is
    // updated, never deleted.
    change("green");
    let r = e.restore(id, &["--existing", "recreate"]);
    assert_eq!(counts(&r).4, 0, "{r:#}");
    assert_eq!(step(&r, "ConfigMap", "settings")["outcome"], "recreated");
    let ns_step = step(&r, "Namespace", "shop");
    assert_eq!(ns_step["outcome"], "updated");
    assert!(
        ns_step["reason"]
            .as_str()
            .unwrap()
            .contains("not recreated")
    );
    let cm = e.get("shop", "configmap", "settings");
    assert_eq!(cm["data"]["color"], "red");
    assert!(cm["data"].get("extra").is_none(), "{cm:#}");
    assert_ne!(uid(&e), before);
    assert_eq!(
        e.c.json(&["get", "namespace", "shop"])["metadata"]["uid"],
        ns_uid
    );
}

/// A kubeconfig like the cluster's with `edit` applied to its text.
fn kubeconfig_variant(e: &Env, name: &str, edit: impl Fn(String) -> String) -> String {
    let text = std::fs::read_to_string(&e.c.running.kubeconfig).unwrap();
    let p = e.c.write(name, &edit(text));
    p.to_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_applied() {
    let e = Env::new().await;
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    e.c.ok(&["delete", "namespace", "shop"]);

    let unknown = "0190a0a0-0000-7000-8000-000000000000";
    let (code, _, err) = e.restore_text(unknown, &[]);
    assert_eq!(code, 7, "{err}");
    assert!(
        err.contains("no manifest") || err.contains("no backup"),
        "{err}"
    );

    let (code, _, err) = e.restore_text(id, &["--namespace-mapping", "shop"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("is not OLD=NEW"), "{err}");
    let (code, _, err) = e.restore_text(id, &["--namespace-mapping", "shop=Shop_2"]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("`Shop_2` is not a namespace name"), "{err}");
    let (code, _, err) = e.restore_text(id, &["--include-namespaces", "UPPER"]);
    assert_eq!(code, 3, "{err}");

    // A server that is not there: which server, which credentials.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = e.c.running.addr.to_string();
    let down = kubeconfig_variant(&e, "down.kubeconfig", |t| {
        t.replace(&addr, &format!("127.0.0.1:{port}"))
    });
    let (code, _, err) = e.restore_text(id, &["--kubeconfig", &down]);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cannot reach the API server"), "{err}");
    assert!(err.contains(&down), "{err}");

    // Credentials the server refuses: which user, what the server said,
    // and never the token itself.
    let wrong = kubeconfig_variant(&e, "wrong.kubeconfig", |t| {
        t.replace("\"token\": \"drctl-dev\"", "\"token\": \"wrong-token-123\"")
    });
    let (code, _, err) = e.restore_text(id, &["--kubeconfig", &wrong]);
    assert_eq!(code, 5, "{err}");
    assert!(
        err.contains("401") && err.contains("user `drctl-dev`"),
        "{err}"
    );
    assert!(err.contains("bearer token"), "{err}");
    assert_no_secret(&err, &["wrong-token-123"]);

    // The backup side refuses the same way, and records no backup.
    let mut args = vec!["backup", "resources", "--kubeconfig", wrong.as_str()];
    args.extend(["--include-namespaces", "shop"]);
    let (out, _, err) = run(&mut e.env.cmd(&args));
    assert_eq!(out.status.code(), Some(5), "{err}");
    // A namespace that does not exist is named.
    let (out, _, err) =
        run(&mut e
            .env
            .cmd(&["backup", "resources", "--include-namespaces", "nope"]));
    assert_eq!(out.status.code(), Some(7), "{err}");
    assert!(err.contains("namespace `nope` does not exist"), "{err}");
    let list = e.env.json(&["backup", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");

    // None of it applied anything.
    assert!(!e.exists("default", "namespace", "shop"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_flags_choose_the_objects_on_both_sides() {
    let e = Env::new().await;
    let file = e.c.write(
        "more.yaml",
        &format!(
            "{}---\n{}",
            app("shop-eu").replace("name: shop-eu, labels: {team: shop}", "name: shop-eu"),
            r#"apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: private, namespace: shop, labels: {drctl.io/exclude-from-backup: "true"}}
data: {k: v}
---
apiVersion: v1
kind: Event
metadata: {name: web.1, namespace: shop}
involvedObject: {kind: Pod, name: web, namespace: shop}
reason: Started
message: started
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: widget-viewer}
rules: [{apiGroups: [example.com], resources: [widgets], verbs: [get]}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: unrelated}
rules: []
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: view-widgets, namespace: shop}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: widget-viewer}
subjects: [{kind: ServiceAccount, name: web, namespace: shop}]
---
apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-data}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  hostPath: {path: /tmp/pv-data}
  claimRef: {name: data, namespace: shop}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: elsewhere, namespace: other}
data: {k: v}
"#
        ),
    );
    e.c.ok(&["apply", "-f", file.to_str().unwrap()]);
    // A ReplicaSet controlled by the Deployment, as its controller makes it.
    let deploy_uid = e.get("shop", "deployment", "web")["metadata"]["uid"].clone();
    let rs = e.c.write("rs.yaml", &format!(
        r#"apiVersion: apps/v1
kind: ReplicaSet
metadata:
  name: web-abc
  namespace: shop
  ownerReferences: [{{apiVersion: apps/v1, kind: Deployment, name: web, uid: {deploy_uid}, controller: true}}]
spec:
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec: {{containers: [{{name: web, image: nginx:1.27}}]}}
"#
    ));
    e.c.ok(&["apply", "-f", rs.to_str().unwrap()]);

    let b = e.backup(&[
        "--include-namespaces",
        "shop*",
        "--exclude-namespaces",
        "shop-eu",
    ]);
    let id = b["backup_id"].as_str().unwrap();
    let plan = e.restore(id, &["--dry-run"]);
    let mut got: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{} {}/{}",
                s["kind"].as_str().unwrap(),
                s["namespace"].as_str().unwrap_or("-"),
                s["name"].as_str().unwrap()
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<String> = [
        "ClusterRole -/widget-viewer",
        "ConfigMap shop/settings",
        "CustomResourceDefinition -/widgets.example.com",
        "Deployment shop/web",
        "Namespace -/shop",
        "PersistentVolume -/pv-data",
        "PersistentVolumeClaim shop/data",
        "ReplicaSet shop/web-abc",
        "Role shop/reader",
        "RoleBinding shop/view-widgets",
        "RoleBinding shop/web-reads",
        "Secret shop/db",
        "Service shop/web",
        "ServiceAccount shop/web",
        "Widget shop/w1",
        "Widget shop/w2",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    want.sort();
    // Not: shop-eu (excluded), other, the opted-out ConfigMap, the Event,
    // the unrelated ClusterRole.
    assert_eq!(got, want);
    let rs_step = step(&plan, "ReplicaSet", "web-abc");
    assert_eq!(rs_step["action"], "skip");
    assert!(
        rs_step["reason"]
            .as_str()
            .unwrap()
            .contains("owned by Deployment web")
    );

    // The same flags on restore narrow the backup further.
    let plan = e.restore(
        id,
        &[
            "--dry-run",
            "--include-resources",
            "configmaps,*.example.com",
            "--include-cluster-resources",
            "false",
        ],
    );
    let mut kinds: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["ConfigMap", "Widget", "Widget"]);
    let plan = e.restore(id, &["--dry-run", "-l", "app=shop"]);
    let mut got: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["namespace"].is_string())
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, ["settings", "web"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_restored_only_when_asked() {
    let e = Env::new().await;
    e.c.ok(&[
        "patch",
        "-n",
        "shop",
        "widget",
        "w1",
        "--subresource",
        "status",
        "--type",
        "merge",
        "-p",
        r#"{"status":{"phase":"Ready"}}"#,
    ]);
    assert_eq!(e.get("shop", "widget", "w1")["status"]["phase"], "Ready");
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();

    e.c.ok(&["delete", "namespace", "shop"]);
    e.restore(id, &[]);
    assert!(e.get("shop", "widget", "w1").get("status").is_none());

    e.c.ok(&["delete", "namespace", "shop"]);
    let r = e.restore(id, &["--restore-status"]);
    assert_eq!(counts(&r).4, 0, "{r:#}");
    let w = e.get("shop", "widget", "w1");
    assert_eq!(w["status"]["phase"], "Ready", "{w:#}");
}

/// Production's PersistentVolume, bound to shop/data with reclaim Delete.
/// A restore under a mapping with `--existing update` (as a drill runs)
/// must leave it bound to production: the plan skips it, and the copied
/// claim does not name it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapped_restore_never_takes_production_s_volume() {
    let e = Env::new().await;
    let pv = e.c.write(
        "pv.yaml",
        r#"apiVersion: v1
kind: PersistentVolume
metadata: {name: pv-prod}
spec:
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /srv/prod}
  claimRef: {namespace: shop, name: data}
"#,
    );
    e.c.ok(&["apply", "-f", pv.to_str().unwrap()]);
    e.c.ok(&[
        "patch",
        "-n",
        "shop",
        "persistentvolumeclaim",
        "data",
        "--type",
        "merge",
        "-p",
        r#"{"spec":{"volumeName":"pv-prod"}}"#,
    ]);
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    let before = e.c.json(&["get", "persistentvolume", "pv-prod"]);

    // The plan shows the cluster-scoped volume in a section of its own,
    // with what will (not) happen to it and why.
    let (code, text, _) = e.restore_text(
        id,
        &[
            "--dry-run",
            "--namespace-mapping",
            "shop=shop-drill",
            "--existing",
            "update",
        ],
    );
    assert_eq!(code, 0, "{text}");
    let (ordinary, special) = text
        .split_once("cluster-wide and privileged objects (read these first):\n")
        .unwrap_or_else(|| panic!("no section of its own: {text}"));
    assert!(!ordinary.contains("pv-prod"), "{text}");
    assert!(
        special.contains("skip       PersistentVolume pv-prod [cluster-scoped]: a mapped restore"),
        "{text}"
    );
    assert!(special.contains("RoleBinding shop-drill/web-reads (from shop) [grants permissions]"));
    assert!(!special.contains("Namespace shop-drill"), "{text}");

    let r = e.restore(
        id,
        &[
            "--namespace-mapping",
            "shop=shop-drill",
            "--existing",
            "update",
        ],
    );
    let s = step(&r, "PersistentVolume", "pv-prod");
    assert_eq!(s["action"], "skip", "{s:#}");
    let after = e.c.json(&["get", "persistentvolume", "pv-prod"]);
    assert_eq!(after["spec"]["claimRef"]["namespace"], "shop", "{after:#}");
    assert_eq!(
        after["metadata"]["resourceVersion"], before["metadata"]["resourceVersion"],
        "production's volume was changed"
    );
    let claim = e.get("shop-drill", "persistentvolumeclaim", "data");
    assert!(
        claim["spec"].get("volumeName").is_none(),
        "the copy names production's volume: {claim:#}"
    );
}

/// A mapping whose target is another namespace the restore brings as it
/// is would pour two namespaces into one: refused before anything is
/// applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mapping_onto_a_restored_namespace_is_refused() {
    let e = Env::new().await;
    let other = e.c.write("web.yaml", &app("web"));
    e.c.ok(&["apply", "-f", other.to_str().unwrap()]);
    let b = e.backup(&["--include-namespaces", "shop,web"]);
    let id = b["backup_id"].as_str().unwrap();
    let before = e.get("web", "configmap", "settings");
    let (code, out, err) = e.restore_text(id, &["--namespace-mapping", "shop=web"]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("also brings unmapped"), "{err}");
    let after = e.get("web", "configmap", "settings");
    assert_eq!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
}

/// A restore whose namespace or type filter matches nothing in the backup
/// (a typo at 3 a.m.) is refused naming what the backup holds, instead of
/// restoring nothing and exiting 0; and the catalog and `backup list` say
/// how big and how long a resources backup was, as the command did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_filter_that_matches_nothing_names_what_the_backup_holds() {
    let e = Env::new().await;
    let b = e.backup(&["--include-namespaces", "shop"]);
    let id = b["backup_id"].as_str().unwrap();
    let before = versions(&e);

    let (code, out, err) = e.restore_text(id, &["--include-namespaces", "shopp"]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(
        err.contains("holds no namespace matching --include-namespaces shopp"),
        "{err}"
    );
    assert!(err.contains("it holds: shop"), "{err}");
    let (code, out, err) = e.restore_text(id, &["--include-resources", "deploymnets"]);
    assert_eq!(code, 7, "{out}{err}");
    assert!(err.contains("deployments.apps"), "{err}");
    assert_eq!(
        versions(&e),
        before,
        "a refused restore changed the cluster"
    );

    let list = e.env.json(&["backup", "list", "--kind", "resources"]);
    let row = &list[0];
    assert_eq!(row["bytes"], b["bytes"], "{row:#}");
    assert!(row["bytes"].as_u64().unwrap() > 0, "{row:#}");
    assert!(row["seconds"].as_f64().unwrap() > 0.0, "{row:#}");
    assert_eq!(row["stats"]["seconds"], b["seconds"], "{row:#}");
    assert_eq!(
        row["stats"]["uploaded_bytes"], b["uploaded_bytes"],
        "{row:#}"
    );
    assert!(
        row["stats"]["objects_per_second"].as_f64().unwrap() > 0.0,
        "{row:#}"
    );
    let text = e.env.ok(&["backup", "list"]);
    assert!(text.contains("resources  resources"), "{text}");
    let page = e.env.ok(&["backup", "describe", "resources@latest"]);
    assert!(page.contains("shop: "), "{page}");
    assert!(page.contains("by type:"), "{page}");
}

/// docs/runbook.md's "a namespace was deleted", run as written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipe_namespace_deleted() {
    let e = Env::new().await;
    e.backup(&["--include-namespaces", "shop", "--name", "shop"]);
    e.c.ok(&["delete", "namespace", "shop"]);
    assert!(!e.exists("shop", "configmap", "settings"));
    let (out, stdout, stderr) = crate::harness::run_recipe(
        "namespace-deleted",
        &e.env.config,
        &e.env.identity,
        &[("BACKUP", "shop"), ("NAMESPACE", "shop")],
    );
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_no_secret(&format!("{stdout}{stderr}"), &[SECRET]);
    for (kind, name) in OBJECTS {
        assert!(e.exists("shop", kind, name), "{kind} {name} not restored");
    }
}
