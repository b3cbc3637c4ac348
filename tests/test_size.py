"""Outputs with more than 2**31 elements: no 32-bit index arithmetic anywhere (issue 7).

One 1-byte tensor of ~2.2e9 elements (2.2 GB) is built once per session and shared by
the tests below; entries are checked against the index formula at sampled positions
(the corners, both sides of the 2**31 boundary, random ones), not all of them.
"""

from __future__ import annotations

import gc

import pytest
import torch

import nfold

K = 2**15  # kernel size
L = 2**16 + 2**11  # blocks: K * L = 2**31 + 2**26 > 2**31
S = L + K - 1  # input length (stride 1, no padding)
MOD = 251  # x[i] = i % 251, a prime, so neighbouring offsets give distinct values


def _available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return 2**40  # unknown: try


pytestmark = pytest.mark.skipif(
    _available_bytes() < 4 * 2**30, reason="needs ~2.5 GB free for a 2.2e9-element uint8 tensor"
)


@pytest.fixture(scope="module")
def big_unfold():
    x = (torch.arange(S, dtype=torch.int64) % MOD).to(torch.uint8).view(1, 1, S)
    cols = nfold.unfold(x, K)
    yield x, cols
    del cols
    gc.collect()


def _sample_positions(gen):
    """(kernel offset, block) pairs around every place a 32-bit index would break."""
    flat = [0, 1, K * L - 1, K * L - 2, 2**31 - 1, 2**31, 2**31 + 1, 2**32 % (K * L)]
    flat += torch.randint(0, K * L, (400,), generator=gen).tolist()
    flat += torch.randint(2**31, K * L, (200,), generator=gen).tolist()  # beyond int32
    return torch.tensor(flat) // L, torch.tensor(flat) % L


def test_unfold_output_beyond_int32(big_unfold):
    x, cols = big_unfold
    assert cols.shape == (1, K, L) and cols.numel() > 2**31
    gen = torch.Generator().manual_seed(0)
    offset, block = _sample_positions(gen)
    got = cols[0, offset, block].long()
    want = (offset + block) % MOD  # row = kernel offset, column = block: x[block + offset]
    assert torch.equal(got, want)
    # whole last row (all its flat indices are > 2**31) against the formula
    last = torch.arange(L)
    assert torch.equal(cols[0, K - 1].long(), (K - 1 + last) % MOD)


def test_fold_input_beyond_int32(big_unfold):
    """fold of the same 2.2e9-element tensor onto a short output inside heavy padding, so
    every kernel offset (rows up to flat index 2.2e9) is read but only about K * 1000 elements
    are added (a full fold would add 2.2e9 elements: minutes on 2 shared cores).

    Column b of row o lands on i = b + o - P, and holds (o + b) % MOD = (i + P) % MOD, so
    out[i] = coverage(i) * ((i + P) % MOD) mod 256 (uint8 sums wrap)."""
    _, cols = big_unfold
    size = 1001  # makes L + K - 1 - size even
    pad = (L - 1 + K - size) // 2  # L = size + 2 * pad - K + 1
    assert size + 2 * pad - K + 1 == L
    out = nfold.fold(cols, (size,), (K,), padding=(pad,))
    i = torch.arange(size)
    first = torch.clamp(i + pad - L + 1, min=0)  # kernel offsets o with 0 <= i + P - o < L
    last = torch.clamp(i + pad, max=K - 1)
    coverage = last - first + 1
    want = (coverage * ((i + pad) % MOD)) % 256
    assert out.shape == (1, 1, size) and out.dtype == torch.uint8
    assert torch.equal(out.view(-1).long(), want)


def test_sliding_window_view_beyond_int32(big_unfold):
    x, _ = big_unfold
    view = nfold.sliding_window_view(x, K)
    assert view.shape == (1, 1, L, K) and view.numel() > 2**31
    assert view[0, 0, L - 1, K - 1].item() == (L - 1 + K - 1) % MOD
    assert view.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()
