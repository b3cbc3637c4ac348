"""The benchmark suite behind ``nfold bench`` and ``benchmarks/run.py``.

Every row times nfold and its peers in the same run and reports *ratios* (nfold time /
peer time: below 1 nfold is faster), after checking every peer's result against nfold's;
peak memory is measured in a fresh subprocess. One module per job:

    suite    the rows: which op on which geometry (settings only)
    peers    a row's inputs, and nfold's and every peer's implementation as closures
    timing   one row: check the peers against nfold, then time them round-robin
    memory   peak memory of the rows in one fresh subprocess (Linux)
    machine  versions, cores and load; warnings that make ratios doubtful
    render   Markdown tables and the results page
    plot     the bar chart (the only module that imports matplotlib)
    cli      the options, a run with progress, the files it writes

Options (``add_arguments``): ``--quick``, ``--json FILE``, ``--plot FILE.png``,
``--markdown FILE``, ``--batch-size``, ``--filter SUBSTRING``, ``--min-run-time``,
``--no-memory``.
"""

from __future__ import annotations

from .cli import add_arguments, main, run

__all__ = ["add_arguments", "main", "run"]
