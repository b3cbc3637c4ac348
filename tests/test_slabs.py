"""The slab plan of conv / conv_transpose is data: a list of slabs that tile the output
exactly once, each within the budget, each reading exactly the input rows its outputs
need. (That running the plan equals the unchunked op is pinned in test_conv.py.)"""

from __future__ import annotations

import itertools
import math

import pytest

from nfold import _slabs
from nfold._layouts import ConvSlabs, ConvTransposeSlabs

# (layout, batch, input spatial, params, output spatial)
CONV = ConvSlabs((3, 2), (1, 2), (2, 1), c_in=4, c_out=6, groups=2, item=8, weight_numel=48)
CONV_T = ConvTransposeSlabs((3, 2), (2, 1), (2, 3), c_in=4, c_out=6, groups=2, item=8,
                             weight_numel=48)  # fmt: skip
CASES = {
    "conv": (CONV, 3, (9, 7), ((1, 2), (0, 1)), (5, 6)),
    "conv_transpose": (CONV_T, 3, (5, 4), (1, 0), (12, 11)),
}


def _covered(layout, spatial, params, outs, slab):
    """The output positions of ``slab`` per dim, checking its input rows on the way."""
    ranges = []
    for i in range(len(outs)):
        if i < len(slab.spans):
            s = slab.spans[i]
            assert s.start >= 0 and s.start + s.length <= spatial[i]
            ranges.append(range(s.first, s.stop))
        else:
            ranges.append(range(outs[i]))
    return ranges


@pytest.mark.parametrize("budget", [1, 600, 3000, 20000, 10**9])
@pytest.mark.parametrize("name", CASES)
def test_slabs_tile_the_output_once_within_budget(name, budget):
    layout, batch, spatial, params, outs = CASES[name]
    slabs = _slabs.plan(batch, spatial, params, outs, budget, layout)
    seen: dict[tuple[int, ...], int] = {}
    for slab in slabs:
        b0, nb = slab.batch
        ranges = _covered(layout, spatial, params, outs, slab)
        for point in itertools.product(range(b0, b0 + nb), *ranges):
            seen[point] = seen.get(point, 0) + 1
        sub_sp = [s.length for s in slab.spans] + list(spatial[len(slab.spans) :])
        sub_ps = [s.param for s in slab.spans] + list(params[len(slab.spans) :])
        sub_os = [len(r) for r in ranges]
        single = nb == 1 and math.prod(sub_os) == 1
        assert single or layout.cost(nb, sub_sp, sub_ps, sub_os) <= budget, slab
    assert len(seen) == batch * math.prod(outs) and set(seen.values()) == {1}
    if budget == 10**9:
        assert slabs == [_slabs.Slab((0, batch), ())]


def test_conv_slab_reads_the_rows_its_outputs_need():
    """Output rows [first, stop) of dim 0 read input rows first*s - lo ...
    (stop-1)*s + d(k-1) - lo, clipped to the input, with the clipped part as padding."""
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 2, 4)
    assert (start, length, lo, hi) == (3, 5, 0, 0)  # rows 3..7 for outputs 2, 3
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 0, 1)
    assert (start, length, lo, hi) == (0, 2, 1, 0)  # output 0 starts in the padding
    start, length, (lo, hi) = CONV.rows(0, 9, (1, 2), 4, 5)
    assert (start, length, lo, hi) == (7, 2, 0, 1)  # output 4 ends in the padding
