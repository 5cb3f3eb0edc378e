"""Every performance figure of SPEC §13, as a table or JSON.

    python bench/run.py [--quick] [--json] [--only core,base,dashboard]

``--quick`` uses small worlds and fewer rows (minutes instead of tens of minutes) and
does not judge the targets. Figures are medians over repeated runs where noted; the
machine is shared, so quote them as such.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SECTIONS = ("core", "base", "dashboard", "api")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--only", default=",".join(SECTIONS))
    args = parser.parse_args()
    rows = []
    for name in args.only.split(","):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        print(f"running {name} benchmarks…", file=sys.stderr)
        rows += module.run(quick=args.quick)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["what"]) for r in rows)
    print(f"{'what':<{width}}  {'result':<32} {'target':<24} ok")
    for r in rows:
        value = f"{r['value']} {r.get('unit', '')}".strip()
        ok = {True: "yes", False: "NO", None: ""}[r.get("ok")]
        print(f"{r['what']:<{width}}  {value:<32} {r.get('target', ''):<24} {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
