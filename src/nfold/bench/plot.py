"""The bar chart of a run: nfold time / peer time per row (matplotlib, imported here only)."""

from __future__ import annotations

from typing import Any

from .peers import PEER_ORDER
from .render import peers_of

INSTALL_HINT = "pip install matplotlib (or pip install 'nfold[bench]')"


def plot(result: dict[str, Any], path: str) -> None:
    """Bars of nfold time / peer time per row, growing from the line at 1 on a log axis
    (left of it nfold is faster), one panel per op in two columns, one colour per peer."""
    try:
        import matplotlib
    except ImportError as err:
        raise RuntimeError(f"--plot needs matplotlib: {INSTALL_HINT}") from err
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    by_op: dict[str, list[dict[str, Any]]] = {}
    for rec in result["rows"]:
        if rec["ratios"]:
            by_op.setdefault(rec["op"], []).append(rec)
    if not by_op:
        by_op = {"(no timed rows)": []}
    palette = ["#8c8c8c", "#bcbd22", "#d62728", "#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd"]
    palette.append("#8c564b")
    colors = dict(zip(PEER_ORDER, palette, strict=True))
    peers = peers_of([r for recs in by_op.values() for r in recs])
    ratios = [v for recs in by_op.values() for r in recs for v in r["ratios"].values()]
    lo, hi = min([0.5, *ratios]) / 1.3, max([2.0, *ratios]) * 1.3

    # Two columns, panels placed greedily in the shorter one.
    cols: list[list[str]] = [[], []]
    load = [0.0, 0.0]
    size = {
        op: len(recs) * max(1, len({p for r in recs for p in r["ratios"]})) + 6
        for op, recs in by_op.items()
    }
    for op in by_op:
        c = 0 if load[0] <= load[1] else 1
        cols[c].append(op)
        load[c] += size[op]
    units = max(load)
    fig = plt.figure(figsize=(15, 1.2 + 0.085 * units))
    grid = fig.add_gridspec(
        int(units),
        2,
        hspace=0.0,
        wspace=0.55,
        left=0.17,
        right=0.98,
        top=1 - 0.9 / (1.2 + 0.085 * units),
        bottom=0.3 / (1.2 + 0.085 * units),
    )
    for c, ops in enumerate(cols):
        start = 0
        for op in ops:
            recs = by_op[op]
            ax = fig.add_subplot(grid[start + 3 : start + size[op] - 2, c])
            start += size[op]
            op_peers = [p for p in peers if any(p in r["ratios"] for r in recs)]
            width = 0.84 / max(1, len(op_peers))
            for j, p in enumerate(op_peers):
                ys = [i + (j - (len(op_peers) - 1) / 2) * width for i in range(len(recs))]
                vals = [r["ratios"].get(p, 1.0) for r in recs]
                ax.barh(ys, [v - 1 for v in vals], left=1, height=width, color=colors[p])
            ax.axvline(1.0, color="black", linewidth=1.2)
            ax.set_xscale("log")
            ax.set_xlim(lo, hi)
            ax.set_ylim(len(recs) - 0.5, -0.5)
            ax.set_yticks(range(len(recs)))
            ax.set_yticklabels([r["config"] for r in recs], fontsize=7)
            ax.set_title(op, fontsize=10, loc="left", fontweight="bold")
            ax.grid(axis="x", which="major", alpha=0.4)
            ax.tick_params(axis="x", labelsize=7)
    m = result["meta"]
    fig.suptitle(
        f"nfold time / peer time (log; < 1 nfold faster)   —   {m['preset']} run, "
        f"torch {m['torch']}, {m['cores']} cores, {m['date']}",
        fontsize=11,
        y=0.998,
    )
    handles = [Patch(color=colors[p], label=f"÷ {p}") for p in peers]
    if handles:
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=min(len(handles), 4),
            fontsize=9,
            bbox_to_anchor=(0.5, 1 - 0.35 / (1.2 + 0.085 * units)),
            frameon=False,
        )
    fig.savefig(path, dpi=100)
    plt.close(fig)
