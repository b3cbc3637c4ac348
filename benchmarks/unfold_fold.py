"""Issue 2: nfold's unfold / fold / their backward against torch.nn.functional.unfold/fold,
unfoldNd and a ``clone()`` copy floor, as ratios (nfold time / peer time; below 1 nfold
is faster). Every peer's result is checked against nfold's before it is timed.

    python benchmarks/unfold_fold.py                 # All-CNN-C batch 32 and N-d inputs
    python benchmarks/unfold_fold.py --quick         # small sizes, seconds
    python benchmarks/unfold_fold.py --filter conv2  # one layer

The rows are those of ``nfold bench`` (src/nfold/bench/suite.py) whose op is unfold,
unfold+bwd, fold or fold+bwd; peak memory is skipped unless --memory is given.
"""

from __future__ import annotations

import argparse
import sys

from nfold.bench import cli, machine, render, suite, timing

OPS = ("unfold", "unfold+bwd", "fold", "fold+bwd")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--batch-size", type=int, default=None, help="All-CNN-C batch (32)")
    parser.add_argument("--filter", default=None, help="only configs containing this")
    parser.add_argument("--min-run-time", type=float, default=None)
    parser.add_argument("--memory", action="store_true", help="also measure peak memory")
    args = parser.parse_args(argv)
    min_run_time = args.min_run_time or (0.05 if args.quick else 0.5)
    rows = [r for r in suite.suite(quick=args.quick, batch_size=args.batch_size) if r.op in OPS]
    if args.filter:
        rows = [r for r in rows if args.filter.lower() in r.id.lower()]
    records = []
    for i, row in enumerate(rows, 1):
        rec = timing.bench_row(row, min_run_time)
        records.append(rec)
        print(f"[{i}/{len(rows)}] {row.id}", file=sys.stderr, flush=True)
    if args.memory:
        from nfold.bench.memory import measure_memory

        memory = measure_memory(rows, progress=cli.progress)
        for rec in records:
            rec["memory"] = memory.get(rec["id"], {})
    meta = machine.machine_info()
    print(
        f"torch {meta['torch']}, {meta['cores']} cores, {meta['torch_threads']} threads, "
        f"load {meta['loadavg_start']}; ratio = nfold time / peer time\n"
    )
    print(render.render_table({"meta": meta, "rows": records}))
    bad = [r["id"] for r in records if any(m != "ok" for m in r["check"].values())]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
