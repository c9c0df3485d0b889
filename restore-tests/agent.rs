//! Namespace backups with their data, as a cluster runs them: pods bound to
//! named nodes, each node's kubelet directory laid out as the kubelet does
//! (by `drctl::agent::layout`'s rules, docs/agent.md), and one `drctl agent`
//! process per simulated node. There is no kubelet here; the tests play its
//! part, honestly: the same layout description, real processes.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::apiserver::Cluster;
use crate::harness::{VolumeEnv, run};

/// A simulated node: its kubelet root, and its agent while one runs.
struct Node {
    name: String,
    root: tempfile::TempDir,
    agent: Option<Child>,
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Node {
    fn new(name: &str) -> Node {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("pods")).unwrap();
        Node {
            name: name.into(),
            root,
            agent: None,
        }
    }

    fn start(&mut self, env: &VolumeEnv) {
        let log = env.ws.path(&format!("agent-{}.log", self.name));
        let child = env
            .cmd(&["agent", "--node", &self.name, "--kubelet-root"])
            .arg(self.root.path())
            .env("DRCTL_LOG", "info")
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .expect("start drctl agent");
        self.agent = Some(child);
    }

    /// Waits until the agent says it started, or fails with its log.
    fn started(&mut self, env: &VolumeEnv) {
        let log = env.ws.path(&format!("agent-{}.log", self.name));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let said = std::fs::read_to_string(&log).unwrap_or_default();
            if said.contains("drctl agent started") {
                return;
            }
            let exited = self.agent.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "the agent of {} did not start ({exited:?}):\n{said}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.agent.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Where the kubelet mounts CSI volume `pv` for pod `uid`
    /// (`pods/<uid>/volumes/kubernetes.io~csi/<pv>/mount`).
    fn csi_mount(&self, uid: &str, pv: &str) -> PathBuf {
        let p = self
            .root
            .path()
            .join("pods")
            .join(uid)
            .join("volumes/kubernetes.io~csi")
            .join(pv)
            .join("mount");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Where the kubelet exposes raw block volume `pv` to pod `uid`.
    fn block_device(&self, uid: &str, pv: &str) -> PathBuf {
        let dir = self
            .root
            .path()
            .join("pods")
            .join(uid)
            .join("volumeDevices/kubernetes.io~csi");
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(pv)
    }
}

/// The namespace `shop`: two Deployments, a StatefulSet `db` of two
/// replicas (pods db-0 on node-a, db-1 on node-b, each with its claim), a
/// PostgreSQL on claim `pgdata` (pod pg-0 on node-a), and a raw block
/// claim `raw` (pod raw-0 on node-b). The stand-in runs no controllers:
/// the pods are created as the StatefulSet controller and the scheduler
/// would have made them.
fn shop_yaml() -> String {
    let pv = |name: &str, mode: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: {name}}}\nspec:\n  \
             capacity: {{storage: 1Gi}}\n  accessModes: [ReadWriteOnce]\n  volumeMode: {mode}\n  \
             storageClassName: fast\n  csi: {{driver: disk.csi.example.com, volumeHandle: {name}}}\n---\n"
        )
    };
    let pvc = |name: &str, pv: &str, mode: &str| {
        format!(
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  accessModes: [ReadWriteOnce]\n  volumeMode: {mode}\n  storageClassName: fast\n  \
             volumeName: {pv}\n  resources: {{requests: {{storage: 1Gi}}}}\n---\n"
        )
    };
    let pod = |name: &str, node: &str, claim: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {{app: shop}}}}\n\
             spec:\n  nodeName: {node}\n  containers: [{{name: c, image: busybox, volumeMounts: \
             [{{name: data, mountPath: /data}}]}}]\n  volumes: [{{name: data, persistentVolumeClaim: \
             {{claimName: {claim}}}}}]\n---\n"
        )
    };
    let deployment = |name: &str| {
        format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: shop}}\n\
             spec:\n  replicas: 2\n  selector: {{matchLabels: {{app: {name}}}}}\n  template:\n    \
             metadata: {{labels: {{app: {name}}}}}\n    spec: {{containers: [{{name: c, image: nginx}}]}}\n---\n"
        )
    };
    let mut y = String::from("apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\n");
    y += &deployment("web");
    y += &deployment("api");
    y += "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: db, namespace: shop}\nspec:\n  \
          replicas: 2\n  serviceName: db\n  selector: {matchLabels: {app: db}}\n  template:\n    \
          metadata: {labels: {app: db}}\n    spec: {containers: [{name: c, image: postgres}]}\n  \
          volumeClaimTemplates: [{metadata: {name: data}, spec: {accessModes: [ReadWriteOnce], \
          resources: {requests: {storage: 1Gi}}}}]\n---\n";
    for (pv_name, claim, mode) in [
        ("pv-db-0", "data-db-0", "Filesystem"),
        ("pv-db-1", "data-db-1", "Filesystem"),
        ("pv-pg", "pgdata", "Filesystem"),
        ("pv-raw", "raw", "Block"),
    ] {
        y += &pv(pv_name, mode);
        y += &pvc(claim, pv_name, mode);
    }
    y += &pod("db-0", "node-a", "data-db-0");
    y += &pod("db-1", "node-b", "data-db-1");
    y += &pod("pg-0", "node-a", "pgdata");
    y += &pod("raw-0", "node-b", "raw").replace(
        "volumeMounts: [{name: data, mountPath: /data}]",
        "volumeDevices: [{name: data, devicePath: /dev/xvda}]",
    );
    y
}

struct Shop {
    env: VolumeEnv,
    cluster: Cluster,
    nodes: Vec<Node>,
    /// Claim → where its data is on its node.
    data: Vec<(String, PathBuf)>,
    _pg: tempfile::TempDir,
}

impl Shop {
    async fn new(big_db_1: usize) -> Shop {
        let env = VolumeEnv::new().await;
        let cluster = Cluster::start().await;
        let mut config = std::fs::read_to_string(&env.config).unwrap();
        config.push_str(&format!(
            "kubernetes:\n  kubeconfig: {}\nserver:\n  job_lease_seconds: 6\n",
            cluster.running.kubeconfig.display()
        ));
        std::fs::write(&env.config, config).unwrap();
        let file = env.ws.write("shop.yaml", &shop_yaml());
        cluster.ok(&["apply", "-f", file.to_str().unwrap()]);
        let pods = cluster.json(&["get", "pods", "-n", "shop"]);
        let uid = |name: &str| {
            pods["items"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["metadata"]["name"] == name)
                .and_then(|p| p["metadata"]["uid"].as_str())
                .unwrap_or_else(|| panic!("pod {name} has no uid"))
                .to_string()
        };
        let (a, b) = (Node::new("node-a"), Node::new("node-b"));
        // The kubelet's part: the mounts of each pod on its node.
        let db0 = a.csi_mount(&uid("db-0"), "pv-db-0");
        crate::tree::build_rich_tree(&db0);
        let db1 = b.csi_mount(&uid("db-1"), "pv-db-1");
        std::fs::write(db1.join("table.dat"), crate::tree::noise(7, 3 << 20)).unwrap();
        if big_db_1 > 0 {
            std::fs::write(db1.join("big.dat"), crate::tree::noise(8, big_db_1)).unwrap();
        }
        let pg = crate::drill::postgres_data(321);
        let pgdata = a.csi_mount(&uid("pg-0"), "pv-pg");
        let (out, _, stderr) = run(std::process::Command::new("cp")
            .arg("-a")
            .arg(pg.path().join("data/."))
            .arg(&pgdata));
        assert!(out.status.success(), "{stderr}");
        let raw = b.block_device(&uid("raw-0"), "pv-raw");
        std::fs::write(&raw, crate::tree::noise(9, 4 << 20)).unwrap();
        Shop {
            env,
            cluster,
            nodes: vec![a, b],
            data: vec![
                ("shop/data-db-0".into(), db0),
                ("shop/data-db-1".into(), db1),
                ("shop/pgdata".into(), pgdata),
                ("shop/raw".into(), raw),
            ],
            _pg: pg,
        }
    }

    /// The volumes' data as the nodes hold it: (PV, where).
    fn disks(&self) -> Vec<(String, PathBuf)> {
        let pv = |claim: &str| match claim {
            "shop/data-db-0" => "pv-db-0",
            "shop/data-db-1" => "pv-db-1",
            "shop/pgdata" => "pv-pg",
            _ => "pv-raw",
        };
        self.data
            .iter()
            .map(|(claim, path)| (pv(claim).to_string(), path.clone()))
            .collect()
    }

    /// Every node's agent, started together as a DaemonSet's pods are.
    fn start_agents(&mut self) {
        for n in &mut self.nodes {
            n.start(&self.env);
        }
        for n in &mut self.nodes {
            n.started(&self.env);
        }
    }

    /// The agents' logs, for failure messages.
    fn logs(&self) -> String {
        self.nodes
            .iter()
            .map(|n| {
                let log = self.env.ws.path(&format!("agent-{}.log", n.name));
                format!(
                    "--- agent {}:\n{}",
                    n.name,
                    std::fs::read_to_string(log).unwrap_or_default()
                )
            })
            .collect()
    }

    fn backup(&self, extra: &[&str]) -> (std::process::Output, Value, String) {
        let mut args = vec![
            "backup",
            "namespaces",
            "--include-namespaces",
            "shop",
            "--name",
            "shop",
            "-o",
            "json",
        ];
        args.extend(extra);
        let (out, stdout, stderr) = run(&mut self.env.cmd(&args));
        let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!("no JSON from backup namespaces ({e}):\n{stdout}\n{stderr}")
        });
        (out, v, stderr)
    }
}

fn member<'a>(set: &'a Value, name: &str) -> &'a Value {
    set["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .unwrap_or_else(|| panic!("no member {name} in {set:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_namespace_is_backed_up_with_its_volumes_by_the_agents_of_their_nodes() {
    let mut shop = Shop::new(0).await;
    shop.start_agents();
    let (out, set, stderr) = shop.backup(&[]);
    assert!(out.status.success(), "{set:#}\n{stderr}\n{}", shop.logs());
    assert_eq!(set["status"], "complete", "{set:#}");
    assert_eq!(set["members"].as_array().unwrap().len(), 5, "{set:#}");
    assert_eq!(member(&set, "shop.resources")["kind"], "resources");
    for (claim, node) in [
        ("shop/data-db-0", "node-a"),
        ("shop/data-db-1", "node-b"),
        ("shop/pgdata", "node-a"),
        ("shop/raw", "node-b"),
    ] {
        assert_eq!(member(&set, claim)["node"], node, "{set:#}");
    }

    // Every claim's data, restored from its member, is what the node had.
    for (claim, src) in &shop.data {
        let id = member(&set, claim)["backup_id"]
            .as_str()
            .unwrap()
            .to_string();
        let dst = shop
            .env
            .ws
            .path(&format!("restored-{}", claim.replace('/', "-")));
        let mut cmd = shop.env.cmd(&["restore", "volume", &id]);
        if claim.ends_with("raw") {
            cmd.arg("--block").arg(&dst);
        } else {
            cmd.arg("--to").arg(&dst);
        }
        let (o, so, se) = run(cmd.arg("--identity").arg(&shop.env.identity));
        assert!(o.status.success(), "{claim}: {so}{se}");
        if claim.ends_with("raw") {
            assert!(
                std::fs::read(src).unwrap() == std::fs::read(&dst).unwrap(),
                "{claim}"
            );
        } else {
            crate::tree::assert_same(src, &dst);
        }
    }

    // The members say which claim, volume, class and node.
    let listed = shop.env.json(&["backup", "list", "--kind", "volume"]);
    let pg = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "shop/pgdata")
        .unwrap();
    assert_eq!(pg["stats"]["claim"]["storage_class"], "fast", "{pg:#}");
    assert_eq!(pg["stats"]["volume"], "pv-pg");
    assert_eq!(pg["stats"]["node"], "node-a");
    assert!(pg["stats"]["claim"]["uid"].is_string());

    // One id, one status, its members on the page.
    let page = shop.env.ok(&["backup", "describe", "shop@latest"]);
    for want in [
        "namespaces backup `shop`",
        "5 member backup(s)",
        "shop/data-db-1",
        "on node-b",
    ] {
        assert!(page.contains(want), "{want}: {page}");
    }
    let sets = shop.env.json(&["backup", "list", "--kind", "namespaces"]);
    assert_eq!(sets.as_array().unwrap().len(), 1);
    assert_eq!(sets[0]["status"], "complete");

    // A drill of the set drills every member: the resources into a
    // scratch namespace, each claim's data (the raw block one too).
    let (o, report, stderr) = run(shop
        .env
        .cmd(&["drill", "run", "shop@latest", "-o", "json", "--identity"])
        .arg(&shop.env.identity));
    assert!(o.status.success(), "{report}\n{stderr}");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert_eq!(report["verdict"], "passed", "{report:#}");
    assert_eq!(report["backups"].as_array().unwrap().len(), 5, "{report:#}");
    let digests = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"] == "file_digests" && c["status"] == "passed")
        .count();
    assert_eq!(digests, 4, "{report:#}");
    let listed = shop.env.json(&["backup", "list", "--kind", "volume"]);
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["verified_by"] == report["drill_id"]),
        "{listed:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_agent_killed_mid_backup_leaves_the_set_partial_naming_the_claim() {
    let mut shop = Shop::new(600 << 20).await;
    shop.start_agents();
    // Kill node-b's agent while it reads db-1's big file.
    let db = shop.env.db.pool.clone();
    let killer = {
        let pool = db.clone();
        tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let running: Option<(String,)> = sqlx::query_as(
                    "SELECT schedule FROM jobs WHERE kind = 'volume' AND node = 'node-b' \
                       AND state = 'running' AND schedule LIKE '%/shop/data-db-1'",
                )
                .fetch_optional(&pool)
                .await
                .unwrap();
                if running.is_some() {
                    return true;
                }
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let backup = {
        let args: Vec<String> = [
            "backup",
            "namespaces",
            "--include-namespaces",
            "shop",
            "--name",
            "shop",
            "--agent-timeout",
            "5",
            "-o",
            "json",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let mut cmd = shop.env.cmd(&[]);
        cmd.args(&args);
        tokio::task::spawn_blocking(move || run(&mut cmd))
    };
    assert!(killer.await.unwrap(), "db-1's job never ran on node-b");
    shop.nodes[1].kill();
    let (out, stdout, stderr) = backup.await.unwrap();
    assert_eq!(out.status.code(), Some(8), "{stdout}\n{stderr}");
    let set: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(set["status"], "partial");
    let problems = set["problems"].as_array().unwrap();
    let db1 = problems
        .iter()
        .find(|p| p["claim"] == "shop/data-db-1")
        .unwrap_or_else(|| panic!("data-db-1 not named: {set:#}"));
    assert_eq!(db1["node"], "node-b");
    assert!(
        db1["reason"].as_str().unwrap().contains("node-b"),
        "{db1:#}"
    );
    // What node-a holds is in the set.
    assert_eq!(member(&set, "shop/pgdata")["status"], "complete");

    // The agent back, the next scheduled set completes: `drctl server`
    // runs a `namespaces` schedule (its latest slot at once).
    shop.nodes[1].start(&shop.env);
    shop.nodes[1].started(&shop.env);
    let mut config = std::fs::read_to_string(&shop.env.config).unwrap();
    config.push_str(
        "schedules:\n  - name: shop-hourly\n    cron: \"@hourly\"\n    \
         source: {namespaces: {include_namespaces: [shop], agent_timeout_seconds: 30}}\n",
    );
    std::fs::write(&shop.env.config, config).unwrap();
    let _server = crate::server::Server::start_with(&shop.env, "server.log", &[]);
    let deadline = Instant::now() + Duration::from_secs(180);
    let set = loop {
        let sets = shop.env.json(&[
            "backup",
            "list",
            "--kind",
            "namespaces",
            "--name",
            "shop-hourly",
        ]);
        if let Some(s) = sets
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["status"] != "running")
        {
            break s.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no scheduled set finished:\n{}\n{}",
            std::fs::read_to_string(shop.env.ws.path("server.log")).unwrap_or_default(),
            shop.logs()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(set["status"], "complete", "{set:#}\n{}", shop.logs());
    let page = shop.env.ok(&["backup", "describe", "shop-hourly@latest"]);
    assert!(page.contains("5 member backup(s)"), "{page}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_without_an_agent_is_reported_and_an_unmounted_claim_read_through_a_helper() {
    let mut shop = Shop::new(0).await;
    shop.nodes[0].start(&shop.env); // node-b has no agent
    shop.nodes[0].started(&shop.env);
    shop.cluster.ok(&["delete", "pod", "-n", "shop", "pg-0"]);
    let kubelet = Kubelet::start(&shop.cluster, &shop.nodes, shop.disks(), None);
    let (out, set, _) = shop.backup(&["--agent-timeout", "2"]);
    assert_eq!(out.status.code(), Some(8), "{set:#}");
    let reason = |claim: &str| {
        set["problems"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["claim"] == claim)
            .and_then(|p| p["reason"].as_str())
            .unwrap_or_else(|| panic!("{claim} not reported: {set:#}"))
            .to_string()
    };
    assert!(reason("shop/data-db-1").contains("no drctl agent on node node-b"));
    assert!(reason("shop/raw").contains("node-b"));
    assert_eq!(member(&set, "shop/data-db-0")["status"], "complete");
    // The claim no pod mounts is read through a helper pod that mounts it
    // read-only on a node with an agent, and the helper is gone after.
    let pg = member(&set, "shop/pgdata");
    assert_eq!(pg["status"], "complete", "{set:#}");
    assert_eq!(pg["node"], "node-a");
    let listed = shop.env.json(&[
        "backup",
        "list",
        "--kind",
        "volume",
        "--name",
        "shop/pgdata",
    ]);
    let helper = listed[0]["stats"]["pod"].as_str().unwrap().to_string();
    assert!(helper.starts_with("drctl-backup-pgdata-"), "{listed:#}");
    let pods = shop
        .cluster
        .ok(&["get", "pods", "-n", "shop", "-o", "name"]);
    assert!(!pods.contains("drctl-backup-"), "helper left: {pods}");
    let dst = shop.env.ws.path("pgdata-via-helper");
    let id = pg["backup_id"].as_str().unwrap();
    let (o, so, se) = run(shop
        .env
        .cmd(&["restore", "volume", id, "--to"])
        .arg(&dst)
        .arg("--identity")
        .arg(&shop.env.identity));
    assert!(o.status.success(), "{so}{se}");
    crate::tree::assert_same(&kubelet.mount("shop/pgdata"), &dst);
}

/// The kubelet's and a volume provisioner's part for pods made during a
/// test (helper pods, restored workloads): a claim marked for a node
/// (`volume.kubernetes.io/selected-node`, as the scheduler marks a
/// WaitForFirstConsumer claim) gets a new CSI volume `pvc-<uid>`; a pod on
/// a simulated node whose claims are bound gets their mounts laid out by
/// the kubelet's rules (docs/agent.md) and becomes Running. A volume's
/// data (its "disk") is where its first mount was laid out, or where the
/// test put it, and moves to the mount of the next pod that mounts it (a
/// ReadWriteOnce volume follows its pod). Where each claim's disk is now
/// is recorded by claim.
struct Kubelet {
    mounts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Kubelet {
    /// `small`: a claim (`ns/claim`) whose new volume is a 1 MiB tmpfs,
    /// too small for its data.
    fn start(
        cluster: &Cluster,
        nodes: &[Node],
        disks: Vec<(String, PathBuf)>,
        small: Option<&str>,
    ) -> Kubelet {
        use std::sync::atomic::Ordering;
        let addr = cluster.running.addr;
        let roots: Vec<(String, PathBuf)> = nodes
            .iter()
            .map(|n| (n.name.clone(), n.root.path().to_path_buf()))
            .collect();
        let mounts: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, PathBuf>>> =
            Default::default();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (m, s) = (mounts.clone(), stop.clone());
        let mut disks: std::collections::HashMap<String, PathBuf> = disks.into_iter().collect();
        let small = small.map(str::to_string);
        let task = tokio::spawn(async move {
            while !s.load(Ordering::Relaxed) {
                kubelet_round(addr, &roots, &m, &mut disks, small.as_deref()).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Kubelet {
            mounts,
            stop,
            task: Some(task),
        }
    }

    fn mount(&self, claim: &str) -> PathBuf {
        self.mounts
            .lock()
            .unwrap()
            .get(claim)
            .cloned()
            .unwrap_or_else(|| panic!("no pod mounted {claim}"))
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.task.take() {
            t.abort();
        }
        for path in self.mounts.lock().unwrap().values() {
            if path.is_dir() {
                // Only the small volume is a mount; others are not and fail.
                let _ = std::process::Command::new("umount")
                    .arg(path)
                    .stderr(std::process::Stdio::null())
                    .status();
            }
        }
    }
}

async fn api(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    ct: &str,
    body: &Value,
) -> Value {
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (_, text) = crate::apiserver::raw_request(addr, method, path, ct, &body).await;
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

fn items(v: &Value) -> Vec<Value> {
    v["items"].as_array().cloned().unwrap_or_default()
}

async fn kubelet_round(
    addr: std::net::SocketAddr,
    roots: &[(String, PathBuf)],
    mounts: &std::sync::Mutex<std::collections::HashMap<String, PathBuf>>,
    disks: &mut std::collections::HashMap<String, PathBuf>,
    small: Option<&str>,
) {
    const MERGE: &str = "application/merge-patch+json";
    let claims = items(
        &api(
            addr,
            "GET",
            "/api/v1/persistentvolumeclaims",
            "",
            &Value::Null,
        )
        .await,
    );
    // The provisioner: a volume where the claim's first consumer runs.
    for c in &claims {
        let selected = c["metadata"]["annotations"]["volume.kubernetes.io/selected-node"].as_str();
        if c["spec"]["volumeName"].is_string() || selected.is_none() {
            continue;
        }
        let (ns, name, uid) = (
            c["metadata"]["namespace"].as_str().unwrap(),
            c["metadata"]["name"].as_str().unwrap(),
            c["metadata"]["uid"].as_str().unwrap(),
        );
        let pv = format!("pvc-{uid}");
        let body = serde_json::json!({
            "apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv},
            "spec": {"capacity": {"storage": c["spec"]["resources"]["requests"]["storage"]},
                "accessModes": c["spec"]["accessModes"],
                "volumeMode": c["spec"]["volumeMode"].as_str().unwrap_or("Filesystem"),
                "storageClassName": c["spec"]["storageClassName"],
                "csi": {"driver": "disk.csi.example.com", "volumeHandle": pv},
                "claimRef": {"namespace": ns, "name": name, "uid": uid}}});
        api(
            addr,
            "POST",
            "/api/v1/persistentvolumes",
            "application/json",
            &body,
        )
        .await;
        let bind = serde_json::json!({"spec": {"volumeName": pv}});
        api(
            addr,
            "PATCH",
            &format!("/api/v1/namespaces/{ns}/persistentvolumeclaims/{name}"),
            MERGE,
            &bind,
        )
        .await;
    }
    // The kubelet: mounts, then Running.
    let pods = items(&api(addr, "GET", "/api/v1/pods", "", &Value::Null).await);
    'pods: for p in pods {
        let Some((_, root)) = roots
            .iter()
            .find(|(n, _)| p["spec"]["nodeName"].as_str() == Some(n))
        else {
            continue;
        };
        if p["status"]["phase"] == "Running" {
            continue;
        }
        let (ns, name, uid) = (
            p["metadata"]["namespace"].as_str().unwrap(),
            p["metadata"]["name"].as_str().unwrap(),
            p["metadata"]["uid"].as_str().unwrap(),
        );
        let mut laid = Vec::new();
        for v in p["spec"]["volumes"].as_array().cloned().unwrap_or_default() {
            let Some(claim) = v["persistentVolumeClaim"]["claimName"].as_str() else {
                continue;
            };
            let pvc = claims
                .iter()
                .find(|c| c["metadata"]["namespace"] == ns && c["metadata"]["name"] == claim);
            let Some(pv) = pvc.and_then(|c| c["spec"]["volumeName"].as_str()) else {
                continue 'pods; // not bound yet: the kubelet waits
            };
            let block = pvc.unwrap()["spec"]["volumeMode"] == "Block";
            let pod_dir = root.join("pods").join(uid);
            let path = if block {
                pod_dir.join("volumeDevices/kubernetes.io~csi").join(pv)
            } else {
                pod_dir
                    .join("volumes/kubernetes.io~csi")
                    .join(pv)
                    .join("mount")
            };
            if std::fs::symlink_metadata(&path).is_err() {
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                match disks.get(pv) {
                    // The disk moves to the pod that mounts it now.
                    Some(disk) => std::fs::rename(disk, &path).unwrap(),
                    None if block => drop(std::fs::File::create(&path).unwrap()),
                    None => {
                        std::fs::create_dir(&path).unwrap();
                        if small == Some(format!("{ns}/{claim}").as_str()) {
                            let (out, _, stderr) = run(std::process::Command::new("mount")
                                .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
                                .arg(&path));
                            assert!(
                                out.status.success(),
                                "mount a 1 MiB tmpfs as a full volume (the test runs as root, as \
                                 the CI does): {stderr}"
                            );
                        }
                    }
                }
                disks.insert(pv.to_string(), path.clone());
            }
            laid.push((format!("{ns}/{claim}"), path));
        }
        mounts.lock().unwrap().extend(laid);
        let running = serde_json::json!({"status": {"phase": "Running"}});
        api(
            addr,
            "PATCH",
            &format!("/api/v1/namespaces/{ns}/pods/{name}/status"),
            MERGE,
            &running,
        )
        .await;
    }
}

/// Watches namespace `ns` while a set restores into it: every time a
/// workload (a Deployment, StatefulSet or Pod other than a helper) is
/// there, every volume restore into `ns` must have succeeded already.
/// Returns (rounds that saw workloads, what was seen too early).
fn watch_order(
    cluster: &Cluster,
    db: sqlx::PgPool,
    ns: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    let addr = cluster.running.addr;
    let ns = ns.to_string();
    tokio::spawn(async move {
        let (mut seen, mut early) = (0, Vec::new());
        // A last round after `stop`: the restore has applied its workloads.
        loop {
            let last = stop.load(std::sync::atomic::Ordering::Relaxed);
            let mut workloads = Vec::new();
            for path in [
                format!("/apis/apps/v1/namespaces/{ns}/deployments"),
                format!("/apis/apps/v1/namespaces/{ns}/statefulsets"),
                format!("/api/v1/namespaces/{ns}/pods"),
            ] {
                for o in items(&api(addr, "GET", &path, "", &Value::Null).await) {
                    let name = o["metadata"]["name"].as_str().unwrap_or("").to_string();
                    if !name.starts_with("drctl-restore-") {
                        workloads.push(name);
                    }
                }
            }
            if !workloads.is_empty() {
                seen += 1;
                let (done, open): (i64, i64) = sqlx::query_as(
                    "SELECT count(*) FILTER (WHERE state = 'succeeded'), \
                       count(*) FILTER (WHERE state <> 'succeeded') \
                     FROM jobs WHERE kind = 'volume-restore' AND schedule LIKE '%/' || $1 || '/%'",
                )
                .bind(&ns)
                .fetch_one(&db)
                .await
                .unwrap();
                if done < 4 || open > 0 {
                    early.push(format!(
                        "{workloads:?} present with {done} volume restore(s) done, {open} not"
                    ));
                }
            }
            if last {
                break;
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        (seen, early)
    })
}

impl Shop {
    fn restore(&self, extra: &[&str]) -> (std::process::Output, Value, String) {
        let mut cmd = self
            .env
            .cmd(&["restore", "namespaces", "shop@latest", "-o", "json"]);
        cmd.args(extra).arg("--identity").arg(&self.env.identity);
        let (out, stdout, stderr) = run(&mut cmd);
        let v = serde_json::from_str(&stdout).unwrap_or_else(|e| {
            panic!(
                "no JSON from restore namespaces ({e}):\n{stdout}\n{stderr}\n{}",
                self.logs()
            )
        });
        (out, v, stderr)
    }

    /// Each claim's data in namespace `ns`, as its pods (the helper's, then
    /// the restored workload's) see it, is what the nodes had when the set
    /// was taken. Compared with `originals` (copies made at backup time).
    /// Copies of the claims' data as the nodes hold it now.
    fn copies(&self) -> Vec<(String, PathBuf)> {
        self.data
            .iter()
            .map(|(claim, src)| {
                let dst = self
                    .env
                    .ws
                    .path(&format!("original-{}", claim.replace('/', "-")));
                let (out, _, stderr) = run(std::process::Command::new("cp")
                    .arg("-a")
                    .arg(src)
                    .arg(&dst));
                assert!(out.status.success(), "{stderr}");
                (claim.clone(), dst)
            })
            .collect()
    }

    fn assert_restored(&self, kubelet: &Kubelet, ns: &str, originals: &[(String, PathBuf)]) {
        for (claim, src) in originals {
            let dst = kubelet.mount(&claim.replacen("shop/", &format!("{ns}/"), 1));
            if claim.ends_with("raw") {
                assert!(
                    std::fs::read(src).unwrap() == std::fs::read(&dst).unwrap(),
                    "{claim}: the raw block volume differs"
                );
            } else {
                crate::tree::assert_same(src, &dst);
            }
        }
    }
}

fn claim_step<'a>(report: &'a Value, claim: &str) -> &'a Value {
    report["claims"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["claim"] == claim)
        .unwrap_or_else(|| panic!("no claim {claim} in {report:#}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_set_restores_beside_the_original_and_after_its_namespace_is_deleted() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut shop = Shop::new(0).await;
    shop.start_agents();
    let (out, set, stderr) = shop.backup(&[]);
    assert!(out.status.success(), "{set:#}\n{stderr}\n{}", shop.logs());
    let originals = shop.copies();
    let kubelet = Kubelet::start(&shop.cluster, &shop.nodes, shop.disks(), None);

    // A copy beside the original, which keeps running.
    let mapped = ["--namespace-mapping", "shop=shop-copy"];
    let plan = {
        let mut args = mapped.to_vec();
        args.push("--dry-run");
        let (out, plan, stderr) = shop.restore(&args);
        assert!(out.status.success(), "{plan:#}\n{stderr}");
        plan
    };
    assert_eq!(plan["dry_run"], true);
    for (claim, node) in [
        ("shop-copy/data-db-0", "node-a"),
        ("shop-copy/data-db-1", "node-b"),
        ("shop-copy/pgdata", "node-a"),
        ("shop-copy/raw", "node-b"),
    ] {
        let c = claim_step(&plan, claim);
        assert_eq!(c["action"], "restore", "{c:#}");
        assert_eq!(c["node"], node, "{c:#}");
        assert!(
            c["helper_pod"]
                .as_str()
                .unwrap()
                .starts_with("drctl-restore-")
        );
    }
    let pv = plan["resources"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "PersistentVolume")
        .unwrap();
    assert_eq!(pv["action"], "skip", "{pv:#}");
    // The plan as on-call reads it: objects, then each claim's data with
    // its node, then the workloads.
    let page = shop.env.ok(&[
        "restore",
        "namespaces",
        "shop@latest",
        "--dry-run",
        "--namespace-mapping",
        "shop=shop-copy",
        "--identity",
        shop.env.identity.to_str().unwrap(),
    ]);
    eprintln!("{page}");
    for want in [
        "plan to restore set",
        "objects up to the claims first, then each claim's data, then the workloads",
        "restore   shop-copy/pgdata (from shop/pgdata)",
        "each claim's data, before any workload",
        "on node-a via helper pod drctl-restore-pgdata-",
        "StatefulSet shop-copy/db",
    ] {
        assert!(page.contains(want), "{want}:\n{page}");
    }
    // On a rebuilt cluster the nodes have other names: a node mapping
    // sends node-b's claims to node-a, and the plan says so.
    let (out, moved, stderr) = shop.restore(&[
        "--namespace-mapping",
        "shop=shop-copy",
        "--node-mapping",
        "node-b=node-a",
        "--dry-run",
    ]);
    assert!(out.status.success(), "{moved:#}\n{stderr}");
    let db1 = claim_step(&moved, "shop-copy/data-db-1");
    assert_eq!(db1["node"], "node-a", "{db1:#}");
    assert_eq!(db1["from_node"], "node-b", "{db1:#}");
    assert!(claim_step(&moved, "shop-copy/pgdata")["from_node"].is_null());
    let (out, refused, _) = shop.restore(&["--node-mapping", "node-b", "--dry-run"]);
    assert_eq!(out.status.code(), Some(3), "{refused:#}");
    assert!(
        refused
            .to_string()
            .contains("--node-mapping `node-b` is not OLD=NEW"),
        "{refused:#}"
    );
    let text = shop.cluster.ok(&["get", "namespaces"]);
    assert!(
        !text.contains("shop-copy"),
        "a dry run changed nothing: {text}"
    );

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let order = watch_order(
        &shop.cluster,
        shop.env.db.pool.clone(),
        "shop-copy",
        stop.clone(),
    );
    let (out, report, stderr) = shop.restore(&mapped);
    stop.store(true, Ordering::Relaxed);
    let (seen, early) = order.await.unwrap();
    assert!(
        out.status.success(),
        "{report:#}\n{stderr}\n{}",
        shop.logs()
    );
    for c in report["claims"].as_array().unwrap() {
        assert_eq!(c["outcome"], "restored", "{c:#}");
    }
    shop.assert_restored(&kubelet, "shop-copy", &originals);
    assert!(early.is_empty(), "workloads before their data: {early:#?}");
    assert!(seen > 0, "the watch never saw the restored workloads");
    let copy = shop
        .cluster
        .json(&["get", "deployments,statefulsets,pods", "-n", "shop-copy"]);
    let names: Vec<&str> = copy["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    for want in ["web", "api", "db", "db-0", "pg-0", "raw-0"] {
        assert!(names.contains(&want), "{want} not restored: {names:?}");
    }
    assert!(
        !names.iter().any(|n| n.starts_with("drctl-restore-")),
        "helper pods left: {names:?}"
    );
    // The original is untouched: its claims keep their volumes.
    let original = shop
        .cluster
        .json(&["get", "pvc", "data-db-0", "-n", "shop"]);
    assert_eq!(original["spec"]["volumeName"], "pv-db-0");

    // The namespace lost, the set restored in place.
    shop.cluster.ok(&["delete", "namespace", "shop"]);
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let order = watch_order(
        &shop.cluster,
        shop.env.db.pool.clone(),
        "shop",
        stop.clone(),
    );
    let (out, report, stderr) = shop.restore(&[]);
    stop.store(true, Ordering::Relaxed);
    let (seen, early) = order.await.unwrap();
    assert!(
        out.status.success(),
        "{report:#}\n{stderr}\n{}",
        shop.logs()
    );
    assert_eq!(report["claims"].as_array().unwrap().len(), 4, "{report:#}");
    shop.assert_restored(&kubelet, "shop", &originals);
    assert!(early.is_empty(), "workloads before their data: {early:#?}");
    assert!(seen > 0, "the watch never saw the restored workloads");
    // The agents held grants, never the identity: nothing in their logs
    // or the jobs' rows says otherwise.
    let leftovers: (i64,) = sqlx::query_as(
        "SELECT count(*) FROM jobs WHERE key_offer IS NOT NULL OR key_grant IS NOT NULL",
    )
    .fetch_one(&shop.env.db.pool)
    .await
    .unwrap();
    assert_eq!(leftovers.0, 0, "grants are cleared when their jobs end");
}

#[tokio::test(flavor = "multi_thread")]
async fn claims_that_cannot_get_their_data_are_named_and_their_workloads_held_back() {
    let mut shop = Shop::new(0).await;
    shop.start_agents();
    let (out, set, stderr) = shop.backup(&[]);
    assert!(out.status.success(), "{set:#}\n{stderr}\n{}", shop.logs());
    shop.nodes[1].kill(); // node-b: data-db-1 and raw
    // pgdata's new volume is 1 MiB: too small for a PostgreSQL data dir.
    let kubelet = Kubelet::start(
        &shop.cluster,
        &shop.nodes,
        shop.disks(),
        Some("shop-b/pgdata"),
    );
    let (out, report, stderr) =
        shop.restore(&["--namespace-mapping", "shop=shop-b", "--agent-timeout", "3"]);
    assert_eq!(out.status.code(), Some(8), "{report:#}\n{stderr}");
    assert!(stderr.contains("were not restored"), "{stderr}");
    let db1 = claim_step(&report, "shop-b/data-db-1");
    assert_eq!(db1["outcome"], "failed");
    assert!(
        db1["reason"]
            .as_str()
            .unwrap()
            .contains("no drctl agent on node node-b"),
        "{db1:#}"
    );
    assert_eq!(
        claim_step(&report, "shop-b/data-db-0")["outcome"],
        "restored"
    );
    let pg = claim_step(&report, "shop-b/pgdata");
    assert_eq!(pg["outcome"], "failed", "{pg:#}");
    let why = pg["reason"].as_str().unwrap();
    assert!(
        why.contains("the data of claim shop-b/pgdata on node node-a is")
            && why.contains("and its volume has 1.00 MiB free"),
        "{why}"
    );
    let small = kubelet.mount("shop-b/pgdata");
    assert_eq!(
        std::fs::read_dir(&small).unwrap().count(),
        0,
        "nothing written into the small volume"
    );
    let step = |kind: &str, name: &str| {
        report["resources"]["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind && s["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}: {report:#}"))
            .clone()
    };
    // The StatefulSet whose second claim has no data, and the pod of the
    // raw claim, would start on empty volumes: not applied, and said so.
    for (kind, name) in [
        ("StatefulSet", "db"),
        ("Pod", "raw-0"),
        ("Pod", "db-1"),
        ("Pod", "pg-0"),
    ] {
        let s = step(kind, name);
        assert_eq!(s["outcome"], "failed", "{s:#}");
        assert!(s["reason"].as_str().unwrap().contains("held back"), "{s:#}");
    }
    assert_eq!(step("Pod", "db-0")["outcome"], "created");
    assert_eq!(step("Deployment", "web")["outcome"], "created");
    let there = shop
        .cluster
        .json(&["get", "statefulsets,pods", "-n", "shop-b"]);
    let names: Vec<&str> = there["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["metadata"]["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"db") && !names.contains(&"raw-0") && !names.contains(&"pg-0"),
        "{names:?}"
    );
    assert!(names.contains(&"db-0"), "{names:?}");
}
