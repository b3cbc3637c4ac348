"""Leaks (issue 7): 10,000 calls of each op (forward and backward, small sizes) leave the
process's resident memory where it was, within a noise bound of 10 MB.

Each call leaks at least one tensor or autograd node if anything leaks; 10,000 calls
of even a 100-byte leak would be 1 MB, a leak of one output (>= 1 KB here) 10 MB+.
RSS is read from /proc/self/statm after a warm-up (allocator caches, lazy init) and
``gc.collect()``.
"""

from __future__ import annotations

import gc
import os
import sys

import pytest
import torch

import nfold

CALLS = 10_000
WARMUP = 300
NOISE_BYTES = 10 * 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _inputs():
    g = torch.Generator().manual_seed(0)
    return {
        "x": torch.randn(2, 3, 6, 5, generator=g, requires_grad=True),
        "cols": torch.randn(2, 3 * 4, 20, generator=g, requires_grad=True),
        "w": torch.randn(4, 3, 2, 2, generator=g, requires_grad=True),
        "wt": torch.randn(3, 4, 2, 2, generator=g, requires_grad=True),
    }


OPS = {
    "unfold": lambda t: nfold.unfold(t["x"], 2, padding=1, padding_mode="reflect"),
    "fold": lambda t: nfold.fold(t["cols"], (6, 5), 2),
    "fold-mean": lambda t: nfold.fold(t["cols"], (6, 5), 2, reduction="mean"),
    "unfold_transpose": lambda t: nfold.unfold_transpose(t["x"], 2, stride=2),
    "sliding_window_view": lambda t: nfold.sliding_window_view(t["x"], 2) * 1.0,
    "conv": lambda t: nfold.conv(t["x"], t["w"], padding="same"),
    "conv_transpose": lambda t: nfold.conv_transpose(t["x"], t["wt"], stride=2),
}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/statm")
@pytest.mark.parametrize("op", list(OPS), ids=list(OPS))
def test_no_growth_over_10000_calls(op, one_thread):
    fn, t = OPS[op], _inputs()

    def call():
        out = fn(t)
        out.backward(torch.ones_like(out))

    for _ in range(WARMUP):
        call()
    gc.collect()
    before = _rss_bytes()
    for _ in range(CALLS):
        call()
    for v in t.values():
        v.grad = None
    gc.collect()
    growth = _rss_bytes() - before
    assert growth < NOISE_BYTES, f"{op}: RSS grew by {growth / 2**20:.1f} MB over {CALLS} calls"
