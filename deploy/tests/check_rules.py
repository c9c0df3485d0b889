#!/usr/bin/env python3
"""Checks of the alert rules that promtool cannot make:

- every metric the rules name is one drctl exposes, or one listed in
  deploy/base/alerts/wanted-metrics.txt as not exposed yet, and nothing
  listed there is exposed already or unused;
- drctl-rules.test.yaml has, for every alert, a case where it fires and one
  where it must not (an evaluation expecting no alert of that name).

The exposed names are read from src/server/metrics.rs the way
prometheus-client writes them: the registry's prefix, the registered name,
`_total` for a counter, `_bucket`/`_sum`/`_count` for a histogram.
"""
import pathlib
import re
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
METRICS_RS = ROOT / "src/server/metrics.rs"
RULES = ROOT / "deploy/base/alerts/drctl-rules.yaml"
WANTED = ROOT / "deploy/base/alerts/wanted-metrics.txt"
TESTS = ROOT / "deploy/base/alerts/drctl-rules.test.yaml"


def exposed():
    src = METRICS_RS.read_text()
    prefix = re.search(r'Registry::with_prefix\("(\w+)"\)', src).group(1)
    struct = re.search(r"pub struct Metrics \{(.*?)\n\}", src, re.S).group(1)
    types = dict(re.findall(r"^\s+(\w+): ([^\n]+),$", struct, re.M))
    types.update(re.findall(r"let (\w+) = ([^;]+);", src))
    names = set()
    for name, var in re.findall(r'\.register\(\s*"(\w+)",\s*"[^"]*",\s*(?:m\.)?(\w+)', src):
        t = types.get(var)
        if t is None:
            sys.exit(f"check-metrics: cannot tell the type of {var} ({name}) in {METRICS_RS}")
        full = f"{prefix}_{name}"
        if "Histogram" in t:
            names |= {full + s for s in ("_bucket", "_sum", "_count")}
        elif "Counter" in t:
            names.add(full + "_total")
        else:
            names.add(full)
    return names


def main():
    have = exposed()
    wanted = {line.split("|")[0].strip() for line in WANTED.read_text().splitlines()
              if line.strip() and not line.startswith("#")}
    used = set(re.findall(r"\b(drctl_[a-z0-9_]+)\b", RULES.read_text()))
    bad = 0
    for m in sorted(used - have - wanted):
        print(f"{RULES.relative_to(ROOT)}: {m} is not exposed by {METRICS_RS.relative_to(ROOT)} "
              f"nor listed in {WANTED.relative_to(ROOT)}")
        bad += 1
    for m in sorted(wanted & have):
        print(f"{WANTED.relative_to(ROOT)}: {m} is exposed now: remove its line")
        bad += 1
    for m in sorted(wanted - used):
        print(f"{WANTED.relative_to(ROOT)}: {m} is used by no rule: remove its line")
        bad += 1
    alerts = [r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"]
              for r in g["rules"] if "alert" in r]
    fires, silent = set(), set()
    for t in yaml.safe_load(TESTS.read_text())["tests"]:
        for case in t.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    for a in alerts:
        for what, seen in (("fires", fires), ("does not fire", silent)):
            if a not in seen:
                print(f"{TESTS.relative_to(ROOT)}: no case where {a} {what}")
                bad += 1
    print(f"{len(used)} metrics in the rules: {len(used & have)} exposed, {len(used & wanted)} wanted; "
          f"{len(alerts)} alerts, each tested firing and silent" if not bad else "",
          file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
