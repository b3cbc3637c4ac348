"""Issue 12's targets: the fixed cost of small calls, and small layers, as ratios.

    python benchmarks/fixed_cost.py                  # both sections, about a minute
    python benchmarks/fixed_cost.py --only fixed     # the (1,1,4,4) calls, ~20 s
    python benchmarks/fixed_cost.py --only layers    # All-CNN-C conv6-conv8, README, fold
    python benchmarks/fixed_cost.py --threads 1      # steadier on a busy machine

fixed cost  ``unfold``, ``fold``, ``conv`` and the modules ``Unfold``, ``Fold``, ``Conv2d``
            on a (1, 1, 4, 4) input (k3 p1) against torch's same call, with plain inputs,
            with inputs that require grad, and forward+backward; one torch thread,
            timed by the process's CPU clock. Target: nfold time / torch time <= 2.5.
small layers  unfold on All-CNN-C conv6-conv8 (batch 32) and the unfoldNd README example
            against the copy of its output (the copy floor): target <= 2; fold on every
            row of the suite that has a peer against the fastest peer (torch or
            unfoldNd): target <= 1.0.

The rows are those of ``nfold bench`` (filter ``fixed cost``, ``unfold |``, ``fold |``),
timed the same way (every peer checked against nfold first, then ``Timer.blocked_autorange``
round-robin in the same run). Ratios on a shared machine are noisy: a warning is printed
when the load average exceeds the core count. Exit status 1 if a peer disagreed with
nfold; missing a target is reported, not an error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from collections.abc import Iterator
from typing import Any

import torch

from nfold import _plan
from nfold.bench import cli, machine, render, suite, timing

FIXED_TARGET = 2.5
UNFOLD_TARGET = 2.0
FOLD_TARGET = 1.0
SMALL_LAYERS = ("All-CNN-C conv6 ", "All-CNN-C conv7 ", "All-CNN-C conv8 ", "unfoldNd README ")
FLOORS = ("copy floor", "GEMM floor")


def target_rows(only: str | None = None, tiny: bool = False) -> list[tuple[suite.Row, str]]:
    """(row, what its ratio is taken against) for every target of ``only``
    ("fixed", "layers" or None: both). ``tiny``: toy sizes, for tests."""
    rows: list[tuple[suite.Row, str]] = []
    if only in (None, "fixed"):
        rows += [(row, "torch") for row in suite.fixed_cost_rows()]
    if only in (None, "layers"):
        full = suite.suite(tiny=tiny, batch_size=None if tiny else 32)
        rows += [
            (row, "copy floor")
            for row in full
            if row.op == "unfold" and row.config.startswith(SMALL_LAYERS)
        ]
        # every fold row with a peer: torch (N = 2) or unfoldNd (N <= 3)
        rows += [(row, "fastest peer") for row in full if row.op == "fold" and row.n <= 3]
    return rows


def target_of(row: suite.Row) -> float:
    if row.op in suite.FIXED_COST_OPS:
        return FIXED_TARGET
    return UNFOLD_TARGET if row.op == "unfold" else FOLD_TARGET


def ratio_against(record: dict[str, Any], against: str) -> tuple[float | None, str]:
    """(nfold time / baseline time, the baseline's name); None when no baseline was timed."""
    if against != "fastest peer":
        return record["ratios"].get(against), against
    peers = {p: r for p, r in record["ratios"].items() if p not in FLOORS}
    if not peers:
        return None, "no peer"
    fastest = max(peers, key=peers.__getitem__)  # the largest ratio: the fastest peer
    return peers[fastest], fastest


def render_targets(results: list[tuple[suite.Row, dict[str, Any], str]]) -> str:
    """One table per op: config, nfold time, ratio, baseline, target, verdict."""
    lines: list[str] = []
    met = total = 0
    op = None
    for row, record, against in results:
        if row.op != op:
            op = row.op
            lines += ["", f"### {op}", "", "| config | nfold ms | ratio | ÷ | target | |"]
            lines.append("|---|---:|---:|---|---:|---|")
        t = record["times"].get("nfold", {}).get("median_s")
        ratio, name = ratio_against(record, against)
        target = target_of(row)
        verdict = "" if ratio is None else "ok" if ratio <= target else "over"
        met, total = met + (verdict == "ok"), total + (ratio is not None)
        cells = [
            row.config,
            render.fmt_ms(t),
            "–" if ratio is None else f"{ratio:.2f}",
            name,
            f"<= {target:g}",
            verdict,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"{met} of {total} ratios meet their target (nfold time / baseline time)."]
    return "\n".join(lines).lstrip("\n")


@contextlib.contextmanager
def own_path() -> Iterator[None]:
    """nfold's own unfold / fold even where Policy.torch_below would call torch's."""
    saved = _plan.POLICIES["cpu"]
    _plan.POLICIES["cpu"] = dataclasses.replace(saved, torch_below=0)
    _plan.clear_caches()
    try:
        yield
    finally:
        _plan.POLICIES["cpu"] = saved
        _plan.clear_caches()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=("fixed", "layers"), help="one section")
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=0.2,
        help="seconds per Timer.blocked_autorange and implementation (default 0.2)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads for the small-layer rows (default: torch's); 1 gives steadier "
        "ratios on a busy machine, where OpenMP waits for descheduled threads",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests
    args = parser.parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads or threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    meta = machine.machine_info()
    for line in machine.missing_peers(meta):
        cli.progress(line)
    warning = machine.busy_warning()
    if warning:
        cli.progress(warning)
    rows = target_rows(args.only, args.tiny)
    results = []
    for i, (row, against) in enumerate(rows, 1):
        peers = ("torch", "unfoldNd") if against == "fastest peer" else (against,)
        record = timing.bench_row(row, args.min_run_time, peers=peers)
        results.append((row, record, against))
        cli.progress(f"[{i}/{len(rows)}] {row.id}")
    own = []
    if args.only in (None, "fixed"):  # the same calls without torch's kernels
        with own_path():
            for row in suite.fixed_cost_rows():
                if row.call in ("unfold", "fold"):
                    own.append((row, timing.bench_row(row, args.min_run_time), "torch"))
    print(
        f"torch {meta['torch']}, nfold {meta['nfold']}, {meta['usable_cores']} usable cores, "
        f"{torch.get_num_threads()} torch threads (fixed cost: 1), load average "
        f"{machine.load_average()}; ratio = nfold time / baseline time\n"
    )
    print(render_targets(results))
    if own:
        print(
            "\n### nfold's own path (Policy.torch_below = 0), for information\n\n"
            "Small N = 2 float32/float64 calls run torch's F.unfold / F.fold (the same bits);"
            " these are the same calls through nfold's own code, the cost every other N pays."
        )
        print("\n" + "\n".join(render_targets(own).splitlines()[:-2]))
    if warning or machine.busy_warning():
        print("\n(the machine was busy: these ratios are unreliable)")
    bad = [row.id for row, rec, _ in results if any(m != "ok" for m in rec["check"].values())]
    for rid in bad:
        print(f"MISMATCH: {rid}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
