"""One row: check every peer's result against nfold's, then time them all in one run.

Every implementation is timed with ``torch.utils.benchmark.Timer.blocked_autorange``,
round-robin over the implementations (the best median of each is kept, so a load spike
hits all of them), and reported as a *ratio* (nfold time / peer time: below 1 nfold is
faster), because absolute times on a shared machine are noise. A peer whose result
disagrees with nfold's (``torch.testing.assert_close``) is marked ``MISMATCH`` and is not
timed, so a ratio is never reported for a wrong answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection
from dataclasses import asdict
from typing import Any

import torch

from .peers import FLOORS, Built, build, floors
from .suite import Row


def time_fn(fn: Callable[[], Any], min_run_time: float, cpu_time: bool = False) -> dict[str, float]:
    """Median and IQR (seconds) of ``fn`` from ``Timer.blocked_autorange``, by the wall
    clock or (``cpu_time``) the process's CPU clock.

    ``min_run_time <= 0`` times a single call (smoke tests: the numbers mean nothing).
    """
    from torch.utils import benchmark

    clock = time.process_time if cpu_time else time.perf_counter
    if min_run_time <= 0:
        start = clock()
        fn()
        return {"median_s": max(clock() - start, 1e-9), "iqr_s": 0.0, "runs": 1}

    timer = benchmark.Timer(
        stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads(), timer=clock
    )
    m = timer.blocked_autorange(min_run_time=min_run_time)
    return {"median_s": m.median, "iqr_s": m.iqr, "runs": len(m.times)}


def check_results(results: dict[str, Any], built: Built) -> dict[str, str]:
    """Compare every peer's result with nfold's: "ok" or "MISMATCH: ..." per peer."""
    ref = results["nfold"]
    ref = ref if isinstance(ref, tuple) else (ref,)
    status = {}
    for name, got in results.items():
        if name == "nfold" or name in FLOORS or got is None:
            continue
        got = got if isinstance(got, tuple) else (got,)
        try:
            for a, e in zip(got, ref, strict=True):
                scale = float(e.detach().abs().max()) if e.numel() else 1.0
                torch.testing.assert_close(a, e, rtol=built.rtol, atol=built.atol * max(scale, 1.0))
            status[name] = "ok"
        except (AssertionError, ValueError) as err:
            status[name] = "MISMATCH: " + str(err).strip().splitlines()[0]
    return status


def bench_row(
    row: Row, min_run_time: float, rounds: int = 3, peers: Collection[str] | None = None
) -> dict[str, Any]:
    """Build, check and time one row (``rounds`` round-robin rounds of ``min_run_time /
    rounds`` per implementation); returns its JSON-able record. ``peers``: run only
    these besides nfold (default: all)."""
    record: dict[str, Any] = {
        "id": row.id,
        "op": row.op,
        "config": row.config,
        "n": row.n,
        "row": asdict(row),
        "times": {},
        "ratios": {},
        "check": {},
        "errors": {},
    }
    threads = torch.get_num_threads()
    if row.threads is not None:
        torch.set_num_threads(row.threads)
    try:
        _check_and_time(row, record, min_run_time, rounds, peers)
    finally:
        torch.set_num_threads(threads)
    return record


def _check_and_time(
    row: Row,
    record: dict[str, Any],
    min_run_time: float,
    rounds: int,
    peers: Collection[str] | None,
) -> None:
    built = build(row)
    record["out_bytes"] = built.out_bytes
    impls = {**built.impls, **floors(row, built)}
    if peers is not None:
        impls = {name: fn for name, fn in impls.items() if name == "nfold" or name in peers}
    results: dict[str, Any] = {}
    for name, fn in impls.items():
        try:
            results[name] = fn()
        except Exception as err:  # a peer's own limits (e.g. unfoldNd's 2^24 fold cap)
            record["errors"][name] = f"{type(err).__name__}: {str(err).strip().splitlines()[0]}"
            if name == "nfold":
                raise
    record["check"] = check_results(results, built)
    del results
    timed = [n for n in impls if n not in record["errors"] and record["check"].get(n, "ok") == "ok"]
    rounds = rounds if min_run_time > 0 else 1
    for _ in range(rounds):
        for name in timed:
            m = time_fn(impls[name], min_run_time / rounds, row.cpu_time)
            best = record["times"].get(name)
            if best is None or m["median_s"] < best["median_s"]:
                record["times"][name] = m
    t = record["times"].get("nfold", {}).get("median_s")
    for name, timing in record["times"].items():
        if name != "nfold" and t:
            record["ratios"][name] = t / timing["median_s"]
