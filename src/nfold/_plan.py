"""Typed call plans: every op's arguments canonicalised once into frozen values.

A public op turns its size arguments and the input's shape into a plan (a ``NamedTuple``)
through one function here, cached per distinct call signature as einops caches its
recipes; the op then only applies it. The data-movement core sees one :class:`Geometry`
(kernel, dilation, per-side zero padding, stride, flip) and the facts it branches on
(``pointwise``, ``disjoint``, ``padded``); tuning constants and the determinism rule live
in a per-device :class:`Policy`.

Plans are plain tuples of ints and strings, so they are free under ``torch.compile``
(which traces the builders instead of using the cache: shapes may be symbolic there).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import torch

from . import _args
from ._args import Pads


@dataclass(frozen=True)
class Geometry:
    """The block grid of unfold / fold: ``kernel``, ``dilation``, per-side zero
    ``padding`` ``((lo, hi), ...)`` and ``stride`` per spatial dim; ``flip`` reverses the
    kernel (the im2col of a transposed convolution).

    A frozen dataclass, not a NamedTuple: ``Function.apply`` walks its arguments as a
    pytree on every call, which a leaf makes free (a NamedTuple of tuples cost ~20 us).
    """

    kernel: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: Pads
    stride: tuple[int, ...]
    flip: bool = False

    @property
    def span(self) -> tuple[int, ...]:
        """Extent of one (dilated) block per dim, ``d (k - 1) + 1``."""
        return _args.span(self.kernel, self.dilation)

    @property
    def padded(self) -> bool:
        return _args.has_padding(self.padding)

    @property
    def pointwise(self) -> bool:
        """A 1x1 kernel with stride 1 and no padding: unfold and fold are reshapes."""
        ones = all(k == 1 for k in self.kernel) and all(s == 1 for s in self.stride)
        return ones and not self.padded

    @property
    def disjoint(self) -> bool:
        """Blocks never overlap (stride >= span in every dim: patches), unpadded, unflipped."""
        fits = all(s >= sp for s, sp in zip(self.stride, self.span, strict=True))
        return fits and not self.flip and not self.padded

    def blocks(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Blocks per dim over an input of size ``spatial`` (raises if the kernel does not fit)."""
        return _args.output_size(spatial, self.kernel, self.dilation, self.padding, self.stride)

    def unpadded(self) -> Geometry:
        return dataclasses.replace(self, padding=((0, 0),) * len(self.kernel))


# --------------------------------------------------------------------------- policy


@dataclass(frozen=True, eq=False)  # compared and hashed by identity: a cheap cache key
class Policy:
    """Per-device tuning constants and determinism rule of the core.

    Attributes:
        pad_chunk_bytes: zero padding is applied to at most this many bytes of input at a
            time, so unfold's peak memory is its output plus this.
        tile_bytes: conv builds and consumes the unfolded matrix in batch tiles of about
            this size (cache-sized on CPUs; results do not depend on it).
        auto_workspace: without ``max_workspace_bytes``, conv still works in output slabs
            of about this size.
        short_row: below this many blocks along the last dim, fold runs one
            ``scatter_add_`` pass instead of strided adds (if ``ordered_scatter``).
        short_strided_row: the same for folds with a stride > 1, whose phases each need
            a buffer and a strided write (CPU, k3 s2: scatter 0.70x the phases' time at
            16 blocks, 1.0x at 24, 2x at 32).
        index_share: ... and only when its int64 index is at most this share of the input.
        small_index: a fold whose input and index have at most this many bytes each
            scatters (one op instead of one strided add per kernel offset, which is what
            a small call costs; the index is cached).
        torch_below: N = 2 unfold and fold calls whose output (unfold) or input (fold)
            has at most this many bytes, in float32 or float64 with symmetric zero
            padding, run torch's own ``F.unfold`` / ``F.fold``: the very same bits
            (unfold copies; fold sums in the same order, and each is the other's
            backward), at a C++ call's fixed cost, which is what such calls are bound by.
            A "gemm" conv whose unfolded matrix is that small runs as plain torch ops
            (im2col, bmm) under torch's autograd, whose products are the Function's.
        ordered_scatter: ``scatter_add_`` adds each row's terms in index order (CPU), so
            it keeps torch's col2im summation order, bitwise; on GPUs it uses atomics
            (nondeterministic order), so fold never uses it there.
    """

    pad_chunk_bytes: int
    tile_bytes: int
    auto_workspace: int
    short_row: int
    short_strided_row: int
    index_share: float
    small_index: int
    torch_below: int
    ordered_scatter: bool


#: Measured on a 2-core AVX-512 machine (issue 5 benchmarks): cache-sized chunks.
CPU = Policy(
    pad_chunk_bytes=1 << 20,
    tile_bytes=8 << 20,
    auto_workspace=8 << 20,
    short_row=16,
    short_strided_row=24,
    index_share=1 / 8,
    small_index=64 << 10,
    torch_below=64 << 10,  # measured crossover: 36 KB torch faster, 288 KB nfold faster
    ordered_scatter=True,
)
#: Written down, not measured (no GPU is lent to this project): kernel launches, not
#: caches, bound small chunks on a GPU, so chunks are large; fold keeps its phase adds
#: (deterministic), never atomics.
CUDA = Policy(
    pad_chunk_bytes=64 << 20,
    tile_bytes=256 << 20,
    auto_workspace=256 << 20,
    short_row=0,
    short_strided_row=0,
    index_share=0.0,
    small_index=0,
    torch_below=0,  # torch's CUDA col2im need not sum in the CPU's order
    ordered_scatter=False,
)
#: Plans are cached and some are derived from these: after replacing one, call
#: :func:`clear_caches`.
POLICIES: dict[str, Policy] = {"cpu": CPU, "cuda": CUDA}


def policy(device: torch.device) -> Policy:
    """The policy of ``device``'s type; devices without one get CUDA's (no ordered scatter)."""
    return POLICIES.get(device.type, POLICIES["cuda"])


# --------------------------------------------------------------------------- caching

_R = TypeVar("_R")


# arguments that are their own key: no other type's value equals one of them
_PLAIN = frozenset({int, str, torch.Size, torch.dtype, torch.device, type(None)})


def _key(value: object) -> object:
    """Cache key of one argument: sequences as tuples, and other values with their type,
    so that ``2.0`` or ``True`` never hit the plan cached for ``2`` or ``1``."""
    kind = type(value)
    if kind in _PLAIN:
        return value
    if kind is tuple or kind is list:
        return tuple([v if type(v) is int else _key(v) for v in value])  # type: ignore[attr-defined]
    return (kind, value)


_CACHE_SIZE = 4096
_set_tracing_state = torch._C._set_tracing_state  # type: ignore[attr-defined]


def memo(fn: Callable[..., _R] | None = None, *, maxsize: int = _CACHE_SIZE) -> Any:
    """Cache ``fn`` per distinct arguments (see :func:`_key`), at most ``maxsize`` results
    (then the cache starts over). Errors are not cached, unhashable arguments skip the
    cache (``fn`` then raises the argument error), and compiled code traces ``fn`` itself
    (its shapes may be symbolic). ``@memo`` or ``@memo(maxsize=...)``."""
    if fn is None:
        return functools.partial(memo, maxsize=maxsize)
    cache: dict[object, _R] = {}

    @functools.wraps(fn)
    def plan(*args: Any) -> _R:
        if torch.compiler.is_compiling():
            return fn(*args)
        tracing = torch._C._get_tracing_state()
        if tracing is not None:  # torch.jit.trace: plan outside the trace, from plain ints
            _set_tracing_state(None)
            try:
                return plan(*[_traced_sizes(a) for a in args])
            finally:
                _set_tracing_state(tracing)
        key = tuple([a if type(a) in _PLAIN else _key(a) for a in args])
        try:
            return cache[key]
        except KeyError:
            pass
        except TypeError:  # unhashable
            return fn(*args)
        if len(cache) >= maxsize:
            cache.clear()
        result = cache[key] = fn(*args)
        return result

    plan.cache_clear = cache.clear  # type: ignore[attr-defined]
    _CACHES.append(cache)
    return plan


_CACHES: list[dict[object, Any]] = []


def _traced_sizes(value: object) -> object:
    """``value`` with the sizes ``torch.jit.trace`` hands out as tensors (in ``Tensor.shape``)
    as ints: plans are made of ints, and the trace is for these shapes (torch warns so)."""
    if isinstance(value, torch.Size):
        return torch.Size([int(v) for v in value])
    return value


def clear_caches() -> None:
    """Forget every cached plan (for tests that patch what plans are derived from)."""
    for cache in _CACHES:
        cache.clear()


# --------------------------------------------------------------------------- arguments


def geometry(
    n: int, kernel_size: object, dilation: object, padding: object, stride: object
) -> Geometry:
    """Validated :class:`Geometry` of N spatial dims (padding: any form ``unfold`` takes)."""
    kernel = _args.ntuple(kernel_size, n, "kernel_size")
    dil = _args.ntuple(dilation, n, "dilation")
    st = _args.ntuple(stride, n, "stride")
    return Geometry(kernel, dil, _args.padding_pairs(padding, n, kernel, dil, st), st)


def check_pad_mode(spatial: Sequence[int], pads: Pads, mode: str) -> None:
    """The sizes ``mode`` can pad (as ``F.pad``): reflect < size, circular <= size."""
    for i, (size, (lo, hi)) in enumerate(zip(spatial, pads, strict=True)):
        if mode == "reflect" and max(lo, hi) >= size:
            raise _args.ArgumentError(
                f'padding {pads} with padding_mode="reflect" must be smaller than the input '
                f"size {size} in spatial dim {i}"
            )
        if mode == "circular" and max(lo, hi) > size:
            raise _args.ArgumentError(
                f'padding {pads} with padding_mode="circular" must be at most the input '
                f"size {size} in spatial dim {i}"
            )
        if mode == "replicate" and size == 0 and lo + hi > 0:
            raise _args.ArgumentError(f"cannot replicate-pad an empty spatial dim {i}")


# --------------------------------------------------------------------------- plans


class TorchArgs(NamedTuple):
    """``kernel_size, dilation, padding, stride`` of ``F.unfold`` / ``F.fold``."""

    kernel_size: tuple[int, ...]
    dilation: tuple[int, ...]
    padding: tuple[int, ...]
    stride: tuple[int, ...]

    # the kernels F.unfold / F.fold call, without their per-call argument parsing (the
    # arguments are checked tuples), which is a third of a small call
    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        """``F.unfold(x, *self)``."""
        return torch._C._nn.im2col(x, *self)

    def fold(self, y: torch.Tensor, spatial: tuple[int, ...]) -> torch.Tensor:
        """``F.fold(y, spatial, *self)``."""
        return torch._C._nn.col2im(y, spatial, *self)


def torch_args(
    geom: Geometry, dtype: torch.dtype, rule: Policy, batch: int, nbytes: int
) -> TorchArgs | None:
    """The arguments for torch's own op where it gives nfold's bits at a lower cost (see
    :attr:`Policy.torch_below`), else None."""
    if (
        len(geom.kernel) != 2
        or dtype not in (torch.float32, torch.float64)
        or not 0 < nbytes <= rule.torch_below
        or batch == 0
        or geom.flip
        or any(lo != hi for lo, hi in geom.padding)
    ):
        return None
    pads = tuple(lo for lo, _ in geom.padding)
    return TorchArgs(geom.kernel, geom.dilation, pads, geom.stride)


class UnfoldPlan(NamedTuple):
    """``unfold`` of a ``(B, C, *S)`` input: pad ``mode_padding`` with ``mode`` (unless
    "zeros"), then im2col with ``geometry`` (zero padding) into ``blocks`` per dim."""

    batched: bool
    geometry: Geometry
    mode: str
    mode_padding: Pads
    blocks: tuple[int, ...]
    torch_args: TorchArgs | None  # run F.unfold with these (see Policy.torch_below)


@memo
def unfold_plan(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, kernel_size: object,
    dilation: object, padding: object, stride: object, padding_mode: object,
) -> UnfoldPlan:  # fmt: skip
    sizes = {"kernel_size": kernel_size, "dilation": dilation, "padding": padding, "stride": stride}
    n, batched = _args.input_n(shape, sizes)
    geom = geometry(n, kernel_size, dilation, padding, stride)
    mode = _args.choice(padding_mode, "padding_mode", _args.PADDING_MODES)
    batch_shape = tuple(shape) if batched else (1, *shape)
    spatial = batch_shape[2:]
    if batch_shape[1] == 0 or 0 in spatial:  # as torch's unfold, even with padding
        raise _args.ArgumentError(
            f"input must have non-empty channel and spatial dims (only the batch may be "
            f"empty), got shape {tuple(shape)}"
        )
    if mode != "zeros":
        check_pad_mode(spatial, geom.padding, mode)
    blocks = geom.blocks(spatial)
    b, c = batch_shape[:2]
    args = {"input.shape": tuple(shape), "kernel_size": geom.kernel, "dilation": geom.dilation,
            "padding": geom.padding, "stride": geom.stride}  # fmt: skip
    _args.check_alloc(dtype, device, "unfold", args,
                      padded_input=(b, c, *_args.padded_size(spatial, geom.padding)),
                      output=(b, c * math.prod(geom.kernel), math.prod(blocks)))  # fmt: skip
    out_bytes = b * c * math.prod(geom.kernel) * math.prod(blocks) * dtype.itemsize
    if mode == "zeros":
        native = torch_args(geom, dtype, policy(device), b, out_bytes)
        return UnfoldPlan(batched, geom, mode, geom.unpadded().padding, blocks, native)
    native = torch_args(geom.unpadded(), dtype, policy(device), b, out_bytes)
    return UnfoldPlan(batched, geom.unpadded(), mode, geom.padding, blocks, native)


class FoldPlan(NamedTuple):
    """``fold`` of a ``(B, C * prod(k), L)`` input onto ``(B, C, *output_size)``."""

    batched: bool
    geometry: Geometry
    output_size: tuple[int, ...]
    reduction: str
    torch_args: TorchArgs | None  # run F.fold with these (see Policy.torch_below)


@memo
def fold_plan(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, output_size: object,
    kernel_size: object, dilation: object, padding: object, stride: object, reduction: object,
) -> FoldPlan:  # fmt: skip
    sizes = {"output_size": output_size, "kernel_size": kernel_size, "dilation": dilation,
             "padding": padding, "stride": stride}  # fmt: skip
    n = _args.infer_n(sizes, default=2)
    spatial = _args.ntuple(output_size, n, "output_size", min_value=1)  # as torch's fold
    geom = geometry(n, kernel_size, dilation, padding, stride)
    mode = _args.choice(reduction, "reduction", _args.REDUCTIONS)
    if mode == "mean" and not (dtype.is_floating_point or dtype.is_complex):
        raise _args.ArgumentTypeError(
            f'reduction="mean" needs a floating or complex input, got {dtype}'
        )
    if len(shape) not in (2, 3):
        raise _args.ArgumentError(
            f"input must have 3 dims (B, C * prod(kernel_size), L) or 2 (unbatched), "
            f"got shape {tuple(shape)}"
        )
    batch_shape = tuple(shape) if len(shape) == 3 else (1, *shape)
    k_numel = math.prod(geom.kernel)
    if batch_shape[1] == 0:  # as torch's fold
        raise _args.ArgumentError(
            f"input's channel dim (C * prod(kernel_size)) must be non-empty, got shape "
            f"{tuple(shape)}"
        )
    if batch_shape[1] % k_numel:
        raise _args.ArgumentError(
            f"input's channel dim ({batch_shape[1]}) must be divisible by prod(kernel_size) = "
            f"{k_numel} (kernel_size={geom.kernel})"
        )
    blocks = _args.output_size(
        spatial, geom.kernel, geom.dilation, geom.padding, geom.stride, name="output_size"
    )
    if batch_shape[2] != math.prod(blocks):
        raise _args.ArgumentError(
            f"input's last dim ({batch_shape[2]}) must equal the number of blocks "
            f"{math.prod(blocks)} = prod{blocks} for output_size={spatial}, "
            f"kernel_size={geom.kernel}, dilation={geom.dilation}, padding={geom.padding}, "
            f"stride={geom.stride}"
        )
    args = {"input.shape": tuple(shape), "output_size": spatial, "kernel_size": geom.kernel}
    output = (batch_shape[0], batch_shape[1] // k_numel, *spatial)
    _args.check_alloc(dtype, device, "fold", args, output=output)
    nbytes = math.prod(shape) * dtype.itemsize
    native = torch_args(geom, dtype, policy(device), batch_shape[0], nbytes)
    return FoldPlan(len(shape) == 3, geom, spatial, mode, native)


class UnfoldTransposePlan(NamedTuple):
    """``unfold_transpose``: zero-insert by ``stride``, pad by ``pads`` (negative values
    crop; ``F.pad`` order), then a stride-1 im2col with the flipped kernel ``geometry``
    into ``blocks`` per dim (the transposed conv's output size; may be 0, as torch)."""

    batched: bool
    stride: tuple[int, ...]
    pads: tuple[int, ...]
    geometry: Geometry
    blocks: tuple[int, ...]


@memo
def unfold_transpose_plan(
    shape: torch.Size, dtype: torch.dtype, device: torch.device, kernel_size: object,
    stride: object, padding: object, output_padding: object, dilation: object,
) -> UnfoldTransposePlan:  # fmt: skip
    sizes = {"kernel_size": kernel_size, "stride": stride, "padding": padding,
             "output_padding": output_padding, "dilation": dilation}  # fmt: skip
    n, batched = _args.input_n(shape, sizes)
    t = transposed(n, kernel_size, stride, padding, output_padding, dilation)
    batch_shape = tuple(shape) if batched else (1, *shape)
    spatial = batch_shape[2:]
    outs = _args.transpose_output_size(spatial, *t)
    if batch_shape[1] == 0 or (batch_shape[0] and 0 in spatial):  # as torch's conv_transpose
        raise _args.ArgumentError(
            f"input must have non-empty channel dims, and non-empty spatial dims unless the "
            f"batch is empty, got shape {tuple(shape)}"
        )
    kernel, st, pad_, out_pad, dil = t
    pairs = [
        (d * (k - 1) - p, d * (k - 1) - p + op)
        for k, p, op, d in zip(kernel, pad_, out_pad, dil, strict=True)
    ]
    b, c = batch_shape[:2]
    inserted = tuple((s - 1) * st_ + 1 for s, st_ in zip(spatial, st, strict=True))
    padded = tuple(max(s, s + lo + hi) for s, (lo, hi) in zip(inserted, pairs, strict=True))
    args = dict(zip(("input.shape", *t._fields), (tuple(shape), *t), strict=True))
    _args.check_alloc(dtype, device, "unfold_transpose", args,
                      zero_inserted_input=(b, c, *inserted), padded_input=(b, c, *padded),
                      output=(b, c * math.prod(kernel), math.prod(outs)))  # fmt: skip
    flat = tuple(v for pair in reversed(pairs) for v in pair)
    geom = Geometry(kernel, dil, ((0, 0),) * n, (1,) * n, flip=True)
    return UnfoldTransposePlan(batched, st, flat, geom, outs)


class Transposed(NamedTuple):
    """Validated size arguments of a transposed convolution."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    output_padding: tuple[int, ...]
    dilation: tuple[int, ...]


def transposed(
    n: int, kernel_size: object, stride: object, padding: object, output_padding: object,
    dilation: object,
) -> Transposed:  # fmt: skip
    return Transposed(
        _args.ntuple(kernel_size, n, "kernel_size"),
        _args.ntuple(stride, n, "stride"),
        _args.ntuple(padding, n, "padding", min_value=0),
        _args.ntuple(output_padding, n, "output_padding", min_value=0),
        _args.ntuple(dilation, n, "dilation"),
    )


class WindowPlan(NamedTuple):
    batched: bool
    geometry: Geometry


@memo
def window_plan(
    shape: torch.Size, kernel_size: object, dilation: object, stride: object
) -> WindowPlan:
    sizes = {"kernel_size": kernel_size, "dilation": dilation, "stride": stride}
    n, batched = _args.input_n(shape, sizes)
    geom = geometry(n, kernel_size, dilation, 0, stride)
    geom.blocks(tuple(shape)[-n:])
    return WindowPlan(batched, geom)
