"""Run the whole nfold benchmark suite and write benchmarks/results.{md,png,json}.

    python benchmarks/run.py            # full suite (run it on a quiet machine)
    python benchmarks/run.py --quick    # the reduced suite, about a minute on 2 idle cores

Any ``nfold bench`` option may be added (``--filter conv``, ``--batch-size 16``, ...);
``--json``/``--plot``/``--markdown`` default to the files next to this script.
results.md records the machine's core count, the torch version and the load average.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nfold import bench

HERE = Path(__file__).resolve().parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    bench.add_arguments(parser)
    parser.set_defaults(
        json=str(HERE / "results.json"),
        plot=str(HERE / "results.png"),
        markdown=str(HERE / "results.md"),
    )
    args = parser.parse_args(argv)
    code = bench.run(args)
    print(f"wrote {args.markdown}, {args.plot}, {args.json}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
