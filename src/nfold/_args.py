"""Argument normalisation: one place that turns ints/tuples into N-tuples, infers N,
computes output sizes and raises the argument errors.

Everything here is plain Python on ints, so it is free under ``torch.compile``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence

import torch

IntOrTuple = int | Sequence[int]
PaddingArg = int | Sequence[int] | Sequence[Sequence[int]] | str
Pads = tuple[tuple[int, int], ...]

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
REDUCTIONS = ("sum", "mean")


class ArgumentError(ValueError, RuntimeError):
    """A bad argument value. nfold's errors are ``ValueError`` / ``TypeError``; each is also
    the ``RuntimeError`` torch's own ops raise for such input (a channel count that does not
    match, say), so code written against torch catches it either way, as numpy's
    ``AxisError`` is both a ``ValueError`` and an ``IndexError``."""


class ArgumentTypeError(TypeError, RuntimeError):
    """A bad argument type or dtype (see :class:`ArgumentError`)."""


def _is_int(value: object) -> bool:
    # bool is an int subclass; a bool posing as a size is a bug on the caller's side.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_seq(value: object) -> bool:
    return isinstance(value, (tuple, list, torch.Size))


def check_tensor(input: object, name: str = "input") -> torch.Tensor:
    if not isinstance(input, torch.Tensor):
        raise ArgumentTypeError(f"{name} must be a torch.Tensor, got {type(input).__name__}")
    return input


def ntuple(value: object, n: int, name: str, min_value: int = 1) -> tuple[int, ...]:
    """``value`` (int or length-``n`` sequence of ints) as an ``n``-tuple, each >= ``min_value``."""
    if _is_int(value):
        out = (int(value),) * n  # type: ignore[call-overload]
    elif _is_seq(value):
        out = tuple(value)  # type: ignore[arg-type]
        if len(out) != n:
            raise ArgumentError(
                f"{name} must be an int or a tuple of {n} ints (one per spatial dim), "
                f"got {value!r} of length {len(out)}"
            )
        if not all(_is_int(v) for v in out):
            raise ArgumentTypeError(f"{name} must contain ints, got {value!r}")
    else:
        raise ArgumentTypeError(f"{name} must be an int or a tuple of {n} ints, got {value!r}")
    if any(v < min_value for v in out):
        raise ArgumentError(f"{name} must be >= {min_value} in every dim, got {value!r}")
    return out


def tuple_len(value: object, name: str) -> int | None:
    """Number of spatial dims a size argument fixes (None for an int or a string)."""
    if _is_int(value) or isinstance(value, str):
        return None
    if _is_seq(value):
        return len(value)  # type: ignore[arg-type]
    raise ArgumentTypeError(f"{name} must be an int or a tuple of ints, got {value!r}")


def infer_n(sizes: Mapping[str, object], default: int | None) -> int:
    """N from the tuple lengths among ``sizes`` (name -> value), else ``default``."""
    lengths = {name: tuple_len(v, name) for name, v in sizes.items()}
    lengths = {name: n for name, n in lengths.items() if n is not None}
    if len(set(lengths.values())) > 1:
        got = ", ".join(f"{name} has {n}" for name, n in lengths.items())
        raise ArgumentError(f"size arguments disagree on the number of spatial dims: {got}")
    n = next(iter(lengths.values()), default)
    if n is None or n < 1:
        raise ArgumentError(f"need at least 1 spatial dim, got {n}")
    return n


def input_n(shape: Sequence[int], sizes: Mapping[str, object]) -> tuple[int, bool]:
    """N, and whether an input of ``shape`` is batched ``(B, C, *S)`` rather than
    unbatched ``(C, *S)``, given the size arguments (name -> value)."""
    ndim = len(shape)
    fixed = [f"{name}={v!r}" for name, v in sizes.items() if tuple_len(v, name) is not None]
    if ndim < 3 and not fixed:
        raise ArgumentError(
            f"input must have at least 3 dims (B, C, *spatial) when every size argument is an "
            f"int (pass N-tuples for an unbatched (C, *spatial) input), got shape {tuple(shape)}"
        )
    n = infer_n(sizes, default=ndim - 2 if ndim >= 3 else None)
    if ndim in (n + 1, n + 2):
        return n, ndim == n + 2
    raise ArgumentError(
        f"input must have {n + 2} dims (B, C, *{n} spatial) or {n + 1} (unbatched) for the "
        f"{n} spatial dims given by {', '.join(fixed)}, got shape {tuple(shape)}"
    )


def spatial_input(input: object, sizes: Mapping[str, object]) -> tuple[torch.Tensor, int, bool]:
    """Validate a ``(B, C, *S)`` or unbatched ``(C, *S)`` input.

    Returns the input as a batched tensor, N and whether the input was batched.
    """
    x = check_tensor(input)
    n, batched = input_n(x.shape, sizes)
    return (x if batched else x.unsqueeze(0)), n, batched


def padding_pairs(
    padding: object,
    n: int,
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    stride: tuple[int, ...],
    name: str = "padding",
) -> Pads:
    """Per-side padding ``((lo_1, hi_1), ..., (lo_N, hi_N))`` from an int, an N-tuple,
    per-side pairs, "valid" or "same" (extra element on the high side, as torch's conv)."""
    if isinstance(padding, str):
        if padding == "valid":
            return ((0, 0),) * n
        if padding == "same":
            if any(s != 1 for s in stride):
                raise ArgumentError(f'{name}="same" needs stride 1, got stride={stride}')
            totals = [d * (k - 1) for k, d in zip(kernel_size, dilation, strict=True)]
            return tuple((t // 2, t - t // 2) for t in totals)
        raise ArgumentError(f'{name} must be an int, a tuple, "same" or "valid", got {padding!r}')
    if _is_seq(padding) and any(_is_seq(p) for p in padding):  # type: ignore[attr-defined]
        pairs: tuple[Sequence[int], ...] = tuple(padding)  # type: ignore[arg-type]
        if len(pairs) != n or not all(_is_seq(p) and len(p) == 2 for p in pairs):
            raise ArgumentError(
                f"{name} as per-side pairs must be {n} pairs ((lo, hi), ...), got {padding!r}"
            )
        flat = ntuple(tuple(v for p in pairs for v in p), 2 * n, name, min_value=0)
        return tuple(zip(flat[::2], flat[1::2], strict=True))
    sym = ntuple(padding, n, name, min_value=0)
    return tuple((p, p) for p in sym)


def choice(value: object, name: str, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ArgumentError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def groups(groups: object, **counts: int) -> int:
    """``groups`` as a positive int dividing every channel count (name -> count)."""
    if not _is_int(groups):
        raise ArgumentTypeError(f"groups must be an int, got {groups!r}")
    g = int(groups)  # type: ignore[call-overload]
    if g < 1:
        raise ArgumentError(f"groups must be a positive int, got {g}")
    for name, count in counts.items():
        if count % g:
            raise ArgumentError(f"{name} ({count}) must be divisible by groups ({g})")
    return g


def workspace(max_workspace_bytes: object) -> int | None:
    """``max_workspace_bytes`` as a positive int, or None (no limit)."""
    if max_workspace_bytes is None:
        return None
    if not _is_int(max_workspace_bytes):
        raise ArgumentTypeError(
            f"max_workspace_bytes must be an int or None, got {max_workspace_bytes!r}"
        )
    if max_workspace_bytes < 1:  # type: ignore[operator]
        raise ArgumentError(f"max_workspace_bytes must be positive, got {max_workspace_bytes}")
    return int(max_workspace_bytes)  # type: ignore[call-overload]


def output_size(
    spatial: Sequence[int],
    kernel_size: tuple[int, ...],
    dilation: tuple[int, ...],
    padding: Pads,
    stride: tuple[int, ...],
    name: str = "input spatial size",
) -> tuple[int, ...]:
    """Number of sliding blocks per dim, ``(S + lo + hi - d (k - 1) - 1) // s + 1``.

    ``name`` is what ``spatial`` is called in the error (fold: its ``output_size``).

    >>> output_size((5, 7), (3, 3), (1, 2), ((1, 1), (0, 0)), (2, 1))
    (3, 3)
    """
    out = []
    for i, (s_, k, d, (lo, hi), st) in enumerate(
        zip(spatial, kernel_size, dilation, padding, stride, strict=True)
    ):
        span = d * (k - 1) + 1
        if s_ + lo + hi < span:
            raise ArgumentError(
                f"kernel_size {kernel_size} with dilation {dilation} spans {span} in spatial dim "
                f"{i}, larger than {s_ + lo + hi}, the {name} {tuple(spatial)} padded by "
                f"{padding}"
            )
        out.append((s_ + lo + hi - span) // st + 1)
    return tuple(out)


def transpose_output_size(
    spatial: Sequence[int],
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    output_padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """Spatial size of a transposed convolution, ``(S-1) s - 2p + d (k-1) + op + 1``."""
    for i, (op, s, d) in enumerate(zip(output_padding, stride, dilation, strict=True)):
        if op >= max(s, d):
            raise ArgumentError(
                f"output_padding must be smaller than max(stride, dilation) in every dim, "
                f"got output_padding={output_padding} with stride={stride}, dilation={dilation} "
                f"(dim {i})"
            )
    out = tuple(
        (s_ - 1) * st - 2 * p + d * (k - 1) + op + 1
        for s_, k, st, p, op, d in zip(
            spatial, kernel_size, stride, padding, output_padding, dilation, strict=True
        )
    )
    if any(o < 0 for o in out):  # 0 is allowed: torch returns an empty tensor
        raise ArgumentError(
            f"transposed output size {out} is negative for input spatial size "
            f"{tuple(spatial)}, kernel_size={kernel_size}, stride={stride}, padding={padding}, "
            f"output_padding={output_padding}, dilation={dilation}"
        )
    return out


def output_padding_for(
    spatial: Sequence[int],
    output_size: object,
    kernel_size: tuple[int, ...],
    stride: tuple[int, ...],
    padding: tuple[int, ...],
    dilation: tuple[int, ...],
) -> tuple[int, ...]:
    """The ``output_padding`` that makes a transposed conv produce ``output_size``.

    ``output_size`` may carry the batch and channel dims too (as torch allows).
    """
    n = len(spatial)
    if _is_seq(output_size) and len(output_size) in (n + 1, n + 2):  # type: ignore[arg-type]
        output_size = tuple(output_size)[-n:]  # type: ignore[arg-type]
    size = ntuple(output_size, n, "output_size", min_value=0)  # 0: empty, as torch
    # The smallest size (output_padding 0) may be <= 0 while output_size is reachable
    # (torch accepts it), so it is computed here without transpose_output_size's check.
    smallest = tuple(
        (s_ - 1) * st - 2 * p + d * (k - 1) + 1
        for s_, k, st, p, d in zip(spatial, kernel_size, stride, padding, dilation, strict=True)
    )
    for i, (want, lo, st) in enumerate(zip(size, smallest, stride, strict=True)):
        if not lo <= want <= lo + st - 1:
            raise ArgumentError(
                f"output_size {size} is not reachable: dim {i} must lie in [{lo}, {lo + st - 1}] "
                f"for input spatial size {tuple(spatial)}, kernel_size={kernel_size}, "
                f"stride={stride}, padding={padding}, dilation={dilation}"
            )
    return tuple(w - lo for w, lo in zip(size, smallest, strict=True))


def has_padding(pads: Pads) -> bool:
    return any(p for pair in pads for p in pair)


def padded_size(spatial: Sequence[int], pads: Pads) -> tuple[int, ...]:
    """``S + lo + hi`` per spatial dim."""
    return tuple(s + lo + hi for s, (lo, hi) in zip(spatial, pads, strict=True))


def span(kernel: Sequence[int], dilation: Sequence[int]) -> tuple[int, ...]:
    """Extent of one (dilated) block per dim, ``d (k - 1) + 1``."""
    return tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation, strict=True))


_INT64_MAX = 2**63 - 1


@functools.cache
def _memory_bytes(device: torch.device) -> int | None:
    """Bytes of memory ``device`` has (None: unknown, or meta, which allocates nothing)."""
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        except (AttributeError, ValueError, OSError):  # no sysconf (Windows)
            return None
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return None


def check_alloc(
    dtype: torch.dtype, device: torch.device, op: str, args: Mapping[str, object],
    **shapes: Sequence[int],
) -> None:  # fmt: skip
    """Reject up front, in Python ints, tensors that cannot be allocated.

    Each ``name=shape`` is a tensor ``op`` is about to create with ``dtype`` on ``device``.
    Raises ``ValueError`` naming the arguments ``args`` and the size requested when the
    element count exceeds int64 or the bytes exceed the device's memory, instead of
    letting the allocator fail, overflow or (with overcommit) get the process killed.
    """
    if torch.compiler.is_compiling():
        return  # shapes were checked when the graph was traced eagerly / are symbolic
    if any(not isinstance(s, int) for shape in shapes.values() for s in shape):
        return  # symbolic sizes: nothing to check in Python ints
    limit = None
    for name, shape in shapes.items():
        numel = math.prod(shape)
        nbytes = numel * dtype.itemsize
        if numel <= 2**24 and nbytes <= 2**30:
            continue  # small: skip the (cached) device-memory lookup
        if limit is None:
            limit = _memory_bytes(device) or _INT64_MAX
        if numel > _INT64_MAX or nbytes > limit:
            bound = (
                f"the int64 element-count limit {_INT64_MAX}"
                if numel > _INT64_MAX
                else f"the {limit} bytes of memory of device {device}"
            )
            got = ", ".join(f"{k}={v!r}" for k, v in args.items())
            raise ArgumentError(
                f"{op} with {got} would allocate {name} of shape {tuple(shape)}: {numel} "
                f"elements, {nbytes} bytes of {dtype}, more than {bound}"
            )


def check_conv_alloc(
    shape: Sequence[int], dtype: torch.dtype, device: torch.device, c_out: int,
    kernel: tuple[int, ...], dilation: tuple[int, ...], pads: Pads, stride: tuple[int, ...],
    padding_mode: str, chunked: bool,
) -> None:  # fmt: skip
    """``conv``'s padded input, unfolded matrix (unless chunked) and output fit, for a
    batched input of ``shape``."""
    spatial, (b, c) = tuple(shape[2:]), shape[:2]
    outs = output_size(spatial, kernel, dilation, pads, stride)
    padded = padded_size(spatial, pads)
    shapes = {"output": (b, c_out, *outs)}
    if padding_mode != "zeros" or not chunked:
        shapes["padded_input"] = (b, c, *padded)
    if not chunked:
        shapes["unfolded_input"] = (b, c * math.prod(kernel), math.prod(outs))
    args = {"input.shape": tuple(shape), "kernel_size": kernel, "dilation": dilation,
            "padding": pads, "stride": stride}  # fmt: skip
    check_alloc(dtype, device, "conv", args, **shapes)


def check_conv_transpose_alloc(
    x_shape: Sequence[int], dtype: torch.dtype, device: torch.device, c_out: int,
    kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
    output_padding: tuple[int, ...], dilation: tuple[int, ...], chunked: bool,
) -> None:  # fmt: skip
    """``conv_transpose``'s column matrix (unless chunked) and output fit."""
    spatial, b = tuple(x_shape[2:]), x_shape[0]
    outs = transpose_output_size(spatial, kernel, stride, padding, output_padding, dilation)
    shapes = {"output": (b, c_out, *outs)}
    if not chunked:
        shapes["columns"] = (b, c_out * math.prod(kernel), math.prod(spatial))
    args = {"input.shape": tuple(x_shape), "kernel_size": kernel, "stride": stride,
            "padding": padding, "output_padding": output_padding, "dilation": dilation}  # fmt: skip
    check_alloc(dtype, device, "conv_transpose", args, **shapes)
