#!/usr/bin/env python3
"""The tables of docs/RESULTS.md: each table of several `diffprior reproduce` runs set side by side (one column
per run and metric), beside the report's own numbers where it has them.

  python scripts/results_tables.py celeba=runs/results-celeba utkface=runs/results-utkface > tables.md

Reads each run's tableN_*.json (written by `reproduce`); a table missing from a run leaves its cells empty.
Values: mean ± 95% Student-t half-width over the images, as `reproduce` computed them; where a table has
them (Table 4), each row's PSNR minus its task's best row's, paired image by image.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from diffprior.commands.evaluate import paired_text

TABLES = ("table1_denoising", "table2_sdedit", "table3_scoreald_dps", "table4_solvers")
METRICS = (("psnr", "PSNR", 2), ("lpips", "LPIPS", 3), ("ssim", "SSIM", 3))
KEYS = ("t", "task", "method", "budget")  # the fields that name a row, where a table has them


def cell(value: dict | None, digits: int, interval: bool = True) -> str:
    if not value or value.get("mean") is None:
        return ""
    ci = value.get("ci95") if interval else None
    return f"{value['mean']:.{digits}f}" + (f" ± {ci:.{digits}f}" if ci is not None else "")


def key_of(row: dict) -> tuple:
    return tuple((k, row.get(k)) for k in KEYS if k in row)


def reference(row: dict) -> dict | None:
    """The report's numbers for this row (tables 1-3) or published ones (table 4, context only)."""
    value = row.get("report") or row.get("published")
    return value if isinstance(value, dict) else None


def table(name: str, runs: dict[str, Path]) -> str | None:
    docs = {run: json.loads((folder / f"{name}.json").read_text()) for run, folder in runs.items()
            if (folder / f"{name}.json").is_file()}
    if not docs:
        return None
    rows: dict[tuple, dict[str, dict]] = {}
    skipped = {}
    for run, doc in docs.items():
        for row in doc["rows"]:
            if row.get("skipped"):
                skipped[(row["task"], row["method"])] = row.get("reason", "")
            else:
                rows.setdefault(key_of(row), {})[run] = row
    keys = [k for k, _ in next(iter(rows))]
    has_report = any(reference(r) for by_run in rows.values() for r in by_run.values())
    head = list(keys)
    for _, label, _ in METRICS:
        head += [f"{label} {run}" for run in runs] + ([f"{label} report"] if has_report and label != "SSIM" else [])
    paired = any(r.get("ours", {}).get("psnr_vs_best") for by_run in rows.values() for r in by_run.values())
    head += [f"PSNR - best {run}" for run in runs] * paired + [f"s / image ({next(iter(docs))})", "NFE"]
    lines = [f"**{next(iter(docs.values()))['title']}**", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for key, by_run in rows.items():
        first = next(iter(by_run.values()))
        out = ["-" if v is None else str(v) for _, v in key]
        for metric, label, digits in METRICS:
            out += [cell((by_run.get(run) or {}).get("ours", {}).get(metric), digits) for run in runs]
            if has_report and label != "SSIM":
                report = reference(first) or {}
                out.append(f"{report[metric]:g}" if report.get(metric) is not None else "-")
        if paired:
            out += [paired_text((by_run.get(run) or {}).get("ours", {}).get("psnr_vs_best")) for run in runs]
        ours = first.get("ours", {})
        out += [cell(ours.get("seconds"), 2, interval=False), cell(ours.get("nfe"), 0, interval=False)]
        lines.append("| " + " | ".join(out) + " |")
    if skipped:
        lines += ["", "Not applicable: " + "; ".join(f"{m} on {t}: {why}" for (t, m), why in skipped.items()) + "."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        print(__doc__, file=sys.stderr)
        return 2
    runs = {name: Path(folder) for name, folder in (a.split("=", 1) for a in argv)}
    for folder in runs.values():
        if not folder.is_dir():
            print(f"no run folder {folder}", file=sys.stderr)
            return 1
    print("\n\n".join(t for t in (table(name, runs) for name in TABLES) if t))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
