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
async fn a_node_without_an_agent_and_an_unmounted_claim_are_reported_not_hidden() {
    let mut shop = Shop::new(0).await;
    shop.nodes[0].start(&shop.env); // node-b has no agent
    shop.nodes[0].started(&shop.env);
    shop.cluster.ok(&["delete", "pod", "-n", "shop", "pg-0"]);
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
    assert!(reason("shop/pgdata").contains("no running pod mounts it"));
    assert_eq!(member(&set, "shop/data-db-0")["status"], "complete");
}
