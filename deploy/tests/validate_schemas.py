#!/usr/bin/env python3
"""Offline schema validation of rendered manifests with kubernetes-validate,
strict (unknown fields are errors), against one Kubernetes version.

    validate_schemas.py --kubernetes-version 1.32 RENDERED.yaml...

Custom resources have no schema in kubernetes-validate, and vendoring the
Prometheus Operator's CRDs would put another project's files in this tree:
ServiceMonitor and PrometheusRule are skipped here, with the reason printed.
They are checked instead by check_manifests.py (the ServiceMonitor selects
the server's Service and port; the PrometheusRule carries exactly the groups
of the rules file) and by promtool (every rule of every overlay's
PrometheusRule is checked by `promtool check rules`). Any other kind without
a schema is an error: a typo in apiVersion or kind must not pass unseen.
"""
import argparse
import sys

import kubernetes_validate
import yaml

# kind -> apiVersion of the custom resources this tree may render.
CUSTOM = {
    "ServiceMonitor": "monitoring.coreos.com/v1",
    "PrometheusRule": "monitoring.coreos.com/v1",
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kubernetes-version", required=True)
    ap.add_argument("files", nargs="+", metavar="[LABEL=]FILE",
                    help="a rendered overlay; LABEL names it in messages (default: the file)")
    args = ap.parse_args()
    errors = checked = 0
    skipped = set()
    for arg in args.files:
        path, _, file = arg.rpartition("=") if "=" in arg else (arg, "", arg)
        with open(file) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d in docs:
            what = f"{d.get('kind')} {d.get('metadata', {}).get('namespace', '') + '/' if d.get('metadata', {}).get('namespace') else ''}{d.get('metadata', {}).get('name')}"
            if CUSTOM.get(d.get("kind")) == d.get("apiVersion"):
                skipped.add(f"{d['kind']} ({d['apiVersion']})")
                continue
            try:
                kubernetes_validate.validate(d, args.kubernetes_version, strict=True)
                checked += 1
            except kubernetes_validate.ValidationError as e:
                errors += 1
                where = ".".join(str(p) for p in e.path)
                print(f"{path}: {what}: {where}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors += 1
                print(f"{path}: {what}: {e.message}")
    if skipped:
        print(f"skipped {', '.join(sorted(skipped))}: custom resources, no schema offline; "
              "check_manifests.py and promtool check them instead", file=sys.stderr)
    print(f"{checked} objects valid against Kubernetes {args.kubernetes_version}, {errors} invalid",
          file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
