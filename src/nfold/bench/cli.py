"""Options of ``nfold bench``, running the selected rows with progress, writing the files."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from typing import Any

import torch

from . import machine
from .render import render_markdown, render_table
from .suite import FIXED_COST_OPS, Row, suite
from .timing import bench_row

# --quick measured on 2 shared cores: 23 s at a quiet moment, 73-76 s at load 3.5,
# 130-180 s at load 5-9.
QUICK_PROMISE = "about a minute on 2 idle cores, 2-3 minutes on a busy machine"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nfold bench`` (also used by ``benchmarks/run.py``)."""
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"reduced suite at small sizes (takes {QUICK_PROMISE})",
    )
    parser.add_argument("--json", metavar="FILE", help="write the raw numbers as JSON")
    parser.add_argument(
        "--plot",
        metavar="FILE.png",
        help="write a bar chart of the ratios to FILE.png (needs matplotlib)",
    )
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as Markdown")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="All-CNN-C batch size (default 32; 4 with --quick)",
    )
    parser.add_argument(
        "--filter",
        metavar="SUBSTRING",
        default=None,
        help="only rows whose 'op | config' contains SUBSTRING (case-insensitive)",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=None,
        help="seconds of Timer.blocked_autorange per implementation and row, split over "
        "the round-robin rounds (default 0.5 in 3 rounds; 0.05 in 1 with --quick)",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocess")
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # toy sizes, tests


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def collect(args: argparse.Namespace) -> dict[str, Any]:
    """Run the rows selected by ``args``; returns ``{"meta": ..., "rows": [...]}``."""
    rows = suite(quick=args.quick, tiny=args.tiny, batch_size=args.batch_size)
    if args.filter:
        rows = [r for r in rows if args.filter.lower() in r.id.lower()]
    min_run_time = args.min_run_time
    if min_run_time is None:
        min_run_time = 0.0 if args.tiny else 0.05 if args.quick else 0.5
    rounds = 1 if args.quick else 3  # round-robin rounds per implementation
    meta = machine.machine_info()
    meta.update(
        preset=("tiny " if args.tiny else "") + ("quick" if args.quick else "full"),
        batch_size=args.batch_size or (1 if args.tiny else 4 if args.quick else 32),
        min_run_time=min_run_time,
        rounds=rounds,
        warnings=[],
    )
    for line in machine.missing_peers(meta):
        progress(line)
    _warn_if_busy(meta)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    if args.tiny:  # toy sizes: OpenMP hand-offs would dominate (and spin on a busy machine)
        torch.set_num_threads(1)
    try:
        records = _collect_rows(rows, min_run_time, rounds, args.no_memory)
    finally:
        torch.set_num_threads(threads)
    meta["loadavg_end"] = machine.load_average()
    meta["wall_s"] = time.perf_counter() - start
    _warn_if_busy(meta)
    return {"meta": meta, "rows": records}


def _warn_if_busy(meta: dict[str, Any]) -> None:
    """Warn (once: at the start, else at the end) when the load makes ratios unreliable."""
    warning = machine.busy_warning()
    if warning is not None and not meta["warnings"]:
        progress(warning)
        meta["warnings"].append(warning.removeprefix("warning: "))


def _collect_rows(
    rows: list[Row], min_run_time: float, rounds: int, no_memory: bool
) -> list[dict[str, Any]]:
    records = []
    for i, row in enumerate(rows, 1):
        rec = bench_row(row, min_run_time, rounds)
        records.append(rec)
        t = rec["times"].get("nfold", {}).get("median_s")
        summary = ", ".join(f"÷{p} {r:.2f}" for p, r in rec["ratios"].items())
        bad = [f"{p}: {m}" for p, m in (*rec["errors"].items(), *rec["check"].items()) if m != "ok"]
        progress(
            f"[{i}/{len(rows)}] {row.id}: "
            + (f"nfold {1e3 * t:.3g} ms" if t else "no timing")
            + (f"; {summary}" if summary else "")
            + (f"; {'; '.join(bad)}" if bad else "")
        )
    if not no_memory:
        # fixed-cost rows allocate bytes: below what RSS counters resolve
        measured = [
            r
            for r, rec in zip(rows, records, strict=True)
            if rec["times"] and r.op not in FIXED_COST_OPS
        ]
        if measured:
            from .memory import measure_memory

            progress(f"measuring peak memory of {len(measured)} rows in a subprocess ...")
            memory = measure_memory(measured, progress=progress)
            for rec in records:
                rec["memory"] = memory.get(rec["id"], {})
    return records


def run(args: argparse.Namespace) -> int:
    """Run the suite, print the tables, write the requested files; returns the exit code."""
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        from .plot import INSTALL_HINT

        print(f"error: --plot needs matplotlib: {INSTALL_HINT}", file=sys.stderr)
        return 2
    result = collect(args)
    if not result["rows"]:
        print(f"error: no benchmark row matches --filter {args.filter!r}", file=sys.stderr)
        return 2
    print(render_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(render_markdown(result))
    if args.plot:
        from .plot import plot

        plot(result, args.plot)
    mismatches = [
        r["id"]
        for r in result["rows"]
        if any(m.startswith("MISMATCH") for m in r["check"].values())
    ]
    return 1 if mismatches else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m nfold.bench",
        description="time nfold against its peers and measure its peak memory",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
