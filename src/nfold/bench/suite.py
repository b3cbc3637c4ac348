"""The rows of the benchmark: which op runs on which input geometry (settings only).

All-CNN-C (Springenberg et al. 2015, "Striving for Simplicity", Table 2, model C) on
CIFAR-10, the layers used (the input size is that layer's input):

    layer   C_in -> C_out  kernel  stride  padding  input    output
    conv1      3 ->  96      3       1       1      32x32    32x32
    conv2     96 ->  96      3       1       1      32x32    32x32
    conv3     96 ->  96      3       2       1      32x32    16x16
    conv4     96 -> 192      3       1       1      16x16    16x16
    conv5    192 -> 192      3       1       1      16x16    16x16
    conv6    192 -> 192      3       2       1      16x16     8x8
    conv7    192 -> 192      3       1       0       8x8      6x6   (valid)
    conv8    192 -> 192      1       1       0       6x6      6x6
    (conv9   192 ->  10      1: not benchmarked, then global average pooling)

The "fixed cost" rows time one call on a (1, 1, 4, 4) input, where the work is nothing and
the time is the call's own overhead (argument handling, dispatch, autograd bookkeeping):
``unfold``, ``fold``, ``conv`` and the modules ``Unfold``, ``Fold``, ``Conv2d`` against
torch's same call, with plain inputs, with inputs (and parameters) that require grad
(forward only) and forward+backward. They run on one torch thread: there is nothing to
parallelise, and on a busy machine torch's OpenMP hand-off to a descheduled thread makes
``F.unfold`` of a 4x4 input take 16 ms instead of 15 us. Being single-threaded, they are
timed with the process's CPU clock (``time.process_time``), so time the process spends
descheduled on a shared machine is not counted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ALL_CNN_C: tuple[tuple[str, int, int, int, int, int, int], ...] = (
    # name, C_in, C_out, input size, kernel, stride, padding
    ("conv1", 3, 96, 32, 3, 1, 1),
    ("conv2", 96, 96, 32, 3, 1, 1),
    ("conv3", 96, 96, 32, 3, 2, 1),
    ("conv4", 96, 192, 16, 3, 1, 1),
    ("conv5", 192, 192, 16, 3, 1, 1),
    ("conv6", 192, 192, 16, 3, 2, 1),
    ("conv7", 192, 192, 8, 3, 1, 0),
    ("conv8", 192, 192, 6, 1, 1, 0),
)
QUICK_LAYERS = ("conv2", "conv3", "conv7")
DATA_OPS = ("unfold", "unfold+bwd", "fold", "fold+bwd", "unfold_transpose")
FIXED_COST_OPS = ("fixed cost", "fixed cost, requires_grad", "fixed cost+bwd")
FIXED_COST_CALLS = ("unfold", "Unfold", "fold", "Fold", "conv", "Conv2d")  # lower: functional
FIXED_COST_SHAPE = (1, 1, 4, 4)
MIB = 1 << 20


@dataclass(frozen=True)
class Row:
    """One benchmark row: an op on one input geometry (all tuples are N-tuples)."""

    op: str  # one of DATA_OPS, FIXED_COST_OPS, "unfold scaling", "conv", "conv+bwd",
    # "conv workspace"
    config: str
    shape: tuple[int, ...]  # input of the forward conv geometry: (B, C, *S)
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    padding_mode: str = "zeros"
    out_channels: int = 0  # conv rows
    groups: int = 1
    max_workspace_bytes: int | None = None
    call: str = ""  # fixed-cost rows: one of FIXED_COST_CALLS
    threads: int | None = None  # torch threads while the row runs (None: unchanged)
    cpu_time: bool = False  # time with the process's CPU clock instead of the wall clock

    @classmethod
    def from_dict(cls, item: dict[str, Any]) -> Row:
        """The inverse of ``dataclasses.asdict`` after a JSON round trip (lists -> tuples)."""
        fields: dict[str, Any] = {
            k: tuple(v) if isinstance(v, list) else v for k, v in item.items()
        }
        return cls(**fields)

    @property
    def id(self) -> str:
        return f"{self.op} | {self.config}"

    @property
    def n(self) -> int:
        return len(self.kernel)


def make_row(
    op: str, config: str, shape: Iterable[int], k: int, s: int = 1, p: int = 0, **kw: Any
) -> Row:
    """A row whose kernel, stride and padding are the same in every spatial dim."""
    shape = tuple(shape)
    n = len(shape) - 2
    return Row(op, config, shape, (k,) * n, (s,) * n, (p,) * n, (1,) * n, **kw)


def geom_name(shape: tuple[int, ...], k: int, s: int, p: int) -> str:
    text = f"{tuple(shape)} k{k}".replace(" ", "")
    return text + (f" s{s}" if s != 1 else "") + (f" p{p}" if p else "")


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.3g} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError


def fixed_cost_rows() -> list[Row]:
    """One call on a (1, 1, 4, 4) input, k3 p1: the op's overhead against torch's."""
    name = geom_name(FIXED_COST_SHAPE, 3, 1, 1)
    return [
        make_row(
            op,
            f"{call} {'module ' if call[0].isupper() else ''}{name}",
            FIXED_COST_SHAPE,
            3,
            1,
            1,
            out_channels=1,
            call=call,
            threads=1,
            cpu_time=True,
        )
        for op in FIXED_COST_OPS
        for call in FIXED_COST_CALLS
    ]


def suite(quick: bool = False, tiny: bool = False, batch_size: int | None = None) -> list[Row]:
    """The rows of the benchmark, in order.

    ``quick`` selects a reduced set of rows (three All-CNN-C layers, no strided volume,
    padding modes for the forward only, conv forward+backward only, scaling up to 16 MB,
    no workspace row) at small sizes; ``tiny`` shrinks every size
    to a toy (for tests), keeping the row set of ``quick`` or of the full suite.
    """
    b = batch_size if batch_size is not None else (1 if tiny else 4 if quick else 32)
    ch = (lambda c: min(c, 4)) if tiny else (lambda c: c)
    rows: list[Row] = fixed_cost_rows()

    def conv_rows(
        config: str,
        shape: tuple[int, ...],
        c_out: int,
        k: int,
        s: int = 1,
        p: int = 0,
        groups: int = 1,
    ) -> None:
        for op in ("conv+bwd",) if quick else ("conv", "conv+bwd"):
            rows.append(make_row(op, config, shape, k, s, p, out_channels=c_out, groups=groups))

    # Data movement on All-CNN-C, then the other geometries.
    geoms: list[tuple[str, tuple[int, ...], int, int, int]] = []
    for name, c_in, _, size, k, s, p in ALL_CNN_C:
        if quick and name not in QUICK_LAYERS:
            continue
        geoms.append((f"All-CNN-C {name} b{b}", (b, ch(c_in), size, size), k, s, p))
    if tiny:
        readme, seq, vol, lf = (2, 3, 16, 16), (1, 4, 256), (1, 2, 8, 8, 8), (1, 1, 5, 5, 5, 5)
    elif quick:
        readme, seq, vol, lf = (
            (8, 3, 32, 32),
            (4, 64, 4096),
            (1, 4, 24, 24, 24),
            (1, 2, 12, 12, 12, 12),
        )
    else:
        readme, seq, vol, lf = (
            (64, 3, 32, 32),
            (32, 64, 4096),
            (4, 16, 32, 32, 32),
            (2, 4, 16, 16, 16, 16),
        )
    geoms += [
        ("unfoldNd README " + geom_name(readme, 3, 2, 1), readme, 3, 2, 1),
        ("1-d " + geom_name(seq, 5, 1, 2), seq, 5, 1, 2),
        ("3-d " + geom_name(vol, 3, 1, 1), vol, 3, 1, 1),
        ("3-d " + geom_name(vol, 3, 2, 1), vol, 3, 2, 1),
        ("4-d " + geom_name(lf, 3, 1, 1), lf, 3, 1, 1),
    ]
    if quick:  # stride 2 is the README row's; the strided volume adds time, not coverage
        geoms = [g for g in geoms if not (g[0].startswith("3-d") and g[3] == 2)]
    for op in DATA_OPS:
        rows += [make_row(op, config, shape, k, s, p) for config, shape, k, s, p in geoms]
    for op in ("unfold",) if quick else ("unfold", "unfold+bwd"):
        for mode in ("zeros", "reflect", "replicate", "circular"):
            config = f"padding_mode={mode} " + geom_name(readme, 3, 2, 1)
            rows.append(make_row(op, config, readme, 3, 2, 1, padding_mode=mode))

    # Linear scaling: unfold of (B, C, H, W) k3 p1 with B growing the output 4x per step.
    scale_shape = (1, 16, 16) if tiny else (8, 32, 32)
    per_batch = scale_shape[0] * 9 * scale_shape[1] * scale_shape[2] * 4
    targets = [16 << 10, 64 << 10] if tiny else [MIB << (2 * i) for i in range(3 if quick else 6)]
    for target in targets:
        bs = max(1, round(target / per_batch))
        shape = (bs, *scale_shape)
        config = f"{fmt_bytes(bs * per_batch)} output " + geom_name(shape, 3, 1, 1)
        rows.append(make_row("unfold scaling", config, shape, 3, 1, 1))

    # Convolution: All-CNN-C, a depthwise layer, two volumes, a 4-d light field.
    for name, c_in, c_out, size, k, s, p in ALL_CNN_C:
        if quick and name not in QUICK_LAYERS:
            continue
        conv_rows(f"All-CNN-C {name} b{b}", (b, ch(c_in), size, size), ch(c_out), k, s, p)
    dw = (b, ch(96), 32, 32)
    depthwise = "depthwise " + geom_name(dw, 3, 1, 1) + f" groups={dw[1]}"
    conv_rows(depthwise, dw, dw[1], 3, 1, 1, groups=dw[1])
    for s in (1,) if quick else (1, 2):
        conv_rows("3-d " + geom_name(vol, 3, s, 1) + f" ->{2 * vol[1]}", vol, 2 * vol[1], 3, s, 1)
    conv_rows("4-d " + geom_name(lf, 3, 1, 1) + f" ->{2 * lf[1]}", lf, 2 * lf[1], 3, 1, 1)
    # ViT-B/16's stem: a "patchify" conv (stride == kernel), whose unfold is a permutation
    img, patch, dim = ((1, 3, 32, 32), 16, 4) if tiny else ((b, 3, 224, 224), 16, 768)
    conv_rows("patchify " + geom_name(img, patch, patch, 0) + f" ->{dim}", img, dim, patch, patch)

    if not quick:
        ws: tuple[int, ...] = (1, 2, 16, 16, 16) if tiny else (1, 16, 128, 128, 128)
        # a generous limit, and one below the default 8 MB slabs
        for limit in (16 << 10,) if tiny else (64 * MIB, 2 * MIB):
            config = geom_name(ws, 3, 1, 1) + f" max_workspace_bytes={fmt_bytes(limit)}"
            rows.append(
                make_row(
                    "conv workspace",
                    config,
                    ws,
                    3,
                    1,
                    1,
                    out_channels=ws[1],
                    max_workspace_bytes=limit,
                )
            )
    return rows
