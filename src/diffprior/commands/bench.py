"""`diffprior bench posterior | speed`: the benchmarks, each its own module with its own options."""

from __future__ import annotations

import argparse

from . import bench_posterior, bench_speed

PARSER = dict(help="benchmarks: `bench posterior` scores every solver against an exact posterior; "
                   "`bench speed` times solver steps")
BENCHMARKS = {"posterior": bench_posterior, "speed": bench_speed}


def add_arguments(p: argparse.ArgumentParser) -> None:
    benchmarks = p.add_subparsers(dest="bench", required=True)
    for name, module in BENCHMARKS.items():
        module.add_arguments(benchmarks.add_parser(name, **module.PARSER))


def run(args: argparse.Namespace) -> int:
    return BENCHMARKS[args.bench].run(args)
