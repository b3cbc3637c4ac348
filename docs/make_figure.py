"""Draw docs/conv_as_matmul.png: a 2-d convolution as unfold -> matmul -> reshape.

Run from the repository root: ``python docs/make_figure.py`` (``make docs``). Needs
matplotlib. The numbers in the figure are computed with nfold and checked against
``torch.nn.functional.conv2d`` before anything is drawn.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

import nfold  # noqa: E402

OUT = Path(__file__).with_name("conv_as_matmul.png")
HIGHLIGHT = "#ff7f0e"
BLOCK = 4  # the output position (row-major) whose window is highlighted


def _grid(ax: Axes, values: torch.Tensor, title: str, fmt: str = "{:.0f}") -> None:
    rows, cols = values.shape
    ax.imshow(
        values.numpy(), cmap="Blues", vmin=float(values.min()) - 1, vmax=float(values.max()) + 1
    )
    for i in range(rows):
        for j in range(cols):
            if values[i, j].isfinite():
                ax.text(j, i, fmt.format(values[i, j].item()), ha="center", va="center", fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def _box(ax: Axes, row: int, col: int, height: int, width: int) -> None:
    ax.add_patch(Rectangle((col - 0.5, row - 0.5), width, height, fill=False, lw=2.5, ec=HIGHLIGHT))


def main() -> int:
    x = torch.arange(1.0, 17.0).view(1, 1, 4, 4)  # (B, C_in, 4, 4)
    w = torch.tensor([[1.0, 0.0, 0.0, -1.0], [1.0, 1.0, 1.0, 1.0]]).view(2, 1, 2, 2)
    cols = nfold.unfold(x, 2)  # (1, C_in * 4, L = 9)
    w_mat = w.flatten(1)  # (C_out, C_in * 4)
    out_mat = w_mat @ cols[0]  # (C_out, L)
    out = out_mat.view(2, 3, 3)
    torch.testing.assert_close(out, torch.nn.functional.conv2d(x, w)[0])
    torch.testing.assert_close(out, nfold.conv(x, w)[0])

    fig, axes = plt.subplots(
        1, 5, figsize=(13, 3.4), gridspec_kw={"width_ratios": [4, 4, 9, 9, 3.2]}
    )
    r, c = divmod(BLOCK, 3)
    _grid(axes[0], x[0, 0], "input x  (1, 1, 4, 4)")
    _box(axes[0], r, c, 2, 2)
    _grid(axes[1], w_mat, "W.flatten(1)  (C_out=2, 1·2·2)")
    _grid(axes[2], cols[0], "unfold(x, 2)  (1, 1·2·2, L=9)\nrow = kernel offset, column = block")
    _box(axes[2], 0, BLOCK, 4, 1)
    _grid(axes[3], out_mat, "W.flatten(1) @ unfold(x, 2)  (2, 9)")
    _box(axes[3], 0, BLOCK, 2, 1)
    nan_row = torch.full((1, 3), float("nan"))
    _grid(axes[4], torch.cat([out[0], nan_row, out[1]]), "reshape\n(1, 2, 3, 3)")
    _box(axes[4], r, c, 1, 1)
    _box(axes[4], 4 + r, c, 1, 1)
    for ax, symbol in zip(axes[:4], ["", "@", "=", "→"], strict=True):
        if symbol:
            ax.annotate(symbol, xy=(1.02, 0.5), xycoords="axes fraction", fontsize=18, va="center")
    fig.suptitle(
        "conv(x, W) = reshape(W.flatten(1) @ unfold(x)): the highlighted window is one "
        "column of unfold(x) and gives one output position per output channel",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
