"""`diffprior models`: the built-in and downloadable priors."""

from __future__ import annotations

import argparse
import json


PARSER = dict(help="list the built-in and downloadable priors")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the table as JSON")


def run(args: argparse.Namespace) -> int:
    from ..models import list_models
    rows = list_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':20s} {'kind':18s} {'size':>9s}  {'where':8s}  source")
    for r in rows:
        size = f"{r['size'] / 1e6:.1f} MB" if r.get("size") else "-"
        where = "cached" if r.get("cached") else ("built-in" if r.get("builtin") else "remote")
        print(f"{r['name']:20s} {r['kind']:18s} {size:>9s}  {where:8s}  {r.get('source', '')}")
    return 0
