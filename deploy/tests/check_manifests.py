#!/usr/bin/env python3
"""drctl's own checks of rendered manifests: the rules of deploy/ that a
generic scanner (checkov) does not know.

    check_manifests.py [--rules drctl-rules.yaml] RENDERED.yaml...

Each file is one overlay rendered by `kubectl kustomize`. Prints one line per
problem, `FILE: CHECK: what`, and exits 1 when there is any. The checks:

  default-deny    every namespace it creates or runs pods in has a NetworkPolicy
                  selecting all pods, for Ingress and Egress, allowing nothing
  pod-security    every Namespace carries enforce/audit/warn labels;
                  drctl-system enforces `restricted`
  placeholders    no NetworkPolicy peer is still a base placeholder
                  (192.0.2.0/24): the overlay's site values were applied
  container       every container: no privilege escalation, not privileged,
                  read-only root filesystem, RuntimeDefault seccomp, ALL
                  capabilities dropped, only the allowed ones added, CPU and
                  memory requests and limits, non-root (the agent excepted)
  host            no host network/PID/IPC or host port; hostPath only for the
                  agent, only the kubelet's pods directory, read-only with
                  HostToContainer (writable only in restore mode)
  identity        only the drill worker references the Secret drctl-identity
  token           pods say whether they mount a service account token;
                  service accounts do not mount one by default; a pod that
                  mounts one runs under an account some binding names
  monitoring      the ServiceMonitor selects the server's Service and port;
                  the PrometheusRule's groups are the plain rules file's
"""
import argparse
import ipaddress
import sys

import yaml

IDENTITY_SECRET = "drctl-identity"
PLACEHOLDER_NET = ipaddress.ip_network("192.0.2.0/24")
WORKLOAD_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job", "CronJob", "Pod"}
AGENT_CAPS = {"DAC_READ_SEARCH"}
AGENT_RESTORE_CAPS = {"DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER"}
KUBELET_PODS = "/var/lib/kubelet/pods"

problems = []


def fail(path, check, what):
    problems.append(f"{path}: {check}: {what}")


def name_of(obj):
    m = obj.get("metadata", {})
    ns = m.get("namespace")
    return f"{obj['kind']} {ns + '/' if ns else ''}{m.get('name')}"


def pod_spec(obj):
    kind = obj["kind"]
    if kind == "Pod":
        return obj.get("spec", {}), obj.get("metadata", {})
    if kind == "CronJob":
        tpl = obj["spec"]["jobTemplate"]["spec"]["template"]
    else:
        tpl = obj["spec"]["template"]
    return tpl.get("spec", {}), tpl.get("metadata", {})


def component(obj):
    return obj.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")


def check_namespaces(path, objs):
    namespaces = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Namespace"}
    # The namespaces this render creates, and any other that runs its pods
    # (not one where it only binds a role, such as a helper-pod RoleBinding).
    used = {o["metadata"].get("namespace") for o in objs if o["kind"] in WORKLOAD_KINDS} - {None}
    for ns, o in namespaces.items():
        labels = o["metadata"].get("labels", {})
        for mode in ("enforce", "audit", "warn"):
            if f"pod-security.kubernetes.io/{mode}" not in labels:
                fail(path, "pod-security", f"Namespace {ns} has no pod-security.kubernetes.io/{mode} label")
        if ns == "drctl-system" and labels.get("pod-security.kubernetes.io/enforce") != "restricted":
            fail(path, "pod-security", "Namespace drctl-system does not enforce `restricted`")
    for ns in sorted(set(namespaces) | used):
        denies = [
            o for o in objs
            if o["kind"] == "NetworkPolicy" and o["metadata"].get("namespace") == ns
            and not o["spec"].get("podSelector")
            and {"Ingress", "Egress"} <= set(o["spec"].get("policyTypes", []))
            and not o["spec"].get("ingress") and not o["spec"].get("egress")
        ]
        if not denies:
            fail(path, "default-deny", f"namespace {ns} has no default-deny NetworkPolicy "
                 "(podSelector {}, policyTypes [Ingress, Egress], no rules)")


def check_placeholders(path, objs):
    for o in objs:
        if o["kind"] != "NetworkPolicy":
            continue
        rules = o["spec"].get("ingress", []) + o["spec"].get("egress", [])
        for r in rules:
            for peer in r.get("to", []) + r.get("from", []):
                cidr = peer.get("ipBlock", {}).get("cidr")
                if cidr and ipaddress.ip_network(cidr, strict=False).subnet_of(PLACEHOLDER_NET):
                    fail(path, "placeholders", f"{name_of(o)} still has the base placeholder {cidr}: "
                         "the overlay's site.yaml did not replace it (components/site)")


def secret_refs(spec):
    """Names of Secrets a pod spec references, however it references them."""
    names = set()
    for v in spec.get("volumes", []) or []:
        if "secret" in v:
            names.add(v["secret"].get("secretName"))
        for src in v.get("projected", {}).get("sources", []) or []:
            if "secret" in src:
                names.add(src["secret"].get("name"))
    for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for e in c.get("env", []) or []:
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                names.add(ref.get("name"))
        for e in c.get("envFrom", []) or []:
            if "secretRef" in e:
                names.add(e["secretRef"].get("name"))
    return names


def check_workloads(path, objs):
    accounts = {(o["metadata"].get("namespace"), o["metadata"]["name"]): o
                for o in objs if o["kind"] == "ServiceAccount"}
    bound = set()
    for o in objs:
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding"):
            for s in o.get("subjects", []) or []:
                if s.get("kind") == "ServiceAccount":
                    bound.add((s.get("namespace", o["metadata"].get("namespace")), s["name"]))
    for (ns, name), sa in accounts.items():
        if sa.get("automountServiceAccountToken") is not False:
            fail(path, "token", f"ServiceAccount {ns}/{name} does not set automountServiceAccountToken: false")

    for o in objs:
        if o["kind"] not in WORKLOAD_KINDS:
            continue
        who = name_of(o)
        ns = o["metadata"].get("namespace")
        spec, tmeta = pod_spec(o)
        comp = component(o)
        is_agent = comp == "agent"
        restore_mode = o["metadata"].get("labels", {}).get("drctl.io/agent-mode") == "restore"

        if IDENTITY_SECRET in secret_refs(spec) and comp != "drill-worker":
            fail(path, "identity", f"{who} references Secret {IDENTITY_SECRET}: only the drill worker may hold the age identity")

        auto = spec.get("automountServiceAccountToken")
        if auto is None:
            fail(path, "token", f"{who} does not say whether it mounts a service account token")
        sa = spec.get("serviceAccountName", "default")
        if auto and (ns, sa) not in bound:
            fail(path, "token", f"{who} mounts a token for ServiceAccount {sa}, which no binding here names")

        for key in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(key):
                fail(path, "host", f"{who} sets {key}")
        host_volumes = {v["name"]: v["hostPath"] for v in spec.get("volumes", []) or [] if "hostPath" in v}
        for vname, hp in host_volumes.items():
            if not is_agent or ns != "drctl-node":
                fail(path, "host", f"{who} mounts hostPath {hp.get('path')}: only the agent in drctl-node may")
            elif hp.get("path") != KUBELET_PODS:
                fail(path, "host", f"{who} mounts hostPath {hp.get('path')}, not {KUBELET_PODS}")

        psc = spec.get("securityContext", {}) or {}
        for c in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            cw = f"{who} container {c['name']}"
            sc = c.get("securityContext", {}) or {}
            if sc.get("allowPrivilegeEscalation") is not False:
                fail(path, "container", f"{cw}: allowPrivilegeEscalation is not false")
            if sc.get("privileged"):
                fail(path, "container", f"{cw}: privileged")
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(path, "container", f"{cw}: readOnlyRootFilesystem is not true")
            seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
            if seccomp != "RuntimeDefault":
                fail(path, "container", f"{cw}: seccompProfile is not RuntimeDefault")
            caps = sc.get("capabilities", {}) or {}
            if "ALL" not in (caps.get("drop") or []):
                fail(path, "container", f"{cw}: capabilities do not drop ALL")
            added = set(caps.get("add") or [])
            allowed = (AGENT_RESTORE_CAPS if restore_mode else AGENT_CAPS) if is_agent else set()
            if not added <= allowed:
                fail(path, "container", f"{cw}: adds capabilities {sorted(added - allowed)} (allowed: {sorted(allowed) or 'none'})")
            non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
            if not is_agent and non_root is not True:
                fail(path, "container", f"{cw}: runAsNonRoot is not true")
            res = c.get("resources", {}) or {}
            for kind in ("requests", "limits"):
                for r in ("cpu", "memory"):
                    if r not in (res.get(kind) or {}):
                        fail(path, "container", f"{cw}: no {r} {kind[:-1]}")
            for p in c.get("ports", []) or []:
                if p.get("hostPort"):
                    fail(path, "host", f"{cw}: hostPort {p['hostPort']}")
            for m in c.get("volumeMounts", []) or []:
                if m["name"] in host_volumes:
                    if not m.get("readOnly") and not restore_mode:
                        fail(path, "host", f"{cw}: hostPath {m['mountPath']} is writable outside restore mode")
                    if m.get("mountPropagation") != "HostToContainer":
                        fail(path, "host", f"{cw}: hostPath {m['mountPath']} lacks mountPropagation: HostToContainer")


def check_monitoring(path, objs, rules_file):
    services = [o for o in objs if o["kind"] == "Service"]
    for sm in (o for o in objs if o["kind"] == "ServiceMonitor"):
        sel = sm["spec"].get("selector", {}).get("matchLabels", {})
        names = sm["spec"].get("namespaceSelector", {}).get("matchNames", [sm["metadata"].get("namespace")])
        hits = [s for s in services if s["metadata"].get("namespace") in names
                and sel.items() <= s["metadata"].get("labels", {}).items()]
        if not hits:
            fail(path, "monitoring", f"{name_of(sm)} selects no Service")
        ports = {p.get("name") for s in hits for p in s["spec"].get("ports", [])}
        for ep in sm["spec"].get("endpoints", []):
            if ep.get("port") not in ports:
                fail(path, "monitoring", f"{name_of(sm)} scrapes port {ep.get('port')!r}, which the Service does not name")
    if rules_file:
        with open(rules_file) as f:
            want = yaml.safe_load(f)["groups"]
        for pr in (o for o in objs if o["kind"] == "PrometheusRule"):
            if pr["spec"].get("groups") != want:
                fail(path, "monitoring", f"{name_of(pr)} does not carry the groups of {rules_file} "
                     "(run python3 deploy/tests/sync_rules.py)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", help="plain rules file the PrometheusRule must equal")
    ap.add_argument("files", nargs="+", metavar="[LABEL=]FILE",
                    help="a rendered overlay; LABEL names it in messages (default: the file)")
    args = ap.parse_args()
    for arg in args.files:
        path, _, file = arg.rpartition("=") if "=" in arg else (arg, "", arg)
        with open(file) as f:
            objs = [d for d in yaml.safe_load_all(f) if d]
        check_namespaces(path, objs)
        check_placeholders(path, objs)
        check_workloads(path, objs)
        check_monitoring(path, objs, args.rules)
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
