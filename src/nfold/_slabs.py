"""The library's memory plans, as data: the pieces a call will run, cut to a byte budget.

:func:`plan` cuts a conv's output into slabs (over the batch first, then over ranges of
output positions along spatial dim 0, then dim 1, ...) whose intermediates fit a byte
budget, and returns them as a list of :class:`Slab` that can be printed, tested and
reused; :func:`run` applies an op to each slab and concatenates the results. What a
slab costs and which input rows it reads are a :class:`Layout`'s two methods (one per
op), so the planner knows no convolution. :func:`planes` cuts the ``(batch, channel)``
planes of an op that works plane by plane (unfold's zero padding, fold's padded
scatter) into the chunks whose copies fit the budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import torch

#: Per-dim parameter of a slab's kernel: conv's per-side zero padding ``(lo, hi)``,
#: conv_transpose's uncropped coordinate of the slab's first output position.
Param = Any


class Span(NamedTuple):
    """Output positions ``[first, stop)`` of one spatial dim, the input rows
    ``[start, start + length)`` they read, and the dim's :data:`Param`."""

    first: int
    stop: int
    start: int
    length: int
    param: Param


class Slab(NamedTuple):
    """Samples ``[batch[0], batch[0] + batch[1])`` and, for the leading ``len(spans)``
    spatial dims, the ranges of one slab (the later dims are whole)."""

    batch: tuple[int, int]
    spans: tuple[Span, ...]


class Layout(Protocol):
    """What :func:`plan` asks of an op."""

    def cost(
        self, batch: int, spatial: Sequence[int], params: Sequence[Param], outs: Sequence[int]
    ) -> int:
        """Bytes of the largest intermediate of a slab of this input and output size."""
        ...

    def rows(
        self, i: int, size: int, param: Param, first: int, stop: int
    ) -> tuple[int, int, Param]:
        """Input rows ``(start, length)`` of dim ``i`` (of ``size``) that output positions
        ``[first, stop)`` read, and the slab's new :data:`Param` for that dim."""
        ...


def largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """Largest v in [lo, hi] with ``fits(v)``, given ``fits(lo)`` and monotonicity."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


def plan(
    batch: int,
    spatial: Sequence[int],
    params: Sequence[Param],
    outs: Sequence[int],
    budget: int,
    layout: Layout,
) -> list[Slab]:
    """Slabs whose ``layout.cost`` is at most ``budget`` bytes (or one output position
    of one sample, which the caller has checked fits), in output order.

    Args:
        batch, spatial: the input's batch size and spatial size.
        params: the whole input's :data:`Param` per spatial dim.
        outs: the output's spatial size.
        budget: bytes.
        layout: the op's cost and input rows.
    """

    def fits(b: int, sp: Sequence[int], ps: Sequence[Param], os: Sequence[int]) -> bool:
        return layout.cost(b, sp, ps, os) <= budget

    def split(b: int, sp: tuple[int, ...], ps: tuple[Param, ...], os: tuple[int, ...], i: int
              ) -> list[tuple[Span, ...]]:  # fmt: skip
        if i == len(os) or fits(b, sp, ps, os):
            return [()]

        def piece(first: int, stop: int) -> tuple[Span, tuple[int, ...], tuple[Param, ...]]:
            start, length, p = layout.rows(i, sp[i], ps[i], first, stop)
            return (Span(first, stop, start, length, p), (*sp[:i], length, *sp[i + 1 :]),
                    (*ps[:i], p, *ps[i + 1 :]))  # fmt: skip

        def ok(first: int, stop: int) -> bool:
            span, sub_sp, sub_ps = piece(first, stop)
            return fits(b, sub_sp, sub_ps, (*os[:i], stop - first, *os[i + 1 :]))

        found, first = [], 0
        while first < os[i]:
            stop = first + 1
            if ok(first, stop):
                stop = largest(stop, os[i], lambda s, f=first: ok(f, s))  # type: ignore[misc]
            span, sub_sp, sub_ps = piece(first, stop)
            sub_os = (*os[:i], stop - first, *os[i + 1 :])
            found += [(span, *rest) for rest in split(b, sub_sp, sub_ps, sub_os, i + 1)]
            first = stop
        return found

    sp, ps, os = tuple(spatial), tuple(params), tuple(outs)
    if fits(batch, sp, ps, os):
        return [Slab((0, batch), ())]
    step = largest(1, batch, lambda b: fits(b, sp, ps, os)) if fits(1, sp, ps, os) else 1
    slabs = []
    for b0 in range(0, batch, step):
        b = min(step, batch - b0)
        slabs += [Slab((b0, b), spans) for spans in split(b, sp, ps, os, 0)]
    return slabs


def planes(batch: int, channels: int, plane: int, budget: int) -> list[tuple[slice, slice]]:
    """``(batch, channel)`` ranges of a ``(batch, channels)`` stack of planes of ``plane``
    bytes each, in order, whose copies fit ``budget`` bytes: whole samples where one fits,
    else ranges of one sample's channels (at least one plane each). ``[]``: all at once."""
    if plane * channels * batch <= budget:
        return []
    if plane * channels <= budget:
        step = budget // max(plane * channels, 1)
        return [(slice(b, b + step), slice(None)) for b in range(0, batch, step)]
    step = max(1, budget // plane)
    return [(slice(b, b + 1), slice(c, c + step)) for b in range(batch)
            for c in range(0, channels, step)]  # fmt: skip


def whole(slabs: Sequence[Slab], batch: int) -> bool:
    """Whether ``slabs`` is the one slab of the whole input (a batch of ``batch``)."""
    return len(slabs) == 1 and not slabs[0].spans and slabs[0].batch == (0, batch)


Leaf = Callable[[torch.Tensor, Sequence[Param], Sequence[int]], torch.Tensor]


def run(
    x: torch.Tensor,
    slabs: Sequence[Slab],
    params: Sequence[Param],
    outs: Sequence[int],
    leaf: Leaf,
    into: bool = False,
) -> torch.Tensor:
    """``leaf(x_slab, params_slab, outs_slab)`` for each slab of :func:`plan`, the results
    concatenated into the whole output. Input slabs are cut from one ``split`` per dim
    (see :func:`_slices`), so backward assembles the input gradient once.

    ``into``: no autograd graph is recorded (the caller checked), so each slab is copied
    into one preallocated output as soon as it is made instead of being held until a
    concatenation: peak memory is the output plus one slab's, not twice the output."""
    if whole(slabs, x.shape[0]):
        return leaf(x, params, outs)
    if into:
        return _run_into(x, slabs, params, outs, leaf)

    def along(x: torch.Tensor, group: list[Slab], i: int, ps: tuple[Param, ...],
              os: tuple[int, ...]) -> torch.Tensor:  # fmt: skip
        if all(len(s.spans) <= i for s in group):
            return leaf(x, ps, os)
        runs = [list(g) for _, g in itertools.groupby(group, key=lambda s: s.spans[i][:2])]
        spans = [g[0].spans[i] for g in runs]
        parts = _slices(x, 2 + i, [(s.start, s.length) for s in spans])
        pieces = [
            along(
                part,
                g,
                i + 1,
                (*ps[:i], s.param, *ps[i + 1 :]),
                (*os[:i], s.stop - s.first, *os[i + 1 :]),
            )  # fmt: skip
            for part, g, s in zip(parts, runs, spans, strict=True)
        ]
        return _cat(pieces, 2 + i)

    ps, os = tuple(params), tuple(outs)
    batches = [list(g) for _, g in itertools.groupby(slabs, key=lambda s: s.batch)]
    if len(batches) == 1 and batches[0][0].batch == (0, x.shape[0]):
        return along(x, batches[0], 0, ps, os)
    parts = _slices(x, 0, [g[0].batch for g in batches])
    return _cat([along(p, g, 0, ps, os) for p, g in zip(parts, batches, strict=True)], 0)


def _run_into(
    x: torch.Tensor,
    slabs: Sequence[Slab],
    params: Sequence[Param],
    outs: Sequence[int],
    leaf: Leaf,
) -> torch.Tensor:
    out: torch.Tensor | None = None
    for slab in slabs:
        part, ps, os = x.narrow(0, *slab.batch), list(params), list(outs)
        where: list[Any] = [slice(slab.batch[0], sum(slab.batch)), slice(None)]
        for i, span in enumerate(slab.spans):
            part = part.narrow(2 + i, span.start, span.length)
            ps[i], os[i] = span.param, span.stop - span.first
            where.append(slice(span.first, span.stop))
        piece = leaf(part, ps, os)
        if out is None:
            out = piece.new_empty((x.shape[0], piece.shape[1], *outs))
        out[tuple(where)] = piece
        del piece
    assert out is not None
    return out


def _cat(pieces: list[torch.Tensor], dim: int) -> torch.Tensor:
    return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim)


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
        run_ = pieces[first[a] : first[a + length]]
        yield run_[0] if len(run_) == 1 else torch.cat(run_, dim)
