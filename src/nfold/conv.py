"""Convolution and transposed convolution as matrix multiplication, for any N.

``conv`` = unfold -> (grouped) matmul -> reshape; ``conv_transpose`` = (grouped) matmul
-> fold. Groups are one broadcast ``torch.matmul`` over a ``(B, G, ...)`` view, never a
Python loop. Both are one autograd.Function (``_Bilinear``) that saves only the input
and the weight: its backward is again unfold / fold (each the other's adjoint) and
matmuls, rebuilt tile by tile, so gradients are exact to round-off, derivatives of every
order work, and training never holds the whole unfolded matrix.

The output is computed in slabs: first over the batch, then over ranges of output
positions along the first spatial dim, then (if one output row is still too large) along
the next dim, and so on, each slab no larger than about 8 MB (so that a slab's unfolded
matrix is consumed while it is in cache) or ``max_workspace_bytes`` if smaller. Each slab
reads the input rows it needs (with its own share of the padding) and runs the unchunked
kernel on them; the slabs are concatenated. Every output element goes through the same
unfold / fold sums in the same order as without chunking. Chunks over the batch run the
very same per-sample matmuls, so forward and input gradient are bitwise identical;
chunks over output positions change the matmul width, and BLAS rounds a column
differently depending on the width (kernel choice, edge tiles), so those agree to
round-off (~1e-16 relative), as do weight gradients (summed over chunks in a different
order).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from . import _args, _native
from ._args import IntOrTuple, PaddingArg, Pads
from .patches import Geometry, _check_pad_mode, _fold, _signature_once, _unfold, pad

_Cost = Callable[[int, Sequence[int], Sequence[object], Sequence[int]], int]
_Slab = Callable[[int, int, object, int, int], tuple[int, int, object]]
_Leaf = Callable[[torch.Tensor, Sequence[object], Sequence[int]], torch.Tensor]


# --------------------------------------------------------------------------- validation


def _check_operands(
    input: object, weight: object, bias: object, sizes: dict[str, object], fn: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, int, bool]:
    """Types, dtypes and ranks of ``input``, ``weight``, ``bias``; returns batched input, N."""
    x = _args.check_tensor(input, "input")
    w = _args.check_tensor(weight, "weight")
    b = None if bias is None else _args.check_tensor(bias, "bias")
    device = x.device.type
    # Cast as autocast does for torch's conv (its lower-precision op list).
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        low = torch.get_autocast_dtype(device)
        x, w = _autocast(x, low), _autocast(w, low)
        b = None if b is None else _autocast(b, low)
    for name, t in (("input", x), ("weight", w), ("bias", b)):
        if t is not None and not (t.is_floating_point() or t.is_complex()):
            raise TypeError(
                f"{fn} needs floating or complex tensors, got {name} of dtype {t.dtype}"
            )
    for name, t in (("weight", w), ("bias", b)):
        if t is not None and t.dtype != x.dtype:
            raise TypeError(f"{name} dtype {t.dtype} must match input dtype {x.dtype}")
    layout = (
        "(C_out, C_in/groups, *kernel_size)"
        if fn == "conv"
        else "(C_in, C_out/groups, *kernel_size)"
    )
    if w.dim() < 3:
        raise ValueError(
            f"weight must have shape {layout} with at least 1 spatial dim, "
            f"got shape {tuple(w.shape)}"
        )
    n = _args.infer_n(sizes, default=w.dim() - 2)
    if w.dim() != n + 2:
        given = ", ".join(f"{k}={v!r}" for k, v in sizes.items() if _args.tuple_len(v, k))
        raise ValueError(
            f"weight must have {n + 2} dims {layout} for the {n} spatial dims that {given} "
            f"give, got shape {tuple(w.shape)}"
        )
    _args.ntuple(tuple(w.shape[2:]), n, "weight.shape[2:] (kernel_size)")
    x, n, batched = _args.spatial_input(x, {**sizes, "weight.shape[2:]": tuple(w.shape[2:])})
    return x, w, b, n, batched


def _autocast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def _check_groups(groups: object, c_in: int, c_out: int, in_name: str, out_name: str) -> int:
    if not _args._is_int(groups):
        raise TypeError(f"groups must be an int, got {groups!r}")
    g = int(groups)  # type: ignore[call-overload]
    if g < 1:
        raise ValueError(f"groups must be a positive int, got {g}")
    for count, name in ((c_in, in_name), (c_out, out_name)):
        if count % g:
            raise ValueError(f"{name} ({count}) must be divisible by groups ({g})")
    return g


def _check_bias(bias: torch.Tensor | None, c_out: int) -> None:
    if bias is not None and tuple(bias.shape) != (c_out,):
        raise ValueError(
            f"bias must have shape ({c_out},) (one value per output channel), "
            f"got shape {tuple(bias.shape)}"
        )


def _check_workspace(max_workspace_bytes: object) -> int | None:
    if max_workspace_bytes is None:
        return None
    if not _args._is_int(max_workspace_bytes):
        raise TypeError(f"max_workspace_bytes must be an int or None, got {max_workspace_bytes!r}")
    if max_workspace_bytes < 1:  # type: ignore[operator]
        raise ValueError(f"max_workspace_bytes must be positive, got {max_workspace_bytes}")
    return int(max_workspace_bytes)  # type: ignore[call-overload]


# Without max_workspace_bytes, work still goes in slabs of about this size: a slab's
# unfolded matrix is consumed by its GEMM while it is still in cache, which is ~2x faster
# for memory-bound (few-channel, 3-d and 4-d) convolutions than one huge matrix.
_AUTO_WORKSPACE = 8 * 2**20


def _workspace(limit: int | None, one_position: int) -> int:
    # a limit above the default slab size caps the slabs but does not enlarge them:
    # larger slabs fall out of cache and run up to 2x slower
    auto = max(_AUTO_WORKSPACE, one_position)
    return auto if limit is None else min(limit, auto)


# --------------------------------------------------------------------------- chunking


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """Largest v in [lo, hi] with ``fits(v)``, given ``fits(lo)`` and monotonicity."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def _chunked(
    x: torch.Tensor,
    params: tuple[object, ...],
    outs: tuple[int, ...],
    limit: int | None,
    cost: _Cost,
    slab: _Slab,
    leaf: _Leaf,
) -> torch.Tensor:
    """Run ``leaf`` on output slabs whose ``cost`` (bytes) is at most ``limit``.

    ``params[i]`` describes spatial dim i of ``x`` for ``leaf`` (pads, or an offset);
    ``slab(i, size_i, params[i], o0, o1)`` gives the input range ``(start, length)`` and
    the new ``params[i]`` for output positions ``[o0, o1)`` of dim i. The caller has
    checked that a single output position fits.
    """
    n = len(outs)

    def fits(b: int, spatial: Sequence[int], ps: Sequence[object], os: Sequence[int]) -> bool:
        return limit is None or cost(b, spatial, ps, os) <= limit

    def piece(
        x: torch.Tensor, ps: tuple[object, ...], os: tuple[int, ...], i: int, o0: int, o1: int
    ) -> tuple[int, int, tuple[int, ...], tuple[object, ...], tuple[int, ...]]:
        start, length, p = slab(i, x.shape[2 + i], ps[i], o0, o1)
        spatial = (*x.shape[2 : 2 + i], length, *x.shape[3 + i :])
        return start, length, spatial, (*ps[:i], p, *ps[i + 1 :]), (*os[:i], o1 - o0, *os[i + 1 :])

    def split(x: torch.Tensor, ps: tuple[object, ...], os: tuple[int, ...], i: int) -> torch.Tensor:
        b = x.shape[0]
        if i == n or fits(b, x.shape[2:], ps, os):
            return leaf(x, ps, os)
        slabs, o0 = [], 0
        while o0 < os[i]:

            def ok(o1: int, o0: int = o0) -> bool:
                return fits(b, *piece(x, ps, os, i, o0, o1)[2:])

            o1 = _largest(o0 + 1, os[i], ok) if ok(o0 + 1) else o0 + 1
            slabs.append(piece(x, ps, os, i, o0, o1))
            o0 = o1
        parts = _slices(x, 2 + i, [(start, length) for start, length, *_ in slabs])
        pieces = [
            split(part, sub_ps, sub_os, i + 1)
            for part, (*_, sub_ps, sub_os) in zip(parts, slabs, strict=True)
        ]
        return torch.cat(pieces, 2 + i)

    batch, spatial = x.shape[0], x.shape[2:]
    if fits(batch, spatial, params, outs):
        return leaf(x, params, outs)
    step = (
        _largest(1, batch, lambda b: fits(b, spatial, params, outs))
        if fits(1, spatial, params, outs)
        else 1
    )
    parts = _slices(x, 0, [(b, min(step, batch - b)) for b in range(0, batch, step)])
    return torch.cat([split(p, params, outs, 0) for p in parts], 0)


def _slices(x: torch.Tensor, dim: int, ranges: list[tuple[int, int]]) -> Iterator[torch.Tensor]:
    """``x.narrow(dim, start, length)`` for each range (ranges may overlap), built from one
    ``split`` so that backward assembles the gradient of ``x`` once instead of
    materialising a zero-padded full-size gradient per slab. Lazily: a slab that spans
    several pieces is a copy, made only when its turn comes."""
    size = x.shape[dim]
    cuts = sorted({0, size} | {min(a, size) for a, _ in ranges} | {a + n for a, n in ranges})
    pieces = torch.split(x, [b - a for a, b in zip(cuts[:-1], cuts[1:], strict=True)], dim)
    first = {a: i for i, a in enumerate(cuts)}
    for a, length in ranges:
        if length == 0:
            yield x.narrow(dim, min(a, size), 0)
            continue
        run = pieces[first[a] : first[a + length]]
        yield run[0] if len(run) == 1 else torch.cat(run, dim)


def _add_bias(leaf: _Leaf, bias: torch.Tensor | None, n: int) -> _Leaf:
    """Add the bias slab by slab: each unbiased slab is freed at once, so the output is not
    held a second time before the slabs are concatenated."""
    if bias is None:
        return leaf
    per_channel = bias.view(-1, *(1,) * n)
    return lambda x, ps, os: leaf(x, ps, os) + per_channel


# --------------------------------------------------------------------------- kernels

# The unfolded matrix is built and consumed in batch tiles of about this size, so that
# unfold -> GEMM (and, in backward, unfold -> GEMM and GEMM -> fold) run while the tile
# is still in cache. Tiles split the batch only, so every sample sees the very same GEMMs
# whatever the tile size: results do not depend on it.
_TILE_BYTES = 8 * 2**20

# spec = ("conv", geometry, groups) or
#        ("conv_transpose", fold geometry, fold size, F.pad extension, groups)
_Spec = tuple


def _expands(kernel: Sequence[int], spatial: Sequence[int], length: int) -> bool:
    """Whether the unfolded matrix is larger than the input. It is not for 1x1 and
    patchify kernels: then there is nothing to keep in cache, and one wide GEMM with no
    tiles, slabs or concatenation is faster."""
    return _args.prod(kernel) * length > _args.prod(spatial)


def _tiles(batch: int, sample_bytes: int, expands: bool = True) -> list[tuple[int, int]]:
    """Batch ranges whose unfolded matrix is about _TILE_BYTES (one range if it does not
    expand the input)."""
    if not expands:
        return [(0, batch)]
    step = max(1, _TILE_BYTES // max(sample_bytes, 1))
    return [(i, min(step, batch - i)) for i in range(0, batch, step)] or [(0, 0)]


def _pointwise(geom: Geometry) -> bool:
    """A 1x1 kernel with stride 1 and no padding: unfold and fold are reshapes."""
    kernel, _, pads, stride, _ = geom
    return (
        all(k == 1 for k in kernel) and all(s == 1 for s in stride) and not _args.has_padding(pads)
    )


def _cat(pieces: list[torch.Tensor]) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces)


def _weight_matmul(w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``w @ t`` per sample: ``(G, P, Q)`` @ ``(n, G, Q, L)`` -> ``(n, G, P, L)``.

    torch.matmul broadcasts ``w`` over the batch by copying it n times; with one group, a
    bmm reads the expanded (stride-0) weight in place instead, with the same result bits.
    """
    n, g = t.shape[:2]
    if g > 1:
        return torch.matmul(w, t)
    return torch.bmm(w.expand(n, *w.shape[1:]), t.reshape(n, *t.shape[2:])).unsqueeze(1)


def _conv_cols(x: torch.Tensor, geom: Geometry, g: int, length: int) -> torch.Tensor:
    """``(n, C_in, *S)`` -> ``(n, G, C_in/G * prod(k), L)``."""
    cols = x if _pointwise(geom) else _unfold(x, geom)
    return cols.reshape(x.shape[0], g, x.shape[1] // g * _args.prod(geom[0]), length)


def _conv_forward(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:
    _, geom, g = spec
    kernel, dil, pads, st, _ = geom
    outs = _args.output_size(tuple(x.shape[2:]), kernel, dil, pads, st)
    length, c_out = _args.prod(outs), w.shape[0]
    w_mat = w.reshape(g, c_out // g, -1)
    sample = x.shape[1] * _args.prod(kernel) * length * x.element_size()
    pieces = [
        _weight_matmul(w_mat, _conv_cols(x.narrow(0, i, n), geom, g, length))
        for i, n in _tiles(x.shape[0], sample, _expands(kernel, x.shape[2:], length))
    ]
    return _cat(pieces).reshape(x.shape[0], c_out, *outs)


def _conv_backward(
    x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, spec: _Spec, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients, tile by tile; the unfolded input is recomputed rather
    than saved, so training holds no more than one tile of it."""
    _, geom, g = spec
    length, c_out = _args.prod(grad.shape[2:]), w.shape[0]
    w_mat = w.reshape(g, c_out // g, -1)
    rows = x.shape[1] * _args.prod(geom[0])
    sample = rows * length * x.element_size()
    grad_x, grad_w = [], None
    for i, n in _tiles(x.shape[0], sample, _expands(geom[0], x.shape[2:], length)):
        go = grad.narrow(0, i, n).reshape(n, g, c_out // g, length)
        if needs[0]:
            grad_cols = _weight_matmul(w_mat.transpose(1, 2).conj(), go).reshape(n, rows, length)
            spatial = tuple(x.shape[2:])
            grad_x.append(
                grad_cols.reshape(n, rows, *spatial)
                if _pointwise(geom)
                else _fold(grad_cols, spatial, geom)
            )
        if needs[1]:
            xs = x.narrow(0, i, n)
            if rows // g > length:
                # per-sample products (n x C_out x rows) would outweigh a permuted copy
                # of the gradient (n x C_out x L): one GEMM per group with the batch
                # merged into the contraction (K = n * L)
                cols = xs if _pointwise(geom) else _unfold(xs, geom, rows_first=True)
                cols = cols.transpose(0, 1).reshape(g, rows // g, n * length)
                go_rows = go.permute(1, 2, 0, 3).reshape(g, c_out // g, n * length)
                part = torch.matmul(go_rows, cols.transpose(1, 2).conj())
            else:
                cols = _conv_cols(xs, geom, g, length)
                part = torch.matmul(go, cols.transpose(2, 3).conj()).sum(0)
            grad_w = part if grad_w is None else grad_w + part
    return (
        _cat(grad_x) if needs[0] else None,
        grad_w.reshape(w.shape) if grad_w is not None else None,
    )


def _conv_transpose_forward(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:
    _, geom, size, extend, g = spec
    c_in, positions = x.shape[1], _args.prod(x.shape[2:])
    w_t = w.reshape(g, c_in // g, -1).transpose(1, 2)  # (G, C_out/G * prod(k), C_in/G)
    sample = w_t.shape[0] * w_t.shape[1] * positions * x.element_size()
    pieces = []
    for i, n in _tiles(x.shape[0], sample):
        cols = _weight_matmul(w_t, x.narrow(0, i, n).reshape(n, g, c_in // g, positions))
        rows = g * w_t.shape[1]
        cols = cols.reshape(n, rows, positions)
        pieces.append(cols.reshape(n, rows, *size) if _pointwise(geom) else _fold(cols, size, geom))
    out = _cat(pieces)
    return F.pad(out, extend) if any(extend) else out


def _conv_transpose_backward(
    x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, spec: _Spec, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    _, geom, size, extend, g = spec
    c_in, positions = x.shape[1], _args.prod(x.shape[2:])
    w_t = w.reshape(g, c_in // g, -1).transpose(1, 2)
    if any(extend):
        grad = F.pad(grad, [-v for v in extend])
    sample = w_t.shape[0] * w_t.shape[1] * positions * x.element_size()
    grad_x, grad_w = [], None
    for i, n in _tiles(x.shape[0], sample):
        go = grad.narrow(0, i, n)
        cols = go if _pointwise(geom) else _unfold(go, geom)
        cols = cols.reshape(n, g, w_t.shape[1], positions)
        if needs[0]:
            part_x = _weight_matmul(w_t.transpose(1, 2).conj(), cols)
            grad_x.append(part_x.reshape(n, c_in, *x.shape[2:]))
        if needs[1]:
            xs = x.narrow(0, i, n).reshape(n, g, c_in // g, positions)
            part = torch.matmul(cols, xs.transpose(2, 3).conj()).sum(0)
            grad_w = part if grad_w is None else grad_w + part
    return (
        _cat(grad_x) if needs[0] else None,
        grad_w.transpose(1, 2).reshape(w.shape) if grad_w is not None else None,
    )


_FORWARD = {"conv": _conv_forward, "conv_transpose": _conv_transpose_forward}
_BACKWARD = {"conv": _conv_backward, "conv_transpose": _conv_transpose_backward}


@_signature_once
class _BilinearCore(torch.autograd.Function):
    """``out = op(x, w)`` for an op linear in each argument (conv, conv_transpose).

    Saves only ``x`` and ``w``; backward is written with differentiable ops (unfold, fold,
    matmul), so derivatives of every order work.
    """

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:  # type: ignore[override]
        return _FORWARD[spec[0]](x, w, spec)

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, w, spec = inputs
        ctx.save_for_backward(x, w)
        ctx.spec = spec

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        x, w = ctx.saved_tensors
        grad_x, grad_w = _BACKWARD[ctx.spec[0]](x, w, grad, ctx.spec, ctx.needs_input_grad[:2])
        return grad_x, grad_w, None


class _Bilinear(_BilinearCore):
    """Adds forward-mode AD (product rule) and vmap (traced through the forward)."""

    generate_vmap_rule = True

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        _BilinearCore.setup_context(ctx, inputs, output)
        ctx.save_for_forward(*inputs[:2])

    @staticmethod
    def jvp(ctx, x_tangent, w_tangent, _):  # type: ignore[no-untyped-def]
        x, w = ctx.saved_tensors
        out = None if x_tangent is None else _Bilinear.apply(x_tangent, w, ctx.spec)
        if w_tangent is not None:
            part = _Bilinear.apply(x, w_tangent, ctx.spec)
            out = part if out is None else out + part
        return out


def _bilinear(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:
    # Dynamo cannot trace a Function with a custom jvp: torch.compile gets the core.
    fn = _BilinearCore if torch.compiler.is_compiling() else _Bilinear
    return fn.apply(x, w, spec)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- conv

_METHODS = ("auto", "gemm")


def conv(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: PaddingArg = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    max_workspace_bytes: int | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """N-d convolution (cross-correlation, as torch's): torch's native conv over the
    trailing dims (``method="auto"``) or unfold -> matmul -> reshape (``"gemm"``).

    Same result as ``torch.nn.functional.conv{N}d`` for N <= 3, for any N >= 1.

    Args:
        input: ``(B, C_in, *S)`` or unbatched ``(C_in, *S)``, floating or complex.
        weight: ``(C_out, C_in / groups, *k)``; N = ``weight.dim() - 2``.
        bias: ``(C_out,)`` or None.
        stride: int or N-tuple.
        padding: int, N-tuple, per-side pairs ``((lo, hi), ...)``, "valid" or "same"
            ("same" needs stride 1; an even kernel pads one more on the high side, as torch).
        dilation: int or N-tuple.
        groups: number of channel groups; divides ``C_in`` and ``C_out``.
        padding_mode: "zeros", "reflect", "replicate" or "circular" (as ``torch.nn.ConvNd``).
        max_workspace_bytes: if set, the unfolded matrix is built and consumed in slabs
            (over the batch, then over output positions) so that no intermediate is larger;
            equal to the unchunked result (bitwise for batch chunks, else to round-off).
        method: "auto" (default): torch's own ``conv{N}d`` for N <= 3; for N > 3 the
            leading N - 3 dims unfolded into channels (and their positions into the
            batch) around one ``F.conv3d``; "gemm" where torch has no conv kernel for the
            dtype on the device. "gemm": every dim unfolded, nfold's own matmul arithmetic
            (deterministic, the same on every device).

    Returns:
        ``(B, C_out, *L)`` (or ``(C_out, *L)``),
        ``L_i = (S_i + lo_i + hi_i - d_i (k_i - 1) - 1) // s_i + 1``.

    >>> x, w = torch.randn(2, 4, 5, 6, 7), torch.randn(6, 2, 3, 3, 3)
    >>> conv(x, w, stride=2, padding=1, groups=2).shape
    torch.Size([2, 6, 3, 3, 4])
    """
    sizes: dict[str, object] = {"stride": stride, "padding": padding, "dilation": dilation}
    x, w, b, n, batched = _check_operands(input, weight, bias, sizes, "conv")
    kernel = tuple(w.shape[2:])
    st = _args.ntuple(stride, n, "stride")
    dil = _args.ntuple(dilation, n, "dilation")
    pads = _args.padding_pairs(padding, n, kernel, dil, st)
    mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
    method = _args.choice(method, "method", _METHODS)
    c_in, c_out = x.shape[1], w.shape[0]
    g = _check_groups(groups, c_in, c_out, "input channels (C_in)", "weight.shape[0] (C_out)")
    if c_in != w.shape[1] * g:
        raise ValueError(
            f"input has {c_in} channels but weight of shape {tuple(w.shape)} with groups={g} "
            f"expects weight.shape[1] * groups = {w.shape[1] * g}"
        )
    _check_bias(b, c_out)
    spatial = tuple(x.shape[2:])
    if mode != "zeros":
        _check_pad_mode(spatial, pads, mode)
    outs = _args.output_size(spatial, kernel, dil, pads, st)
    limit = _check_workspace(max_workspace_bytes)
    k_numel, item = _args.prod(kernel), x.element_size()
    w_numel = w.numel()

    def cost(batch: int, sp: Sequence[int], ps: Sequence[object], os: Sequence[int]) -> int:
        cols = _args.prod(os)
        pairs: Pads = tuple(ps)  # type: ignore[arg-type]
        padded = _args.padded_size(sp, pairs)
        return (
            item
            * batch
            * max(
                c_in * k_numel * cols,  # unfolded matrix
                c_out * cols,  # matmul result
                c_in * _args.prod(padded),  # padded (or copied) input slab
                w_numel if batch > 1 and g > 1 else 0,  # grouped weight broadcast by matmul
            )
        )

    has_pad = _args.has_padding(pads) or mode != "zeros"
    one = cost(1, _args.span(kernel, dil) if has_pad else kernel, ((0, 0),) * n, (1,) * n)
    if limit is not None and one > limit:
        raise ValueError(
            f"max_workspace_bytes={limit} is smaller than the {one} bytes one output "
            f"position needs (C_in * prod(kernel_size) = {c_in * k_numel} elements of "
            f"{item} bytes)"
        )

    _args.check_conv_alloc(x, c_out, kernel, dil, pads, st, mode, chunked=limit is not None)
    if method == "auto" and _native.native(x.device, x.dtype, n, transposed=False):
        out = _native.conv(x, w, b, st, dil, pads, mode, g, limit)
        return out if batched else out.squeeze(0)
    # ---- work starts here
    if mode != "zeros":  # as torch.nn.ConvNd: pad with the mode, then convolve unpadded
        x, pads = pad(x, pads, mode), ((0, 0),) * n

    def leaf(x: torch.Tensor, ps: Sequence[object], os: Sequence[int]) -> torch.Tensor:
        geom_pads: Pads = tuple(ps)  # type: ignore[arg-type]
        return _bilinear(x, w, ("conv", (kernel, dil, geom_pads, st, False), g))

    def slab(i: int, size: int, p: object, o0: int, o1: int) -> tuple[int, int, object]:
        lo: int = p[0]  # type: ignore[index]
        a = o0 * st[i] - lo  # input coordinate of the slab's first padded element
        e = (o1 - 1) * st[i] + dil[i] * (kernel[i] - 1) + 1 - lo  # one past its last
        new_lo = min(max(-a, 0), e - a)
        new_hi = min(max(e - size, 0), e - a - new_lo)
        return min(max(a, 0), size), e - a - new_lo - new_hi, (new_lo, new_hi)

    biased = _add_bias(leaf, b, n)
    if limit is None and not _expands(kernel, x.shape[2:], _args.prod(outs)):
        out = biased(x, pads, outs)
    else:
        out = _chunked(x, pads, outs, _workspace(limit, one), cost, slab, biased)
    return out if batched else out.squeeze(0)


# --------------------------------------------------------------------------- conv_transpose


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: IntOrTuple = 1,
    padding: IntOrTuple = 0,
    output_padding: IntOrTuple = 0,
    groups: int = 1,
    dilation: IntOrTuple = 1,
    output_size: IntOrTuple | None = None,
    max_workspace_bytes: int | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """N-d transposed convolution: torch's native transposed conv over the trailing dims
    then fold over the rest (``method="auto"``), or (grouped) matmul -> fold (``"gemm"``).

    Same result as ``torch.nn.functional.conv_transpose{N}d`` for N <= 3, for any N >= 1.

    Args:
        input: ``(B, C_in, *S)`` or unbatched ``(C_in, *S)``, floating or complex.
        weight: ``(C_in, C_out / groups, *k)`` (torch's layout); N = ``weight.dim() - 2``.
        bias: ``(C_out,)`` or None.
        stride, padding, output_padding, dilation: ints or N-tuples, as torch's;
            ``output_padding`` must be smaller than ``max(stride, dilation)`` per dim.
        groups: number of channel groups; divides ``C_in`` and ``C_out``.
        output_size: requested spatial size (N values, or with batch/channel dims);
            determines ``output_padding`` as ``torch.nn.ConvTransposeNd.forward`` does.
        max_workspace_bytes: if set, work in output slabs (over the batch, then over
            output positions) so that no intermediate is larger; equal to the unchunked
            result (bitwise for batch chunks, else to round-off).
        method: "auto" (default): torch's own ``conv_transpose{N}d`` for N <= 3; for
            N > 3 one ``F.conv_transpose3d`` over the trailing dims, then ``fold`` over the
            leading N - 3; "gemm" where torch has no kernel for the dtype on the device.
            "gemm": matmul -> fold over every dim (nfold's own arithmetic).

    Returns:
        ``(B, C_out, *O)`` (or unbatched),
        ``O_i = (S_i - 1) s_i - 2 p_i + d_i (k_i - 1) + op_i + 1``.

    >>> x, w = torch.randn(2, 4, 5), torch.randn(4, 3, 3)
    >>> conv_transpose(x, w, stride=2, output_padding=1).shape
    torch.Size([2, 3, 12])
    """
    sizes: dict[str, object] = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
    }
    x, w, b, n, batched = _check_operands(input, weight, bias, sizes, "conv_transpose")
    kernel = tuple(w.shape[2:])
    st = _args.ntuple(stride, n, "stride")
    pad_ = _args.ntuple(padding, n, "padding", min_value=0)
    out_pad = _args.ntuple(output_padding, n, "output_padding", min_value=0)
    dil = _args.ntuple(dilation, n, "dilation")
    method = _args.choice(method, "method", _METHODS)
    c_in = x.shape[1]
    if c_in != w.shape[0]:
        raise ValueError(
            f"input has {c_in} channels but weight of shape {tuple(w.shape)} expects "
            f"weight.shape[0] = {w.shape[0]} (layout (C_in, C_out/groups, *kernel_size))"
        )
    g = _check_groups(groups, c_in, c_in, "input channels (C_in)", "input channels (C_in)")
    c_out = w.shape[1] * g
    _check_bias(b, c_out)
    spatial = tuple(x.shape[2:])
    if any(s == 0 for s in spatial):
        raise ValueError(f"input must have non-empty spatial dims, got shape {tuple(input.shape)}")
    if output_size is not None:
        derived = _args.output_padding_for(spatial, output_size, kernel, st, pad_, dil)
        if any(out_pad) and out_pad != derived:
            raise ValueError(
                f"output_padding={out_pad} contradicts output_size={output_size!r}, which "
                f"needs output_padding={derived}; give only one of them"
            )
        out_pad = derived
    outs = _args.transpose_output_size(spatial, kernel, st, pad_, out_pad, dil)
    limit = _check_workspace(max_workspace_bytes)
    span = _args.span(kernel, dil)
    k_numel, item, w_numel = _args.prod(kernel), x.element_size(), w.numel()

    def cost(batch: int, sp: Sequence[int], ps: Sequence[object], os: Sequence[int]) -> int:
        return (
            item
            * batch
            * max(
                c_out * k_numel * _args.prod(sp),  # columns before fold
                c_out * _args.prod(os),  # folded slab
                c_in * _args.prod(sp),  # input slab (copied if not contiguous)
                w_numel if batch > 1 and g > 1 else 0,  # grouped weight broadcast by matmul
            )
        )

    rows = tuple(min(s_, -(-sp // s)) for s_, sp, s in zip(spatial, span, st, strict=True))
    one = cost(1, rows, (0,) * n, (1,) * n)
    if limit is not None and one > limit:
        raise ValueError(
            f"max_workspace_bytes={limit} is smaller than the {one} bytes one output "
            f"position may need (C_out * prod(kernel_size) = {c_out * k_numel} elements "
            f"of {item} bytes per contributing input position, up to {_args.prod(rows)})"
        )

    _args.check_conv_transpose_alloc(x, c_out, kernel, st, pad_, out_pad, dil, limit is not None)
    if method == "auto" and _native.native(x.device, x.dtype, n, transposed=True):
        out = _native.conv_transpose(x, w, b, st, pad_, out_pad, dil, g, outs, limit)
        return out if batched else out.squeeze(0)

    # ---- work starts here
    def leaf(x: torch.Tensor, ps: Sequence[object], os: Sequence[int]) -> torch.Tensor:
        # ps[i] = uncropped coordinate (relative to this input slab) of output position 0.
        batch, sp = x.shape[0], tuple(x.shape[2:])
        if any(s == 0 for s in sp):  # no input row reaches this slab of the output
            # zeros that stay in the autograd graph (an empty sum: exactly 0, never NaN)
            linked = x.flatten()[:0].sum() + w.flatten()[:0].sum()
            return x.new_zeros((batch, c_out, *os)) + linked
        uncropped = [(s_ - 1) * s + sp_ for s_, s, sp_ in zip(sp, st, span, strict=True)]
        lo = [int(p) for p in ps]  # type: ignore[call-overload]
        hi = [u - p - o for u, p, o in zip(uncropped, lo, os, strict=True)]
        crop = tuple((max(a, 0), max(z, 0)) for a, z in zip(lo, hi, strict=True))
        size = tuple(u - a - z for u, (a, z) in zip(uncropped, crop, strict=True))
        extend = tuple(
            v for a, z in reversed(list(zip(lo, hi, strict=True))) for v in (max(-a, 0), max(-z, 0))
        )
        return _bilinear(x, w, ("conv_transpose", (kernel, dil, crop, st, False), size, extend, g))

    def slab(i: int, size: int, p: object, o0: int, o1: int) -> tuple[int, int, object]:
        u0, u1 = int(p) + o0, int(p) + o1  # type: ignore[call-overload]
        first = max(0, -((span[i] - 1 - u0) // st[i]))  # ceil((u0 - span + 1) / s)
        last = min(size - 1, (u1 - 1) // st[i])
        if last < first:
            return min(first, size), 0, 0
        return first, last - first + 1, u0 - first * st[i]

    out = _chunked(x, pad_, outs, _workspace(limit, one), cost, slab, _add_bias(leaf, b, n))
    return out if batched else out.squeeze(0)
