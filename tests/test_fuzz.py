"""Quick profile of the differential fuzzer (tests/fuzz.py) for CI: a few hundred seeded
cases, one test id per op so that a failure names the op; plus checks that the fuzzer
can fail (a planted off-by-one, a planted round-off-sized error and a planted in-place
write are each caught). The long profile (>= 10,000 cases) is run by hand:
``python tests/fuzz.py --cases 10000``.
"""

from __future__ import annotations

import pytest
import torch

import fuzz
import nfold

QUICK_CASES = 100  # per op: 6 ops -> 600 cases, a few seconds


@pytest.mark.parametrize("op", list(fuzz.OPS), ids=list(fuzz.OPS))
def test_quick_profile(op, one_thread):
    report = fuzz.fuzz(QUICK_CASES, seed=7, ops=[op])
    assert report.tried == QUICK_CASES
    assert report.ok, fuzz.format_report(report, 0.0, 7)


def _planted(monkeypatch, name, wrapper):
    target = fuzz if name.startswith("nf_") else nfold
    original = getattr(target, name)
    monkeypatch.setattr(target, name, wrapper(original))


def _off_by_one(original):
    def bad(*args, **kwargs):
        out = original(*args, **kwargs)
        if out.numel() > 1:
            out = out.clone()
            out.view(-1)[-1] = out.view(-1)[0]  # a plausible indexing slip
        return out

    return bad


@pytest.mark.parametrize("name", ["unfold", "fold", "unfold_transpose", "sliding_window_view"])
def test_fuzzer_catches_a_planted_indexing_bug(monkeypatch, name, one_thread):
    _planted(monkeypatch, name, _off_by_one)
    report = fuzz.fuzz(40, seed=1, ops=[name])
    assert len(report.mismatches) > 0


def test_fuzzer_catches_a_small_conv_error(monkeypatch, one_thread):
    """An error far above round-off but small in absolute terms (1e-6 on O(1) values)."""

    def wrapper(original):
        return lambda *a, **k: original(*a, **k) * (1 + 1e-6)

    _planted(monkeypatch, "nf_conv", wrapper)
    report = fuzz.fuzz(20, seed=1, ops=["conv"])
    assert len(report.mismatches) >= 15  # the float64 cases (80% of draws)


def test_fuzzer_catches_an_input_modified(monkeypatch, one_thread):
    def wrapper(original):
        def bad(input, *args, **kwargs):
            out = original(input, *args, **kwargs)
            if input.numel():
                input.view(-1)[0] = input.view(-1)[-1] + 1 if input.dtype != torch.bool else True
            return out

        return bad

    _planted(monkeypatch, "unfold", wrapper)
    report = fuzz.fuzz(30, seed=2, ops=["unfold"])
    assert any("modified" in m[3] for m in report.mismatches)


def test_cases_are_reproducible_one_by_one():
    """Case i of seed s is the same whether run in a batch or alone (--case i)."""
    ops = list(fuzz.OPS)
    in_batch = [fuzz.run_case(3, i, ops, fuzz.Report()) for i in range(6)]
    alone = fuzz.run_case(3, 5, ops, fuzz.Report())
    assert alone == in_batch[5]
    assert alone[2] is not None and len({str(c) for c in in_batch}) == 6


def test_reference_agrees_with_the_shared_reference():
    """The fuzzer's gather-based reference and tests/reference.py's nested loops are
    written independently; they must agree on a few settings, padding modes included."""
    import reference

    gen = torch.Generator().manual_seed(0)
    x = fuzz.small_ints(gen, (2, 2, 5, 4, 3), torch.int64)
    for kernel, dilation, pads, stride, mode in [
        ((2, 3, 1), (1, 1, 2), ((1, 0), (1, 2), (0, 2)), (2, 1, 1), "zeros"),
        ((3, 2, 2), (1, 2, 1), ((2, 2), (1, 1), (1, 0)), (1, 2, 3), "reflect"),
        ((2, 2, 2), (2, 1, 1), ((1, 1), (0, 3), (2, 1)), (1, 1, 2), "circular"),
        ((3, 1, 2), (1, 1, 1), ((3, 0), (0, 1), (1, 1)), (2, 1, 1), "replicate"),
    ]:
        mine = fuzz.ref_unfold(x, kernel, dilation, pads, stride, mode)
        theirs = reference.ref_unfold(
            x, kernel, dilation=dilation, padding=pads, stride=stride, padding_mode=mode
        )
        assert torch.equal(mine, theirs), (kernel, dilation, pads, stride, mode)
