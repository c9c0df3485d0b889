#!/usr/bin/env python3
"""Evaluates the ValidatingAdmissionPolicies of deploy/base offline, with
cel-python, on admission requests they must allow and must refuse.

    check_admission.py RENDERED.yaml

No API server runs here, so this is the nearest to admission we get: the
expressions are CEL as Kubernetes evaluates them, on plain JSON (the API
server types them; these policies use nothing that differs). The pod-shape
cases start from the agent's own pod template in the render, so a change to
the DaemonSet that the policy would refuse fails here too.
"""
import copy
import sys

import celpy
import yaml
from celpy import celtypes, json_to_cel

WORKER = "system:serviceaccount:drctl-system:drctl-drill-worker"
env = celpy.Environment()


def admit(policy, request, obj=None, old=None):
    """(allowed, messages) of `policy` for one request."""
    act = {"request": json_to_cel(request), "object": json_to_cel(obj), "oldObject": json_to_cel(old)}
    variables = {}

    def bind():
        act["variables"] = celtypes.MapType({celtypes.StringType(k): v for k, v in variables.items()})

    bind()
    for cond in policy["spec"].get("matchConditions", []):
        if not env.program(env.compile(cond["expression"])).evaluate(act):
            return True, ["(not matched)"]
    for v in policy["spec"].get("variables", []):
        variables[v["name"]] = env.program(env.compile(v["expression"])).evaluate(act)
        bind()
    refused = []
    for v in policy["spec"]["validations"]:
        if not env.program(env.compile(v["expression"])).evaluate(act):
            if "messageExpression" in v:
                refused.append(str(env.program(env.compile(v["messageExpression"])).evaluate(act)))
            else:
                refused.append(v.get("message", v["expression"]))
    return not refused, refused


def request(op, resource, namespace="", subresource="", group="", user=WORKER):
    return {"operation": op, "resource": {"group": group, "version": "v1", "resource": resource},
            "subResource": subresource, "namespace": namespace, "name": "",
            "userInfo": {"username": user}}


def main():
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    agent = next(d for d in docs if d["kind"] == "DaemonSet" and d["metadata"]["name"] == "drctl-agent")
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "drctl-agent-x", "namespace": "drctl-node"},
           "spec": copy.deepcopy(agent["spec"]["template"]["spec"])}

    def variant(change):
        p = copy.deepcopy(pod)
        change(p["spec"])
        return p

    ns = lambda name: {"metadata": {"name": name}}  # noqa: E731
    worker = policies["drctl-drill-worker-scope"]
    shape = policies["drctl-node-pod-shape"]
    cases = [
        # (what, policy, request, object, oldObject, allowed)
        ("worker creates namespace drill-shop-1a2b3c4d", worker, request("CREATE", "namespaces"), ns("drill-shop-1a2b3c4d"), None, True),
        ("worker creates namespace shop", worker, request("CREATE", "namespaces"), ns("shop"), None, False),
        ("worker deletes namespace drill-x", worker, request("DELETE", "namespaces", "drill-x"), None, ns("drill-x"), True),
        ("worker deletes namespace kube-system", worker, request("DELETE", "namespaces", "kube-system"), None, ns("kube-system"), False),
        ("worker applies a Secret in drill-shop-1", worker, request("UPDATE", "secrets", "drill-shop-1"), ns("s"), ns("s"), True),
        ("worker creates a Deployment in shop", worker, request("CREATE", "deployments", "shop", group="apps"), ns("d"), None, False),
        ("worker creates a ClusterRoleBinding", worker, request("CREATE", "clusterrolebindings", group="rbac.authorization.k8s.io"), ns("x"), None, False),
        ("worker execs into a pod in shop", worker, request("CONNECT", "pods", "shop", "exec"), {}, None, False),
        ("someone else creates namespace shop", worker, request("CREATE", "namespaces", user="alice"), ns("shop"), None, True),
        ("the agent's own pod", shape, request("CREATE", "pods", "drctl-node"), pod, None, True),
        ("a privileged container", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s["containers"][0]["securityContext"].update(privileged=True)), None, False),
        ("hostPath /", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s["volumes"].append({"name": "root", "hostPath": {"path": "/"}})), None, False),
        ("CAP_SYS_ADMIN", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s["containers"][0]["securityContext"]["capabilities"]["add"].append("SYS_ADMIN")), None, False),
        ("the host network", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s.update(hostNetwork=True)), None, False),
        ("a privileged init container", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s.update(initContainers=[{"name": "i", "image": "x", "securityContext": {"privileged": True}}])), None, False),
        ("the restore agent's capabilities", shape, request("CREATE", "pods", "drctl-node"),
         variant(lambda s: s["containers"][0]["securityContext"]["capabilities"].update(
             add=["DAC_READ_SEARCH", "DAC_OVERRIDE", "CHOWN", "FOWNER"])), None, True),
    ]
    wrong = 0
    for what, policy, req, obj, old, want in cases:
        allowed, why = admit(policy, req, obj, old)
        if allowed != want:
            wrong += 1
            print(f"{policy['metadata']['name']}: {what}: {'allowed' if allowed else 'refused'}, "
                  f"expected {'allowed' if want else 'refused'} {why if not allowed else ''}")
    print(f"{len(cases) - wrong}/{len(cases)} admission cases as expected", file=sys.stderr)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
