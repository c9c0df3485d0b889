#!/usr/bin/env python3
"""Writes deploy/base/monitoring/prometheusrule.yaml from the plain rules
file deploy/base/alerts/drctl-rules.yaml, so the Prometheus Operator gets the
same groups that promtool tests. With --check, writes nothing and exits 1
when the file is not what this script would write.

The copy is textual (the rules file indented under `spec:`), so comments and
block scalars stay as written. scripts/check-deploy also compares the two
parsed, after kustomize has rendered the PrometheusRule.
"""
import pathlib
import sys

DEPLOY = pathlib.Path(__file__).resolve().parent.parent
RULES = DEPLOY / "base/alerts/drctl-rules.yaml"
OUT = DEPLOY / "base/monitoring/prometheusrule.yaml"

HEADER = """\
# GENERATED from deploy/base/alerts/drctl-rules.yaml by
# `python3 deploy/tests/sync_rules.py`: edit that file, not this one.
# Prometheus Operators often select rules by a label (kube-prometheus-stack:
# `release: <its release name>`); overlays add it.
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: drctl
  namespace: drctl-system
  labels:
    app.kubernetes.io/name: drctl
    app.kubernetes.io/component: server
spec:
"""


def render() -> str:
    body = []
    started = False
    for line in RULES.read_text().splitlines():
        # The rules file's leading comment block is its own; start at groups.
        if not started:
            if not line.startswith("groups:"):
                continue
            started = True
        body.append(("  " + line) if line.strip() else "")
    return HEADER + "\n".join(body) + "\n"


def main() -> int:
    want = render()
    if "--check" in sys.argv[1:]:
        have = OUT.read_text() if OUT.exists() else ""
        if have != want:
            print(f"{OUT.relative_to(DEPLOY.parent)} is not generated from "
                  f"{RULES.relative_to(DEPLOY.parent)}; run python3 deploy/tests/sync_rules.py",
                  file=sys.stderr)
            return 1
        return 0
    OUT.write_text(want)
    return 0


if __name__ == "__main__":
    sys.exit(main())
