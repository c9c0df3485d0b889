//! deploy/'s dev overlay against the stand-in API server, as an operator
//! checks it before applying: `kubectl apply --server-side --dry-run=server`
//! of everything `kubectl kustomize` renders. (scripts/check-deploy checks
//! the same manifests offline: schemas, checkov, promtool.)

use serde_json::Value;

use crate::apiserver::Cluster;

#[tokio::test(flavor = "multi_thread")]
async fn the_dev_overlay_applies_server_side_as_a_dry_run_and_creates_nothing() {
    let c = Cluster::start().await;
    let overlay = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/overlays/dev");
    let rendered = c.ok(&["kustomize", overlay]);
    let file = c.write("dev.yaml", &rendered);
    let objects: Vec<Value> = serde_yaml_ng::Deserializer::from_str(&rendered)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect();
    assert!(objects.len() > 20, "{} objects rendered", objects.len());

    // The Prometheus Operator's kinds, as a cluster that runs it has them;
    // and the namespaces, which a dry run does not create (a real server
    // refuses objects in a namespace that does not exist, too).
    let crds = c.write(
        "crds.yaml",
        include_str!("fixtures/prometheus-operator-crds.yaml"),
    );
    c.ok(&["apply", "-f", crds.to_str().unwrap()]);
    let namespaces: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .map(|o| {
            format!(
                "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {}}}\n",
                o["metadata"]["name"].as_str().unwrap()
            )
        })
        .collect();
    assert!(namespaces.len() >= 2, "drctl-system and drctl-node");
    let ns = c.write("namespaces.yaml", &namespaces.join("---\n"));
    c.ok(&["apply", "-f", ns.to_str().unwrap()]);

    let out = c.ok(&[
        "apply",
        "--server-side",
        "--dry-run=server",
        "--field-manager=drctl-deploy-check",
        "-f",
        file.to_str().unwrap(),
    ]);
    let applied = out
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(applied, objects.len(), "every object accepted:\n{out}");

    // A dry run changes nothing.
    let there = c.json(&["get", "deployments,daemonsets,services", "-A"]);
    assert_eq!(
        there["items"].as_array().unwrap().len(),
        0,
        "a dry run created: {there:#}"
    );
}
