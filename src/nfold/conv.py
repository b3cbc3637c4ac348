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

import dataclasses
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

from . import _args, _native, _plan, _slabs
from ._args import IntOrTuple, PaddingArg, Pads
from ._layouts import (
    ConvCacheSlabs,
    ConvSlabs,
    ConvTransposeSlabs,
    NativeConvSlabs,
    NativeConvTransposeSlabs,
    transposed_window,
)
from ._plan import Geometry, check_pad_mode
from ._slabs import Param
from .patches import (
    Variants,
    _fold,
    _legacy_batched,
    _owning,
    _unfold,
    autocasting,
    functorch_active,
    pad,
    plain_call,
)  # fmt: skip

# --------------------------------------------------------------------------- validation


def _operands(
    input: object, weight: object, bias: object
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``input``, ``weight``, ``bias`` checked to be tensors, cast as autocast casts them
    for torch's conv (its lower-precision op list); :func:`_check_dtypes` checks dtypes."""
    x = _args.check_tensor(input, "input")
    w = _args.check_tensor(weight, "weight")
    b = None if bias is None else _args.check_tensor(bias, "bias")
    device = x.device.type
    if autocasting(device):
        low = torch.get_autocast_dtype(device)
        x, w = _autocast(x, low), _autocast(w, low)
        b = None if b is None else _autocast(b, low)
    return x, w, b


def _check_dtypes(dtypes: dict[str, torch.dtype | None], fn: str) -> None:
    """Floating or complex, and weight and bias of the input's dtype."""
    for name, dtype in dtypes.items():
        if dtype is not None and not (dtype.is_floating_point or dtype.is_complex):
            raise _args.ArgumentTypeError(
                f"{fn} needs floating or complex tensors, got {name} of dtype {dtype}"
            )
    for name in ("weight", "bias"):
        dtype = dtypes[name]
        if dtype is not None and dtype != dtypes["input"]:
            raise _args.ArgumentTypeError(
                f"{name} dtype {dtype} must match input dtype {dtypes['input']}"
            )


def _ranks(
    x_shape: Sequence[int], w_shape: Sequence[int], sizes: dict[str, object], fn: str
) -> tuple[int, bool]:
    """N from the weight and the size arguments, and whether the input is batched."""
    layout = (
        "(C_out, C_in/groups, *kernel_size)"
        if fn == "conv"
        else "(C_in, C_out/groups, *kernel_size)"
    )
    if len(w_shape) < 3:
        raise _args.ArgumentError(
            f"weight must have shape {layout} with at least 1 spatial dim, "
            f"got shape {tuple(w_shape)}"
        )
    n = _args.infer_n(sizes, default=len(w_shape) - 2)
    if len(w_shape) != n + 2:
        given = ", ".join(f"{k}={v!r}" for k, v in sizes.items() if _args.tuple_len(v, k))
        raise _args.ArgumentError(
            f"weight must have {n + 2} dims {layout} for the {n} spatial dims that {given} "
            f"give, got shape {tuple(w_shape)}"
        )
    _args.ntuple(tuple(w_shape[2:]), n, "weight.shape[2:] (kernel_size)")
    return _args.input_n(x_shape, {**sizes, "weight.shape[2:]": tuple(w_shape[2:])})


def _autocast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t


def _check_bias(bias: Sequence[int] | None, c_out: int) -> None:
    if bias is not None and tuple(bias) != (c_out,):
        raise _args.ArgumentError(
            f"bias must have shape ({c_out},) (one value per output channel), "
            f"got shape {tuple(bias)}"
        )


def _workspace(limit: int | None, one_position: int, device: torch.device) -> int:
    """Slab budget. Without max_workspace_bytes, work still goes in slabs of the policy's
    ``auto_workspace``: a slab's unfolded matrix is consumed by its GEMM while it is still
    in cache, ~2x faster for memory-bound (few-channel, 3-d and 4-d) convolutions than one
    huge matrix. A limit above that caps the slabs but does not enlarge them: larger slabs
    fall out of cache and run up to 2x slower."""
    auto = max(_plan.policy(device).auto_workspace, one_position)
    return auto if limit is None else min(limit, auto)


# --------------------------------------------------------------------------- slabs


def _add_bias(leaf: _slabs.Leaf, bias: torch.Tensor | None, n: int) -> _slabs.Leaf:
    """Add the bias slab by slab: each unbiased slab is freed at once, so the output is not
    held a second time before the slabs are concatenated."""
    if bias is None:
        return leaf
    per_channel = bias.view(-1, *(1,) * n)
    return lambda x, ps, os: leaf(x, ps, os) + per_channel


# --------------------------------------------------------------------------- kernels


@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """``conv`` of one slab: im2col with ``geometry``, then ``groups`` GEMMs."""

    geometry: Geometry
    groups: int


@dataclasses.dataclass(frozen=True)
class ConvTransposeSpec:
    """``conv_transpose`` of one slab: ``groups`` GEMMs, then col2im with ``geometry``
    onto ``size``, then ``F.pad`` by ``extend`` (rows no input reaches)."""

    geometry: Geometry
    size: tuple[int, ...]
    extend: tuple[int, ...]
    groups: int


_Spec = ConvSpec | ConvTransposeSpec


def _expands(kernel: Sequence[int], spatial: Sequence[int], length: int) -> bool:
    """Whether the unfolded matrix is larger than the input. It is not for 1x1 and
    patchify kernels: then there is nothing to keep in cache, and one wide GEMM with no
    tiles, slabs or concatenation is faster."""
    return math.prod(kernel) * length > math.prod(spatial)


def _tiles(x: torch.Tensor, sample_bytes: int, expands: bool = True) -> list[tuple[int, int]]:
    """Batch ranges of ``x`` whose unfolded matrix is about the policy's ``tile_bytes``
    (one range if it does not expand the input), so that unfold -> GEMM (and, in
    backward, unfold -> GEMM and GEMM -> fold) run while the tile is still in cache.
    Tiles split the batch only, so every sample sees the very same GEMMs whatever the
    tile size: results do not depend on it."""
    return _tile_ranges(x.shape[0], sample_bytes, expands, _plan.policy(x.device))


@_plan.memo
def _tile_ranges(
    batch: int, sample_bytes: int, expands: bool, rule: _plan.Policy
) -> list[tuple[int, int]]:
    if not expands:
        return [(0, batch)]
    step = max(1, rule.tile_bytes // max(sample_bytes, 1))
    return [(i, min(step, batch - i)) for i in range(0, batch, step)] or [(0, 0)]


@_plan.memo
def _forward_steps(
    x_shape: torch.Size, item: int, c_out: int, spec: ConvSpec
) -> tuple[tuple[int, ...], int, int, bool]:
    """conv's forward on one slab: (output positions per dim, their number, bytes of one
    sample's unfolded matrix, whether it expands the input)."""
    outs = spec.geometry.blocks(tuple(x_shape[2:]))
    length = math.prod(outs)
    sample = x_shape[1] * math.prod(spec.geometry.kernel) * length * item
    return outs, length, sample, _expands(spec.geometry.kernel, x_shape[2:], length)


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
    cols = x if geom.pointwise else _unfold(x, geom)
    return cols.reshape(x.shape[0], g, x.shape[1] // g * math.prod(geom.kernel), length)


def _conv_forward(x: torch.Tensor, w: torch.Tensor, spec: ConvSpec) -> torch.Tensor:
    geom, g, c_out = spec.geometry, spec.groups, w.shape[0]
    outs, length, sample, expands = _forward_steps(x.shape, x.element_size(), c_out, spec)
    w_mat = w.reshape(g, c_out // g, -1)
    tiles = _tiles(x, sample, expands)
    if len(tiles) == 1:
        out = _weight_matmul(w_mat, _conv_cols(x, geom, g, length))
    else:
        out = torch.cat(
            [
                _weight_matmul(w_mat, _conv_cols(x.narrow(0, i, n), geom, g, length))
                for i, n in tiles
            ]
        )
    return out.reshape(x.shape[0], c_out, *outs)


def _conv_backward(
    x: torch.Tensor, w: torch.Tensor, grad: torch.Tensor, spec: ConvSpec, needs: tuple[bool, bool]
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Input and weight gradients, tile by tile; the unfolded input is recomputed rather
    than saved, so training holds no more than one tile of it."""
    geom, g = spec.geometry, spec.groups
    length, c_out = math.prod(grad.shape[2:]), w.shape[0]
    w_mat = w.reshape(g, c_out // g, -1)
    rows = x.shape[1] * math.prod(geom.kernel)
    sample = rows * length * x.element_size()
    grad_x, grad_w = [], None
    for i, n in _tiles(x, sample, _expands(geom.kernel, x.shape[2:], length)):
        go = grad.narrow(0, i, n).reshape(n, g, c_out // g, length)
        if needs[0]:
            grad_cols = _weight_matmul(w_mat.transpose(1, 2).conj(), go).reshape(n, rows, length)
            spatial = tuple(x.shape[2:])
            grad_x.append(
                grad_cols.reshape(n, rows, *spatial)
                if geom.pointwise
                else _fold(grad_cols, spatial, geom)
            )
        if needs[1]:
            xs = x.narrow(0, i, n)
            if rows // g > length:
                # per-sample products (n x C_out x rows) would outweigh a permuted copy
                # of the gradient (n x C_out x L): one GEMM per group with the batch
                # merged into the contraction (K = n * L)
                cols = xs if geom.pointwise else _unfold(xs, geom, rows_first=True)
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


def _conv_transpose_forward(
    x: torch.Tensor, w: torch.Tensor, spec: ConvTransposeSpec
) -> torch.Tensor:
    geom, size, extend, g = spec.geometry, spec.size, spec.extend, spec.groups
    c_in, positions = x.shape[1], math.prod(x.shape[2:])
    w_t = w.reshape(g, c_in // g, -1).transpose(1, 2)  # (G, C_out/G * prod(k), C_in/G)
    sample = w_t.shape[0] * w_t.shape[1] * positions * x.element_size()
    pieces = []
    for i, n in _tiles(x, sample):
        cols = _weight_matmul(w_t, x.narrow(0, i, n).reshape(n, g, c_in // g, positions))
        rows = g * w_t.shape[1]
        cols = cols.reshape(n, rows, positions)
        pieces.append(cols.reshape(n, rows, *size) if geom.pointwise else _fold(cols, size, geom))
    out = _cat(pieces)
    return F.pad(out, extend) if any(extend) else out


def _conv_transpose_backward(
    x: torch.Tensor,
    w: torch.Tensor,
    grad: torch.Tensor,
    spec: ConvTransposeSpec,
    needs: tuple[bool, bool],
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    geom, extend, g = spec.geometry, spec.extend, spec.groups
    c_in, positions = x.shape[1], math.prod(x.shape[2:])
    w_t = w.reshape(g, c_in // g, -1).transpose(1, 2)
    if any(extend):
        grad = F.pad(grad, [-v for v in extend])
    sample = w_t.shape[0] * w_t.shape[1] * positions * x.element_size()
    grad_x, grad_w = [], None
    for i, n in _tiles(x, sample):
        go = grad.narrow(0, i, n)
        cols = go if geom.pointwise else _unfold(go, geom)
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


class _BilinearCore(torch.autograd.Function):
    """``out = op(x, w)`` for an op linear in each argument (conv, conv_transpose).

    Saves only ``x`` and ``w``; backward is written with differentiable ops (unfold, fold,
    matmul), so derivatives of every order work.
    """

    @staticmethod
    def forward(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:  # type: ignore[override]
        if isinstance(spec, ConvSpec):
            return _owning(_conv_forward(x, w, spec))
        return _owning(_conv_transpose_forward(x, w, spec))

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        x, w, spec = inputs
        ctx.save_for_backward(x, w)
        ctx.spec = spec

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        x, w = ctx.saved_tensors
        spec, needs = ctx.spec, ctx.needs_input_grad[:2]
        if isinstance(spec, ConvSpec):
            grad_x, grad_w = _conv_backward(x, w, grad, spec, needs)
        else:
            grad_x, grad_w = _conv_transpose_backward(x, w, grad, spec, needs)
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
        out = None if x_tangent is None else _bilinear(x_tangent, w, ctx.spec)
        if w_tangent is not None:
            part = _bilinear(x, w_tangent, ctx.spec)
            out = part if out is None else out + part
        return out


_BILINEAR = Variants.of(_Bilinear)


def _bilinear(x: torch.Tensor, w: torch.Tensor, spec: _Spec) -> torch.Tensor:
    return _BILINEAR.apply(x, w, spec)


# --------------------------------------------------------------------------- conv

_METHODS = ("auto", "gemm")


class _SmallGemm(NamedTuple):
    """The "gemm" path of a call small enough for torch's im2col
    (:attr:`Policy.torch_below`), in one slab and one tile, as plain torch ops: the same
    im2col and matmuls as :class:`_Bilinear`, left to torch's autograd, whose backward
    (in C++) computes the same products, and col2im, which is nfold's fold there. Small
    layers are bound by per-op Python cost, which this skips."""

    unfold: _plan.TorchArgs | None  # None: a pointwise kernel (the input is the matrix)
    cols: tuple[int, int, int, int]  # (B, G, C_in/G * prod(k), L)
    weight: tuple[int, int, int]  # (G, C_out/G, C_in/G * prod(k))
    out: tuple[int, ...]  # (B, C_out, *L)

    def __call__(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        batch, groups, rows, length = self.cols
        if self.unfold is None:
            cols = x.reshape(batch, groups * rows, length)
        else:
            cols = self.unfold.unfold(x)  # (B, C_in * prod(k), L)
        if groups == 1:  # _weight_matmul's bmm, without its reshapes
            w_mat = w.reshape(self.weight)  # (1, C_out, rows): a batch of one as it is
            w_exp = w_mat if batch == 1 else w_mat.expand(batch, -1, -1)
            return torch.bmm(w_exp, cols).view(self.out)
        return _weight_matmul(w.reshape(self.weight), cols.view(self.cols)).view(self.out)

    @staticmethod
    def of(
        spec: ConvSpec, x_shape: tuple[int, ...], c_out: int, dtype: torch.dtype, rule: _plan.Policy
    ) -> _SmallGemm | None:
        """The small path of ``spec`` on inputs of ``x_shape``, if the call is small."""
        geom, g, (batch, c_in) = spec.geometry, spec.groups, x_shape[:2]
        outs = geom.blocks(tuple(x_shape[2:]))
        rows, length = c_in * math.prod(geom.kernel), math.prod(outs)
        nbytes = batch * rows * length * dtype.itemsize
        args = _plan.torch_args(geom, dtype, rule, batch, nbytes)
        expands = _expands(geom.kernel, x_shape[2:], length)
        if args is None or len(_tile_ranges(batch, nbytes // batch, expands, rule)) > 1:
            return None
        shapes = (batch, g, rows // g, length), (g, c_out // g, rows // g), (batch, c_out, *outs)
        return _SmallGemm(None if geom.pointwise else args, *shapes)


class _ConvPlan(NamedTuple):
    """One ``conv`` call's validated arguments (see :func:`_conv_plan`)."""

    batched: bool
    n: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Pads
    mode: str
    groups: int
    outs: tuple[int, ...]
    auto: bool  # method "auto" where torch has a kernel (see _native.native)
    direct: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], int] | None
    # torch's conv{N}d's (stride, padding, dilation, groups) when "auto" is just that call
    slabs: list[_slabs.Slab]  # of the (mode-padded) input, for the engine that runs
    whole: ConvSpec | None  # "gemm" in one slab: the bilinear op's spec
    small: _SmallGemm | None  # "gemm" in one slab and tile on torch's im2col


@_plan.memo
def _conv_plan(
    x_shape: torch.Size, dtype: torch.dtype, device: torch.device, w_shape: torch.Size,
    w_dtype: torch.dtype, b_shape: torch.Size | None, b_dtype: torch.dtype | None,
    stride: object, padding: object, dilation: object, groups: object, padding_mode: object,
    max_workspace_bytes: object, method: object,
) -> _ConvPlan:  # fmt: skip
    """Every argument check of ``conv`` that does not need tensor values, once per
    distinct call signature."""
    _check_dtypes({"input": dtype, "weight": w_dtype, "bias": b_dtype}, "conv")
    sizes: dict[str, object] = {"stride": stride, "padding": padding, "dilation": dilation}
    n, batched = _ranks(x_shape, w_shape, sizes, "conv")
    x_batched = tuple(x_shape) if batched else (1, *x_shape)
    kernel = tuple(w_shape[2:])
    st = _args.ntuple(stride, n, "stride")
    dil = _args.ntuple(dilation, n, "dilation")
    pads = _args.padding_pairs(padding, n, kernel, dil, st)
    mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
    method = _args.choice(method, "method", _METHODS)
    c_in, c_out = x_batched[1], w_shape[0]
    if c_out == 0:  # as torch's conv
        raise _args.ArgumentError(
            f"weight must have C_out >= 1 (dim 0), got shape {tuple(w_shape)}"
        )
    g = _args.groups(groups, **{"input channels (C_in)": c_in, "weight.shape[0] (C_out)": c_out})
    if c_in != w_shape[1] * g:
        raise _args.ArgumentError(
            f"input has {c_in} channels but weight of shape {tuple(w_shape)} with groups={g} "
            f"expects weight.shape[1] * groups = {w_shape[1] * g}"
        )
    _check_bias(b_shape, c_out)
    spatial = tuple(x_batched[2:])
    if 0 in spatial and x_batched[0] and c_in:  # as torch's conv
        raise _args.ArgumentError(
            f"input must have non-empty spatial dims unless the batch or the channels are "
            f"empty, got shape {tuple(x_shape)}"
        )
    if mode != "zeros":
        check_pad_mode(spatial, pads, mode)
    outs = _args.output_size(spatial, kernel, dil, pads, st)
    limit = _args.workspace(max_workspace_bytes)
    k_numel, item = math.prod(kernel), dtype.itemsize
    sizes_ = (kernel, dil, st, c_in, c_out, g, item, math.prod(w_shape))
    layout = ConvSlabs(*sizes_)
    native = NativeConvSlabs(*sizes_, device=device, dtype=dtype, bias=b_shape is not None)
    has_pad = _args.has_padding(pads) or mode != "zeros"
    one_rows = _args.span(kernel, dil) if has_pad else kernel
    one = layout.cost(1, one_rows, ((0, 0),) * n, (1,) * n)
    if limit is not None and one > limit:
        raise _args.ArgumentError(
            f"max_workspace_bytes={limit} is smaller than the {one} bytes one output "
            f"position needs (C_in * prod(kernel_size) = {c_in * k_numel} elements of "
            f"{item} bytes)"
        )

    _args.check_conv_alloc(
        x_batched, dtype, device, c_out, kernel, dil, pads, st, mode, chunked=limit is not None
    )
    # C_in = 0: torch's eager conv returns 0 channels, against its own shape rule
    # (pytorch/pytorch#101356); the gemm path gives (B, C_out, *L), zeros plus the bias
    auto = method == "auto" and c_in > 0 and _native.native(device, dtype, n, transposed=False)
    if auto and limit is not None:  # "gemm" where one native slab cannot fit the limit
        auto = native.cost(1, one_rows, ((0, 0),) * n, (1,) * n) <= limit
    direct = None
    if auto and n <= 3 and mode == "zeros" and limit is None and all(a == z for a, z in pads):
        direct = (st, tuple(a for a, _ in pads), dil, g)  # torch's own conv, as it is
    # the slabs run on the input after mode padding (which pads in full, as torch.nn.ConvNd)
    batch, one_slab = x_batched[0], [_slabs.Slab((0, x_batched[0]), ())]
    sp, ps = (
        (spatial, pads) if mode == "zeros" else (_args.padded_size(spatial, pads), ((0, 0),) * n)
    )
    if auto:
        slabs = one_slab if limit is None else _slabs.plan(batch, sp, ps, outs, limit, native)
    elif limit is None and not _expands(kernel, sp, math.prod(outs)):
        slabs = one_slab  # nothing to keep in cache: one wide GEMM
    else:
        cache = ConvCacheSlabs(*sizes_, limit=limit)
        slabs = _slabs.plan(batch, sp, ps, outs, _workspace(limit, one, device), cache)
    in_one = not auto and _slabs.whole(slabs, batch)
    whole = ConvSpec(Geometry(kernel, dil, ps, st), g) if in_one else None
    rule = _plan.policy(device)
    small = None if whole is None else _SmallGemm.of(whole, (batch, c_in, *sp), c_out, dtype, rule)
    return _ConvPlan(
        batched, n, kernel, st, dil, pads, mode, g, outs, auto, direct, slabs, whole, small
    )  # fmt: skip


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
        max_workspace_bytes: if set, the work runs in slabs (over the batch, then over
            output positions) so that no intermediate ("gemm": the unfolded matrix or
            any other) is larger, and with "auto" what one slab holds at once (torch's
            conv, its im2col matrix where torch's kernel builds one, the leading-dim
            unfold) fits it; where no single native slab fits, "auto" runs "gemm".
            Equal to the unchunked result (bitwise for "gemm"'s batch chunks, else to
            round-off).
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
    x, w, b = _operands(input, weight, bias)
    b_shape, b_dtype = (None, None) if b is None else (b.shape, b.dtype)
    p = _conv_plan(x.shape, x.dtype, x.device, w.shape, w.dtype, b_shape, b_dtype,
                   stride, padding, dilation, groups, padding_mode, max_workspace_bytes,
                   method)  # fmt: skip
    if p.direct is not None:
        return _native.CONV[p.n](x, w, b, *p.direct)
    x = x if p.batched else x.unsqueeze(0)
    pads = p.padding
    if p.mode != "zeros":  # as torch.nn.ConvNd: pad with the mode, then convolve unpadded
        x, pads = pad(x, pads, p.mode), ((0, 0),) * p.n
    if p.auto:
        out = _native.conv(x, w, b, p.stride, p.dilation, pads, p.groups, p.outs, p.slabs)
        return out if p.batched else out.squeeze(0)
    # ---- work starts here
    if p.whole is not None:
        out = _bilinear(x, w, p.whole) if p.small is None else p.small(x, w)
        out = out if b is None else out + b.view(-1, *(1,) * p.n)
        return _torch_format(out, x, w) if p.batched else out.squeeze(0)
    n, kernel, st, dil, g = p.n, p.kernel, p.stride, p.dilation, p.groups

    def leaf(x: torch.Tensor, ps: Sequence[Param], os: Sequence[int]) -> torch.Tensor:
        return _bilinear(x, w, ConvSpec(Geometry(kernel, dil, tuple(ps), st), g))

    out = _slabs.run(x, p.slabs, pads, p.outs, _add_bias(leaf, b, n), into=plain_call(x, w, b))
    return _torch_format(out, x, w) if p.batched else out.squeeze(0)


def _torch_format(out: torch.Tensor, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``out`` (contiguous) in the memory format torch's conv gives for ``x`` and ``w``:
    channels-last (2-d, and 3-d but in float64) when either operand is. Not under functorch
    transforms and legacy vmap, which cannot query or make other memory formats."""
    if x.is_contiguous() and w.is_contiguous() or not 4 <= x.dim() <= 5:
        return out
    if _legacy_batched(out) or not torch.compiler.is_compiling() and functorch_active():
        return out
    if x.dim() == 5 and x.dtype in (torch.float64, torch.complex128):
        return out  # torch's slow_conv3d keeps the contiguous format
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    if any(not t.is_contiguous() and t.is_contiguous(memory_format=fmt) for t in (x, w)):
        return out.contiguous(memory_format=fmt)
    return out


# --------------------------------------------------------------------------- conv_transpose


class _ConvTransposePlan(NamedTuple):
    """One ``conv_transpose`` call's validated arguments (see :func:`_conv_transpose_plan`)."""

    batched: bool
    n: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int
    c_out: int
    outs: tuple[int, ...]
    auto: bool  # method "auto" where torch has a kernel that fits the limit
    empty: bool  # the result has no elements
    slabs: list[_slabs.Slab]  # for the engine that runs


@_plan.memo
def _conv_transpose_plan(
    x_shape: torch.Size, dtype: torch.dtype, device: torch.device, w_shape: torch.Size,
    w_dtype: torch.dtype, b_shape: torch.Size | None, b_dtype: torch.dtype | None,
    stride: object, padding: object, output_padding: object, groups: object, dilation: object,
    output_size: object, max_workspace_bytes: object, method: object,
) -> _ConvTransposePlan:  # fmt: skip
    """Every argument check of ``conv_transpose`` that does not need tensor values, once
    per distinct call signature."""
    _check_dtypes({"input": dtype, "weight": w_dtype, "bias": b_dtype}, "conv_transpose")
    sizes: dict[str, object] = {
        "stride": stride,
        "padding": padding,
        "output_padding": output_padding,
        "dilation": dilation,
    }
    n, batched = _ranks(x_shape, w_shape, sizes, "conv_transpose")
    x_batched = tuple(x_shape) if batched else (1, *x_shape)
    kernel = tuple(w_shape[2:])
    st = _args.ntuple(stride, n, "stride")
    pad_ = _args.ntuple(padding, n, "padding", min_value=0)
    out_pad = _args.ntuple(output_padding, n, "output_padding", min_value=0)
    dil = _args.ntuple(dilation, n, "dilation")
    method = _args.choice(method, "method", _METHODS)
    c_in = x_batched[1]
    if c_in != w_shape[0]:
        raise _args.ArgumentError(
            f"input has {c_in} channels but weight of shape {tuple(w_shape)} expects "
            f"weight.shape[0] = {w_shape[0]} (layout (C_in, C_out/groups, *kernel_size))"
        )
    g = _args.groups(groups, **{"input channels (C_in)": c_in})
    c_out = w_shape[1] * g
    _check_bias(b_shape, c_out)
    spatial = tuple(x_batched[2:])
    if c_in == 0 or c_out == 0:  # as torch's conv_transpose
        raise _args.ArgumentError(
            f"weight must have C_in >= 1 and C_out/groups >= 1 (dims 0 and 1), got shape "
            f"{tuple(w_shape)}"
        )
    if x_batched[0] and 0 in spatial:  # as torch's conv_transpose
        raise _args.ArgumentError(
            f"input must have non-empty spatial dims unless the batch is empty, got shape "
            f"{tuple(x_shape)}"
        )
    if output_size is not None:
        derived = _args.output_padding_for(spatial, output_size, kernel, st, pad_, dil)
        if any(out_pad) and out_pad != derived:
            raise _args.ArgumentError(
                f"output_padding={out_pad} contradicts output_size={output_size!r}, which "
                f"needs output_padding={derived}; give only one of them"
            )
        out_pad = derived
    outs = _args.transpose_output_size(spatial, kernel, st, pad_, out_pad, dil)
    limit = _args.workspace(max_workspace_bytes)
    span = _args.span(kernel, dil)
    k_numel, item = math.prod(kernel), dtype.itemsize
    sizes_ = (kernel, dil, st, c_in, c_out, g, item, math.prod(w_shape))
    layout = ConvTransposeSlabs(*sizes_)
    rows = tuple(min(s_, -(-sp // s)) for s_, sp, s in zip(spatial, span, st, strict=True))
    one = layout.cost(1, rows, (0,) * n, (1,) * n)
    if limit is not None and one > limit:
        raise _args.ArgumentError(
            f"max_workspace_bytes={limit} is smaller than the {one} bytes one output "
            f"position may need (C_out * prod(kernel_size) = {c_out * k_numel} elements "
            f"of {item} bytes per contributing input position, up to {math.prod(rows)})"
        )
    _args.check_conv_transpose_alloc(
        x_batched, dtype, device, c_out, kernel, st, pad_, out_pad, dil, limit is not None
    )
    empty = x_batched[0] == 0 or 0 in outs
    native = NativeConvTransposeSlabs(*sizes_, device=device, dtype=dtype, bias=b_shape is not None)
    auto = (
        method == "auto"
        and not empty
        and _native.native(device, dtype, n, transposed=True)
        and (limit is None or native.cost(1, rows, (0,) * n, (1,) * n) <= limit)
    )
    batch = x_batched[0]
    if not auto:
        slabs = _slabs.plan(batch, spatial, pad_, outs, _workspace(limit, one, device), layout)
    elif limit is None:
        slabs = [_slabs.Slab((0, batch), ())]
    else:
        slabs = _slabs.plan(batch, spatial, pad_, outs, limit, native)
    return _ConvTransposePlan(
        batched, n, kernel, st, pad_, out_pad, dil, g, c_out, outs, auto, empty, slabs
    )  # fmt: skip


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
            output positions) that fit it, as for ``conv``; equal to the unchunked
            result (bitwise for "gemm"'s batch chunks, else to round-off).
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
    x, w, b = _operands(input, weight, bias)
    b_shape, b_dtype = (None, None) if b is None else (b.shape, b.dtype)
    p = _conv_transpose_plan(x.shape, x.dtype, x.device, w.shape, w.dtype, b_shape, b_dtype,
                             stride, padding, output_padding, groups, dilation, output_size,
                             max_workspace_bytes, method)  # fmt: skip
    x = x if p.batched else x.unsqueeze(0)
    if p.empty:  # an empty result, as torch's, in the autograd graph
        linked = x[:0].sum() + w[:0].sum() + (0 if b is None else b[:0].sum())
        empty = x.new_zeros((x.shape[0], p.c_out, *p.outs)) + linked
        return empty if p.batched else empty.squeeze(0)
    n, kernel, st, pad_, dil, g, c_out, outs = (
        p.n, p.kernel, p.stride, p.padding, p.dilation, p.groups, p.c_out, p.outs
    )  # fmt: skip
    if p.auto:
        out = _native.conv_transpose(x, w, b, st, pad_, p.output_padding, dil, g, outs, p.slabs)
        return out if p.batched else out.squeeze(0)
    # ---- work starts here
    span = _args.span(kernel, dil)

    def leaf(x: torch.Tensor, ps: Sequence[Param], os: Sequence[int]) -> torch.Tensor:
        # ps[i] = uncropped coordinate (relative to this input slab) of output position 0.
        batch, sp = x.shape[0], tuple(x.shape[2:])
        if any(s == 0 for s in sp):  # no input row reaches this slab of the output
            # zeros that stay in the autograd graph (an empty sum: exactly 0, never NaN)
            linked = x.flatten()[:0].sum() + w.flatten()[:0].sum()
            return x.new_zeros((batch, c_out, *os)) + linked
        full, crop, extend = transposed_window(sp, st, span, ps, os)
        size = tuple(u - a - z for u, (a, z) in zip(full, crop, strict=True))
        geom = Geometry(kernel, dil, crop, st)
        return _bilinear(x, w, ConvTransposeSpec(geom, size, tuple(extend), g))

    out = _slabs.run(x, p.slabs, pad_, outs, _add_bias(leaf, b, n), into=plain_call(x, w, b))
    return _torch_format(out, x, w) if p.batched else out.squeeze(0)
