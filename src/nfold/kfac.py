"""KFAC input factors of conv layers (patch covariances), streamed.

KFAC approximates a conv layer's curvature block by ``A ⊗ G``; the input factor ``A`` is
the second moment of the layer's unfolded input columns ``u`` (one per sample and output
position). ``patch_covariance`` computes it without ever holding the whole unfolded input:

- ``"expand"``: ``Σ_n Σ_l u uᵀ``. The input is cut into slabs (over the batch, then over
  output positions), each slab is unfolded into a cache-sized matrix ``U`` and added as
  ``U Uᵀ``, one GEMM per pair of row blocks of the upper triangle; the lower triangle is
  mirrored at the end (so the result is exactly symmetric).
- ``"reduce"``: ``Σ_n ū ūᵀ`` with ``ū`` the mean of ``u`` over positions. The sum over
  positions of each kernel offset's strided slice of the padded input is a contraction of
  the unpadded input with one small count matrix per spatial dim (how often each input
  element appears at that offset, padding modes included), so nothing is unfolded or padded.

Half-precision inputs are accumulated in float32 (complex32 in complex64). Nothing here is
differentiable: the work runs under ``torch.no_grad()``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from . import _args, _plan, _slabs
from ._args import IntOrTuple, PaddingArg, Pads
from ._plan import Geometry, check_pad_mode
from ._slabs import Param
from .conv_modules import ConvNd
from .patches import _pad_index, _unfold_forward, functorch_active, unfold

REDUCTIONS = ("expand", "reduce")

# Without max_workspace_bytes, slabs are about this large, so each unfolded slab is consumed
# by its GEMM while it is still in cache (measured on Conv2d(64, 64, 3) on (32, 64, 32, 32),
# loaded 2-core machine: 1-8 MB within ~20% of each other, 4 MB best, 16 MB ~35% slower).
_AUTO_WORKSPACE = 4 * 2**20
# Row-block size of the upper-triangle GEMMs: D <= 1.5 blocks is one GEMM (U Uᵀ), larger D
# computes (nb + 1) / (2 nb) of the products (same measurement: 3-4 row blocks for D = 576
# are ~1.5x faster than one full U Uᵀ).
_TRI_BLOCK = 192
_ACCUMULATE = {
    torch.float16: torch.float32,
    torch.bfloat16: torch.float32,
    torch.complex32: torch.complex64,
}


class Chunk(NamedTuple):
    """One slab of ``patch_covariance``'s work: samples ``[batch[0], batch[1])`` and, per
    spatial dim, output positions ``[lo, hi)``."""

    batch: tuple[int, int]
    outputs: tuple[tuple[int, int], ...]


class _Geometry(NamedTuple):
    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    pads: Pads
    stride: tuple[int, ...]
    mode: str
    outs: tuple[int, ...]


# --------------------------------------------------------------------------- validation


def _accumulate_dtype(x: torch.Tensor) -> torch.dtype:
    if not (x.is_floating_point() or x.is_complex()):
        raise _args.ArgumentTypeError(
            f"patch_covariance needs a floating or complex input, got {x.dtype}"
        )
    return _ACCUMULATE.get(x.dtype, x.dtype)


# --------------------------------------------------------------------------- chunk plans


def _slab_len(length: int, k: int, d: int, s: int) -> int:
    """Padded input extent that ``length`` consecutive output positions read."""
    return (length - 1) * s + d * (k - 1) + 1


def expand_chunk_bytes(
    batch: int, lengths: Sequence[int], channels: int, geom: _Geometry, item: int, acc: int
) -> int:
    """Bytes a slab of ``batch`` samples and ``lengths`` output positions per dim allocates:
    its unfolded matrix (accumulation dtype) plus its padded input slab (input dtype, and
    again in the accumulation dtype when that differs)."""
    slab = math.prod(
        [
            _slab_len(n, k, d, s)
            for n, k, d, s in zip(lengths, geom.kernel, geom.dilation, geom.stride, strict=True)
        ]
    )
    unfolded = channels * math.prod(geom.kernel) * math.prod(lengths) * acc
    return batch * (unfolded + channels * slab * (item + (acc if acc != item else 0)))


class _ExpandSlabs(NamedTuple):
    """``"expand"``'s :class:`_slabs.Layout`: a slab's cost is
    :func:`expand_chunk_bytes` of its output lengths; its param per dim is unused (the
    slab's padding is recomputed from its outputs by :func:`_input_slab`)."""

    channels: int
    geom: _Geometry
    item: int
    acc: int

    def cost(self, batch: int, spatial: Sequence[int], params: Sequence[Param],
             outs: Sequence[int]) -> int:  # fmt: skip
        return expand_chunk_bytes(batch, outs, self.channels, self.geom, self.item, self.acc)

    def rows(self, i: int, size: int, param: Param, first: int, stop: int
             ) -> tuple[int, int, Param]:  # fmt: skip
        return 0, size, param


def expand_plan(
    batch: int, channels: int, geom: _Geometry, item: int, acc: int, limit: int
) -> list[Chunk]:
    """The slabs ``"expand"`` works in, each at most ``limit`` bytes (see
    ``expand_chunk_bytes``), cut by conv's planner (:func:`_slabs.plan`): whole samples
    if one fits, else output ranges of the first dim of one sample (of single positions
    of it, the later dims cut the same way)."""
    if batch == 0:
        return []
    outs = geom.outs
    layout = _ExpandSlabs(channels, geom, item, acc)
    slabs = _slabs.plan(batch, outs, (0,) * len(outs), outs, limit, layout)
    return [
        Chunk(
            (s.batch[0], s.batch[0] + s.batch[1]),
            (*((sp.first, sp.stop) for sp in s.spans), *((0, o) for o in outs[len(s.spans) :])),
        )
        for s in slabs
    ]


# --------------------------------------------------------------------------- expand


def _input_slab(x: torch.Tensor, chunk: Chunk, geom: _Geometry) -> torch.Tensor:
    """The padded input that ``chunk``'s output positions read, ``(b, C, *slab)``, with the
    padding of ``geom.mode`` applied to this slab only."""
    xb = x[chunk.batch[0] : chunk.batch[1]]
    starts, stops = [], []
    for (o0, o1), k, d, s, (lo, _) in zip(
        chunk.outputs, geom.kernel, geom.dilation, geom.stride, geom.pads, strict=True
    ):
        starts.append(o0 * s - lo)  # input coordinate of the slab's first element
        stops.append(o0 * s - lo + _slab_len(o1 - o0, k, d, s))
    spatial = x.shape[2:]
    if geom.mode == "zeros":
        inner, local = [], []
        for a, e, size in zip(starts, stops, spatial, strict=True):
            a_in = min(max(a, 0), size)
            e_in = max(min(e, size), a_in)
            lo = min(max(a_in - a, 0), e - a)  # a slab wholly in the padding: all lo
            inner.append(slice(a_in, e_in))
            local.append((lo, e - a - lo - (e_in - a_in)))
        part = xb[(slice(None), slice(None), *inner)]
        if not _args.has_padding(tuple(local)):
            return part
        return torch.nn.functional.pad(part, [p for pair in reversed(local) for p in pair])
    n = len(spatial)
    index: list[Any] = [slice(None), slice(None)]
    for i, (a, e, size) in enumerate(zip(starts, stops, spatial, strict=True)):
        idx = _pad_index(size, -a, e - size, geom.mode, x.device)  # positions a..e-1, mapped
        index.append(idx.view(-1, *(1,) * (n - 1 - i)))
    return xb[tuple(index)]


def _tri_blocks(d: int) -> list[tuple[int, int]]:
    nb = max(1, round(d / _TRI_BLOCK))
    edges = [d * i // nb for i in range(nb + 1)]
    return list(zip(edges[:-1], edges[1:], strict=True))


def _add_gram(out: torch.Tensor, u: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    """``out += u uᴴ`` on the block upper triangle only, for ``u`` of shape ``(G, D, m)``."""
    for i, (i0, i1) in enumerate(blocks):
        for j0, j1 in blocks[i:]:
            out[:, i0:i1, j0:j1].baddbmm_(u[:, i0:i1], u[:, j0:j1].mH)


def _mirror_upper(out: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    """Make ``(G, D, D)`` exactly Hermitian from its block upper triangle, in place, one
    row block at a time: diagonal blocks become ``(B + Bᴴ) / 2`` (GEMMs do not guarantee
    ``(U Uᴴ)[j, i] == conj((U Uᴴ)[i, j])``; ``triu`` is 5x slower), the blocks above are
    copied below."""
    for i, (i0, i1) in enumerate(blocks):
        diag = out[:, i0:i1, i0:i1]
        diag.copy_((diag + diag.mH) / 2)
        for j0, j1 in blocks[i + 1 :]:
            out[:, j0:j1, i0:i1] = out[:, i0:i1, j0:j1].mH


def _expand(
    x: torch.Tensor, geom: _Geometry, groups: int, bias: bool, acc: torch.dtype, limit: int
) -> torch.Tensor:
    batch, channels = x.shape[:2]
    n = len(geom.kernel)
    d = channels // groups * math.prod(geom.kernel)
    out = torch.zeros((groups, d + bias, d + bias), dtype=acc, device=x.device)
    sums = torch.zeros((groups, d), dtype=acc, device=x.device) if bias else None
    blocks = _tri_blocks(d)
    plan = expand_plan(batch, channels, geom, x.element_size(), out.element_size(), limit)
    unpadded = Geometry(geom.kernel, geom.dilation, ((0, 0),) * n, geom.stride)
    for chunk in plan:
        slab = _input_slab(x, chunk, geom).to(acc)
        # rows_first: laid out as (C * prod(k), b, l), so (groups, D, b * l) is a view
        cols = _unfold_forward(slab, unpadded, rows_first=True)
        u = cols.transpose(0, 1).reshape(groups, d, -1)
        del slab, cols
        _add_gram(out, u, blocks)
        if sums is not None:
            sums += u.sum(-1)
        del u
    _mirror_upper(out, blocks)
    if sums is not None:
        out[:, :d, d] = sums
        out[:, d, :d] = sums.conj()
        out[:, d, d] = batch * math.prod(geom.outs)
    return out


# --------------------------------------------------------------------------- reduce


# A dozen tiny ops per call (~0.2 ms, a third of a small layer's "reduce"): cached. The
# tensors are only ever read, under no_grad.
@_plan.memo(maxsize=256)
def _counts(size: int, k: int, d: int, s: int, pads: tuple[int, int], blocks: int,
            mode: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:  # fmt: skip
    """``(k, size)``: how often input element p is read at kernel offset a along one dim,
    summed over the ``blocks`` output positions (padding of ``mode`` included)."""
    lo, hi = pads
    offsets = torch.arange(k, device=device).view(-1, 1) * d
    padded = offsets + torch.arange(blocks, device=device) * s  # (k, blocks) padded coords
    if mode == "zeros":
        source = padded - lo
        inside = (source >= 0) & (source < size)
        weight = inside.to(dtype)
        source = source.clamp(0, max(size - 1, 0))
    else:
        source = _pad_index(size, lo, hi, mode, device)[padded]
        weight = torch.ones(source.shape, dtype=dtype, device=device)
    out = torch.zeros((k, size), dtype=dtype, device=device)
    return out.scatter_add_(1, source, weight) if size else out


def reduce_chunk_bytes(batch: int, channels: int, spatial: Sequence[int],
                       kernel: Sequence[int], acc: int) -> int:  # fmt: skip
    """Bytes a batch chunk of ``"reduce"`` allocates: its input in the accumulation dtype,
    then each contraction's input and output alive together."""
    sizes = [math.prod(spatial)]
    for i in range(len(spatial) - 1, -1, -1):
        sizes.append(math.prod(spatial[:i]) * math.prod(kernel[i:]))
    peak = max(a + b for a, b in zip(sizes[:-1], sizes[1:], strict=True))
    return batch * channels * acc * peak


def _window_means(x: torch.Tensor, counts: list[torch.Tensor], positions: int) -> torch.Tensor:
    """``(b, C, *S)`` -> ``(b, C * prod(k))``: the mean over output positions of each
    unfolded row, contracting one spatial dim at a time, last dim first."""
    b, c = x.shape[:2]
    spatial = x.shape[2:]
    n = len(spatial)
    t = x.reshape(b * c * math.prod(spatial[:-1]), spatial[-1]) @ counts[-1].T
    width = counts[-1].shape[0]  # prod(k_>i)
    for i in range(n - 2, -1, -1):
        t = t.view(b * c * math.prod(spatial[:i]), spatial[i], width)
        t = torch.matmul(counts[i], t)  # (k_i, S_i) @ (P, S_i, prod(k_>i))
        width *= counts[i].shape[0]
    return t.reshape(b, c * width) / positions


def reduce_plan(batch: int, channels: int, spatial: Sequence[int], kernel: Sequence[int],
                groups: int, bias: bool, acc: int, limit: int) -> tuple[int, int]:  # fmt: skip
    """``(step, flush)``: ``"reduce"`` contracts ``step`` samples at a time into a buffer of
    ``flush`` samples' means (a multiple of ``step``), which one GEMM then adds to the
    factor; the contractions and the buffer together stay within ``limit`` bytes once one
    sample's do (few large GEMMs: the factor is written once per flush, not per step)."""
    one = reduce_chunk_bytes(1, channels, spatial, kernel, acc)
    row = (channels * math.prod(kernel) + groups * bias) * acc
    step = max(1, min(batch, (limit // 2) // max(one, 1)))
    flush = max(step, (limit - step * one) // max(row, 1) // step * step)
    return step, max(step, min(flush, -(-batch // step) * step))


def _reduce(
    x: torch.Tensor, geom: _Geometry, groups: int, bias: bool, acc: torch.dtype, limit: int
) -> torch.Tensor:
    batch, channels = x.shape[:2]
    d = channels // groups * math.prod(geom.kernel)
    counts = [
        _counts(size, k, dil, s, p, blocks, geom.mode, acc, x.device)
        for size, k, dil, s, p, blocks in zip(
            x.shape[2:], geom.kernel, geom.dilation, geom.stride, geom.pads, geom.outs,
            strict=True,
        )
    ]  # fmt: skip
    out = torch.zeros((groups, d + bias, d + bias), dtype=acc, device=x.device)
    step, flush = reduce_plan(
        batch, channels, x.shape[2:], geom.kernel, groups, bias, out.element_size(), limit
    )
    positions = math.prod(geom.outs)
    blocks = _tri_blocks(d + bias)
    means = torch.ones((min(flush, batch), groups, d + bias), dtype=acc, device=x.device)
    for f0 in range(0, batch, flush):
        rows = min(flush, batch - f0)
        for b0 in range(f0, f0 + rows, step):
            b1 = min(b0 + step, f0 + rows)
            part = _window_means(x[b0:b1].to(acc), counts, positions)
            means[b0 - f0 : b1 - f0, :, :d] = part.view(-1, groups, d)
        _add_gram(out, means[:rows].permute(1, 2, 0), blocks)  # (groups, D [+ 1], rows)
    _mirror_upper(out, blocks)
    return out


# --------------------------------------------------------------------------- public


def patch_covariance(
    input: torch.Tensor,
    kernel_size: IntOrTuple,
    dilation: IntOrTuple = 1,
    padding: PaddingArg = 0,
    stride: IntOrTuple = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
    bias: bool = False,
    reduction: str = "expand",
    max_workspace_bytes: int | None = None,
) -> torch.Tensor:
    """The KFAC input factor of a conv layer: the second moment of its unfolded input.

    With ``u`` the columns of ``unfold(input, kernel_size, dilation, padding, stride,
    padding_mode)`` (one per sample n and output position l, rows ``c * prod(k) +
    flat(offset)``), split into ``groups`` row blocks of ``D = C / groups * prod(k)``:

    - ``reduction="expand"``: ``Σ_n Σ_l u uᴴ`` (KFAC-expand);
    - ``reduction="reduce"``: ``Σ_n ū_n ū_nᴴ`` with ``ū_n`` the mean of ``u`` over the
      L positions of sample n (KFAC-reduce).

    ``bias=True`` appends a constant 1 to every ``u`` (homogeneous coordinates, as KFAC
    treats a conv bias): the last row and column hold the sums of ``u`` (of ``ū_n``) and
    the corner the count ``B * L`` (``B``). Complex inputs give the Hermitian ``u uᴴ``.
    The whole unfolded input is never built: ``"expand"`` unfolds slabs of at most
    ``max_workspace_bytes`` (default about 4 MB, cache-sized) and adds one matrix product
    per slab (the upper triangle only, mirrored); ``"reduce"`` contracts the input with
    per-dim count matrices and unfolds nothing. float16 / bfloat16 are accumulated in
    float32. Not differentiable (computed under ``torch.no_grad()``; the result never
    requires grad); works under ``torch.inference_mode()``.

    Args:
        input: ``(B, C, *S)`` or unbatched ``(C, *S)``, floating or complex.
        kernel_size, dilation, stride: int or N-tuple, as for ``unfold``.
        padding: int, N-tuple, per-side pairs ``((lo, hi), ...)``, "valid" or "same".
        padding_mode: "zeros", "reflect", "replicate" or "circular".
        groups: channel groups (divides C); one factor per group.
        bias: append the constant-1 coordinate (``D + 1`` rows and columns).
        reduction: "expand" or "reduce".
        max_workspace_bytes: bound on the slab intermediates (unfolded slab and padded input
            slab for "expand"; a batch chunk's contractions for "reduce").

    Returns:
        ``(groups, D, D)`` (``D + 1`` with ``bias``), without the leading dim when
        ``groups == 1``; input's dtype. Batch size 0 gives zeros (the empty sum).

    >>> x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    >>> a = patch_covariance(x, 3, padding=1)
    >>> a.shape
    torch.Size([27, 27])
    >>> from nfold import unfold
    >>> u = unfold(x, 3, padding=1)  # (2, 27, 64)
    >>> torch.allclose(a, torch.einsum("nil,njl->ij", u, u))
    True
    >>> patch_covariance(x, (3, 3), groups=3, bias=True, reduction="reduce").shape
    torch.Size([3, 10, 10])
    """
    sizes = {"kernel_size": kernel_size, "dilation": dilation, "padding": padding, "stride": stride}
    x, n, _ = _args.spatial_input(input, sizes)
    acc = _accumulate_dtype(x)
    layer = _plan.geometry(n, kernel_size, dilation, padding, stride)
    kernel, dil, pads, st = layer.kernel, layer.dilation, layer.padding, layer.stride
    mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
    g = _args.groups(groups, **{"input channels": x.shape[1]})
    if not isinstance(bias, bool):
        raise _args.ArgumentTypeError(f"bias must be a bool, got {bias!r}")
    how = _args.choice(reduction, "reduction", REDUCTIONS)
    limit = _args.workspace(max_workspace_bytes)
    spatial = tuple(x.shape[2:])
    if mode != "zeros":
        check_pad_mode(spatial, pads, mode)
    geom = _Geometry(kernel, dil, pads, st, mode, _args.output_size(spatial, kernel, dil, pads, st))
    item, acc_item = x.element_size(), torch.empty((), dtype=acc).element_size()
    if how == "expand":
        one = expand_chunk_bytes(1, (1,) * n, x.shape[1], geom, item, acc_item)
        what = "one output position"
    else:
        one = reduce_chunk_bytes(1, x.shape[1], spatial, kernel, acc_item)
        one += (x.shape[1] * math.prod(kernel) + g * bias) * acc_item
        what = "one sample"
    if limit is not None and one > limit:
        raise _args.ArgumentError(
            f"max_workspace_bytes={limit} is smaller than the {one} bytes {what} needs "
            f'(reduction="{how}", input shape {tuple(x.shape)}, kernel_size={kernel})'
        )
    workspace = max(_AUTO_WORKSPACE, one) if limit is None else limit
    device = x.device.type
    exact = (  # keep our GEMMs in the accumulation dtype
        torch.autocast(device, enabled=False)
        if torch.amp.is_autocast_available(device)
        else contextlib.nullcontext()
    )
    with torch.no_grad(), exact:
        if x.shape[1] == 0 or functorch_active():
            out = _dense(x, geom, g, bias, acc, how).to(x.dtype)
        else:
            work = _expand if how == "expand" else _reduce
            out = work(x, geom, g, bias, acc, workspace).to(x.dtype)
    return out if g > 1 else out.squeeze(0)


def _dense(
    x: torch.Tensor, geom: _Geometry, groups: int, bias: bool, acc: torch.dtype, how: str
) -> torch.Tensor:
    """The factor from the whole unfolded input, by out-of-place ops: under functorch
    transforms (``torch.func.vmap`` & co.), which cannot batch the streamed path's
    in-place sums, and for 0 channels (D = 0: only the bias coordinate, if any)."""
    if x.shape[1]:
        u = unfold(x.to(acc), geom.kernel, geom.dilation, geom.pads, geom.stride, geom.mode)
    else:
        u = x.new_zeros((x.shape[0], 0, math.prod(geom.outs)), dtype=acc)
    u = u.view(x.shape[0], groups, -1, u.shape[-1])  # (B, G, D, L)
    if how == "reduce":
        u = u.mean(-1, keepdim=True)
    if bias:
        u = torch.cat([u, u.new_ones((*u.shape[:2], 1, u.shape[-1]))], 2)
    return torch.einsum("bgil,bgjl->gij", u, u.conj())


def _conv_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    convs = (nn.Conv1d, nn.Conv2d, nn.Conv3d, ConvNd)
    return [(name, m) for name, m in model.named_modules() if isinstance(m, convs)]


def kfac_input_factors(
    model: nn.Module,
    *inputs: object,
    reduction: str = "expand",
    max_workspace_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Run ``model(*inputs)`` once and return the KFAC input factor of every conv layer.

    Each ``Conv1d/2d/3d`` (torch's or nfold's) and ``nfold.ConvNd`` gets a forward hook
    that calls :func:`patch_covariance` on the layer's input with the layer's own geometry
    (kernel_size, dilation, padding, stride, padding_mode, groups; ``bias=True`` when the
    layer has a bias). A layer called several times in one forward gets the sum of its
    factors. Transposed convs are not included. The forward runs under
    ``torch.no_grad()``; hooks are removed afterwards, also on error.

    Args:
        model: any module; its conv layers are found with ``named_modules()``.
        *inputs: passed to ``model``.
        reduction: "expand" or "reduce", as for :func:`patch_covariance`.
        max_workspace_bytes: as for :func:`patch_covariance`.

    Returns:
        ``{layer name: factor}`` in ``named_modules()`` order, for the layers that ran.

    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
    ...                             torch.nn.Conv2d(4, 2, 3, groups=2, bias=False))
    >>> factors = kfac_input_factors(model, torch.randn(2, 3, 8, 8))
    >>> {name: tuple(a.shape) for name, a in factors.items()}
    {'0': (28, 28), '2': (2, 18, 18)}
    """
    _args.choice(reduction, "reduction", REDUCTIONS)
    _args.workspace(max_workspace_bytes)
    layers = _conv_layers(model)
    factors: dict[str, torch.Tensor] = {}

    def hook(name: str, layer: nn.Module) -> Callable[..., None]:
        def record(
            module: nn.Module, args: tuple[object, ...], kwargs: dict[str, object], output: object
        ) -> None:
            factor = patch_covariance(
                args[0] if args else kwargs["input"],  # type: ignore[arg-type]
                layer.kernel_size,  # type: ignore[arg-type]
                layer.dilation,  # type: ignore[arg-type]
                layer.padding,  # type: ignore[arg-type]
                layer.stride,  # type: ignore[arg-type]
                layer.padding_mode,  # type: ignore[arg-type]
                layer.groups,  # type: ignore[arg-type]
                layer.bias is not None,
                reduction,
                max_workspace_bytes,
            )
            factors[name] = factors[name] + factor if name in factors else factor

        return record

    handles = [
        layer.register_forward_hook(hook(name, layer), with_kwargs=True) for name, layer in layers
    ]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: factors[name] for name, _ in layers if name in factors}
