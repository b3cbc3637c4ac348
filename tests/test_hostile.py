"""Hostile arguments (issue 7): every bad call raises ValueError/TypeError naming the
argument, before any work, and never crashes, hangs, allocates hugely or returns silently.

Each row of ``CASES`` is one bad call: ``(id, call, exception type, words the message
must contain)``. The table also runs once in a subprocess whose address space is capped
(``test_table_under_memory_cap``), so a row that tried to allocate its huge output
instead of rejecting it would fail there with a RuntimeError even on a large machine.
"""

# ruff: noqa: E501  (one bad call / one setting per line reads as a table)

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import nfold

X = torch.zeros(1, 2, 5, 5)  # (B, C, H, W)
X1 = torch.zeros(1, 1, 2, dtype=torch.uint8)  # a tiny 1-d uint8 input
Y = torch.zeros(1, 2 * 4, 16)  # fold input for output_size (5, 5), kernel 2
W = torch.zeros(6, 2, 3, 3)  # conv weight (C_out, C_in, kH, kW)
WT = torch.zeros(2, 3, 3, 3)  # conv_transpose weight (C_in, C_out, kH, kW)
HUGE = 10**10

CASES = [
    # ---- unfold: sizes
    ("unfold-kernel-0", lambda: nfold.unfold(X, 0), ValueError, ["kernel_size", "0"]),
    ("unfold-kernel-negative", lambda: nfold.unfold(X, -2), ValueError, ["kernel_size"]),
    ("unfold-kernel-float", lambda: nfold.unfold(X, 2.0), TypeError, ["kernel_size", "2.0"]),
    ("unfold-kernel-str", lambda: nfold.unfold(X, "3"), TypeError, ["kernel_size"]),
    ("unfold-kernel-None", lambda: nfold.unfold(X, None), TypeError, ["kernel_size"]),
    ("unfold-kernel-str-in-tuple", lambda: nfold.unfold(X, (2, "a")), TypeError, ["kernel_size"]),
    ("unfold-kernel-float-in-tuple", lambda: nfold.unfold(X, (2, 2.5)), TypeError, ["kernel_size"]),
    ("unfold-stride-bool", lambda: nfold.unfold(X, 2, stride=True), TypeError, ["stride", "True"]),
    (
        "unfold-dilation-bool-in-tuple",
        lambda: nfold.unfold(X, 2, dilation=(1, False)),
        TypeError,
        ["dilation"],
    ),  # fmt: skip
    ("unfold-stride-0", lambda: nfold.unfold(X, 2, stride=0), ValueError, ["stride"]),
    ("unfold-dilation-negative", lambda: nfold.unfold(X, 2, dilation=-1), ValueError, ["dilation"]),
    (
        "unfold-tuple-lengths-disagree",
        lambda: nfold.unfold(X, (2, 2), stride=(1, 1, 1)),
        ValueError,
        ["kernel_size", "stride"],
    ),  # fmt: skip
    ("unfold-stride-too-short", lambda: nfold.unfold(X, 2, stride=(1,)), ValueError, ["input"]),
    (
        "unfold-kernel-larger-than-input",
        lambda: nfold.unfold(X, 7),
        ValueError,
        ["kernel_size", "7"],
    ),
    (
        "unfold-dilated-kernel-larger-than-padded-input",
        lambda: nfold.unfold(X, 3, dilation=4, padding=1),
        ValueError,
        ["kernel_size", "dilation"],
    ),  # fmt: skip
    ("unfold-kernel-huge", lambda: nfold.unfold(X, 10**18), ValueError, ["kernel_size"]),
    # ---- unfold: padding
    ("unfold-padding-negative", lambda: nfold.unfold(X, 2, padding=-1), ValueError, ["padding"]),
    (
        "unfold-padding-unknown-str",
        lambda: nfold.unfold(X, 2, padding="full"),
        ValueError,
        ["padding", "full"],
    ),
    (
        "unfold-padding-same-strided",
        lambda: nfold.unfold(X, 3, padding="same", stride=2),
        ValueError,
        ["padding", "stride"],
    ),  # fmt: skip
    (
        "unfold-padding-bad-pairs",
        lambda: nfold.unfold(X, 2, padding=((1, 2), (3,))),
        ValueError,
        ["padding"],
    ),
    (
        "unfold-padding-negative-pair",
        lambda: nfold.unfold(X, 2, padding=((1, -2), (0, 0))),
        ValueError,
        ["padding"],
    ),  # fmt: skip
    (
        "unfold-padding-mode-unknown",
        lambda: nfold.unfold(X, 2, padding=1, padding_mode="mirror"),
        ValueError,
        ["padding_mode", "mirror"],
    ),  # fmt: skip
    (
        "unfold-reflect-padding-too-large",
        lambda: nfold.unfold(X, 2, padding=5, padding_mode="reflect"),
        ValueError,
        ["padding", "reflect"],
    ),  # fmt: skip
    (
        "unfold-circular-padding-too-large",
        lambda: nfold.unfold(X, 2, padding=6, padding_mode="circular"),
        ValueError,
        ["padding", "circular"],
    ),  # fmt: skip
    # ---- unfold: input
    ("unfold-input-not-tensor", lambda: nfold.unfold([[1.0]], 2), TypeError, ["input", "list"]),
    ("unfold-input-rank-1", lambda: nfold.unfold(torch.zeros(5), 2), ValueError, ["input", "dims"]),
    (
        "unfold-input-rank-0",
        lambda: nfold.unfold(torch.tensor(1.0), 2),
        ValueError,
        ["input", "dims"],
    ),
    (
        "unfold-input-wrong-rank-for-tuple",
        lambda: nfold.unfold(X, (2, 2, 2, 2)),
        ValueError,
        ["input", "dims"],
    ),
    # ---- sizes beyond int64 / memory: rejected up front, stating the size requested
    (
        "unfold-output-exceeds-memory",
        lambda: nfold.unfold(X1, 10**6, padding=10**6),
        ValueError,
        ["kernel_size", "padding", "1000003000000 elements"],
    ),  # fmt: skip
    (
        "unfold-output-exceeds-int64",
        lambda: nfold.unfold(X1, 4 * 10**9, padding=(4 * 10**9,)),
        ValueError,
        ["kernel_size", "int64"],
    ),  # fmt: skip
    (
        "unfold-padded-input-exceeds-memory",
        lambda: nfold.unfold(X1, 1, padding=HUGE**2, stride=HUGE**2),
        ValueError,
        ["padding", "padded_input"],
    ),  # fmt: skip
    (
        "fold-output-size-exceeds-int64",
        lambda: nfold.fold(torch.zeros(1, 1, 1), (HUGE, HUGE), 1, stride=HUGE),
        ValueError,
        ["output_size", "100000000000000000000 elements"],
    ),  # fmt: skip
    (
        "fold-output-size-exceeds-memory",
        lambda: nfold.fold(torch.zeros(1, 1, 1), (HUGE, 10), 1, stride=HUGE),
        ValueError,
        ["output_size", "100000000000 elements"],
    ),  # fmt: skip
    (
        "unfold_transpose-stride-exceeds-memory",
        lambda: nfold.unfold_transpose(X, 3, stride=10**12),
        ValueError,
        ["stride", "elements"],
    ),  # fmt: skip
    # ---- fold
    ("fold-output-size-0", lambda: nfold.fold(Y, (0, 5), 2), ValueError, ["output_size", ">= 1"]),
    ("fold-output-size-negative", lambda: nfold.fold(Y, -3, 2), ValueError, ["output_size"]),
    ("fold-output-size-str", lambda: nfold.fold(Y, "5", 2), TypeError, ["output_size"]),
    (
        "fold-output-size-wrong-length",
        lambda: nfold.fold(Y, (5, 5, 5), (2, 2)),
        ValueError,
        ["output_size", "kernel_size"],
    ),  # fmt: skip
    ("fold-blocks-mismatch", lambda: nfold.fold(Y, (6, 6), 2), ValueError, ["input", "blocks"]),
    (
        "fold-channels-not-divisible",
        lambda: nfold.fold(torch.zeros(1, 7, 16), (5, 5), 2),
        ValueError,
        ["prod(kernel_size)"],
    ),  # fmt: skip
    (
        "fold-input-rank-4",
        lambda: nfold.fold(torch.zeros(1, 8, 4, 4), (5, 5), 2),
        ValueError,
        ["input"],
    ),
    (
        "fold-reduction-unknown",
        lambda: nfold.fold(Y, (5, 5), 2, reduction="max"),
        ValueError,
        ["reduction"],
    ),
    (
        "fold-mean-of-integers",
        lambda: nfold.fold(Y.long(), (5, 5), 2, reduction="mean"),
        TypeError,
        ["reduction", "int64"],
    ),  # fmt: skip
    (
        "fold-mean-of-bool",
        lambda: nfold.fold(Y.bool(), (5, 5), 2, reduction="mean"),
        TypeError,
        ["reduction", "bool"],
    ),  # fmt: skip
    (
        "fold-kernel-larger-than-output",
        lambda: nfold.fold(Y, (5, 5), 6),
        ValueError,
        ["kernel_size"],
    ),
    # ---- unfold_transpose / sliding_window_view
    (
        "unfold_transpose-output-padding-too-large",
        lambda: nfold.unfold_transpose(X, 3, stride=2, output_padding=2),
        ValueError,
        ["output_padding"],
    ),  # fmt: skip
    (
        "unfold_transpose-padding-negative",
        lambda: nfold.unfold_transpose(X, 3, padding=-1),
        ValueError,
        ["padding"],
    ),
    (
        "unfold_transpose-output-not-positive",
        lambda: nfold.unfold_transpose(X, 1, padding=3),
        ValueError,
        ["padding=(3, 3)", "negative"],
    ),  # fmt: skip
    (
        "unfold_transpose-padding-str",
        lambda: nfold.unfold_transpose(X, 3, padding="same"),
        TypeError,
        ["padding"],
    ),
    (
        "sliding_window_view-kernel-too-large",
        lambda: nfold.sliding_window_view(X, 6),
        ValueError,
        ["kernel_size"],
    ),
    (
        "sliding_window_view-stride-0",
        lambda: nfold.sliding_window_view(X, 2, stride=0),
        ValueError,
        ["stride"],
    ),
    # ---- conv / conv_transpose
    (
        "conv-channels-mismatch",
        lambda: nfold.conv(X, torch.zeros(6, 3, 3, 3)),
        ValueError,
        ["weight", "channels"],
    ),
    ("conv-groups-0", lambda: nfold.conv(X, W, groups=0), ValueError, ["groups"]),
    (
        "conv-groups-not-dividing",
        lambda: nfold.conv(torch.zeros(1, 3, 5, 5), torch.zeros(6, 1, 3, 3), groups=2),
        ValueError,
        ["groups"],
    ),  # fmt: skip
    ("conv-groups-bool", lambda: nfold.conv(X, W, groups=True), TypeError, ["groups"]),
    ("conv-groups-float", lambda: nfold.conv(X, W, groups=1.0), TypeError, ["groups"]),
    ("conv-integer-input", lambda: nfold.conv(X.long(), W.long()), TypeError, ["input", "int64"]),
    (
        "conv-weight-dtype-mismatch",
        lambda: nfold.conv(X, W.double()),
        TypeError,
        ["weight", "dtype"],
    ),
    ("conv-bias-wrong-shape", lambda: nfold.conv(X, W, torch.zeros(5)), ValueError, ["bias"]),
    ("conv-weight-not-tensor", lambda: nfold.conv(X, 3), TypeError, ["weight"]),
    ("conv-weight-rank-2", lambda: nfold.conv(X, torch.zeros(6, 2)), ValueError, ["weight"]),
    (
        "conv-kernel-larger-than-input",
        lambda: nfold.conv(X, torch.zeros(6, 2, 7, 7)),
        ValueError,
        ["kernel_size"],
    ),
    (
        "conv-padding-mode-unknown",
        lambda: nfold.conv(X, W, padding=1, padding_mode="mirror"),
        ValueError,
        ["padding_mode"],
    ),  # fmt: skip
    (
        "conv-workspace-negative",
        lambda: nfold.conv(X, W, max_workspace_bytes=-1),
        ValueError,
        ["max_workspace_bytes"],
    ),  # fmt: skip
    (
        "conv-workspace-bool",
        lambda: nfold.conv(X, W, max_workspace_bytes=True),
        TypeError,
        ["max_workspace_bytes"],
    ),  # fmt: skip
    (
        "conv_transpose-output-size-unreachable",
        lambda: nfold.conv_transpose(X, WT, output_size=(100, 100)),
        ValueError,
        ["output_size"],
    ),  # fmt: skip
    (
        "conv_transpose-output-size-wrong-length",
        lambda: nfold.conv_transpose(X, WT, output_size=(7,)),
        ValueError,
        ["output_size"],
    ),  # fmt: skip
    (
        "conv_transpose-output-padding-too-large",
        lambda: nfold.conv_transpose(X, WT, output_padding=1),
        ValueError,
        ["output_padding"],
    ),  # fmt: skip
    (
        "conv_transpose-channels-mismatch",
        lambda: nfold.conv_transpose(X, torch.zeros(3, 3, 3, 3)),
        ValueError,
        ["weight", "channels"],
    ),  # fmt: skip
    # ---- modules validate in __init__
    ("Unfold-kernel-0", lambda: nfold.Unfold(0), ValueError, ["kernel_size"]),
    ("Fold-stride-bool", lambda: nfold.Fold((5, 5), 2, stride=False), TypeError, ["stride"]),
    (
        "ConvNd-tuple-lengths-disagree",
        lambda: nfold.ConvNd(2, 6, (3, 3), stride=(1, 1, 1)),
        ValueError,
        ["kernel_size", "stride"],
    ),  # fmt: skip
]

# conv on inputs whose padded input or output exceeds memory: conv.py must check before
# allocating (see the report); kept separate so the gap is visible as its own ids.
ALLOC_CONV_CASES = [
    (
        "conv-padded-input-exceeds-int64",
        lambda: nfold.conv(X, W, padding=10**9, stride=10**9),
        ValueError,
        ["padding"],
    ),  # fmt: skip
    (
        "conv-padded-input-exceeds-memory",
        lambda: nfold.conv(X, W, padding=10**6, stride=10**6),
        ValueError,
        ["padding"],
    ),  # fmt: skip
    (
        "conv_transpose-output-exceeds-int64",
        lambda: nfold.conv_transpose(X, WT, stride=10**9),
        ValueError,
        ["stride"],
    ),  # fmt: skip
]

ALL = CASES + ALLOC_CONV_CASES


@pytest.mark.parametrize(("call", "exc", "words"), [c[1:] for c in ALL], ids=[c[0] for c in ALL])
def test_hostile_call_raises_naming_the_argument(call, exc, words):
    start = time.perf_counter()
    with pytest.raises(exc) as info:
        call()
    assert time.perf_counter() - start < 2.0, "a rejected call must fail fast (no work first)"
    message = str(info.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"message {message!r} lacks {missing}"


def test_table_has_at_least_30_rows():
    assert len(ALL) >= 30


def test_meta_tensors_are_supported():
    """Meta tensors propagate shapes (torch's own F.unfold does); no data is touched."""
    x = torch.empty(2, 3, 6, 7, 8, device="meta")
    assert nfold.unfold(x, 3, padding=1).shape == (2, 81, 336)
    assert nfold.unfold(x, 3, padding=1, padding_mode="reflect").device.type == "meta"
    y = torch.empty(2, 81, 336, device="meta")
    assert nfold.fold(y, (6, 7, 8), 3, padding=1).shape == (2, 3, 6, 7, 8)
    assert nfold.fold(y, (6, 7, 8), 3, padding=1, reduction="mean").shape == (2, 3, 6, 7, 8)
    assert nfold.unfold_transpose(x, 2, stride=2).shape == (2, 24, 12 * 14 * 16)
    assert nfold.sliding_window_view(x, 2).shape == (2, 3, 5, 6, 7, 2, 2, 2)
    w = torch.empty(4, 3, 3, 3, 3, device="meta")
    assert nfold.conv(x, w, padding="same").shape == (2, 4, 6, 7, 8)
    assert nfold.conv_transpose(x, w.transpose(0, 1), stride=2).shape == (2, 4, 13, 15, 17)


def test_meta_tensors_still_get_the_int64_check():
    x = torch.empty(1, 1, 2, device="meta", dtype=torch.uint8)
    with pytest.raises(ValueError, match="int64"):
        nfold.unfold(x, 4 * 10**9, padding=4 * 10**9)


@pytest.mark.parametrize(
    "dtype", [torch.int64, torch.int32, torch.uint8, torch.bool], ids=lambda d: str(d)[6:]
)
def test_integer_outputs_never_require_grad(dtype):
    """torch forbids requires_grad on integer tensors; no op can produce one, and the
    differentiable ops refuse integer operands instead of casting them silently."""
    x = torch.ones(1, 2, 4, 4, dtype=dtype)
    outs = [
        nfold.unfold(x, 2),
        nfold.fold(nfold.unfold(x, 2), (4, 4), 2),
        nfold.unfold_transpose(x, 2, stride=2),
        nfold.sliding_window_view(x, 2),
    ]
    assert all(o.dtype == dtype and not o.requires_grad for o in outs)
    w = torch.ones(3, 2, 2, 2, requires_grad=True)
    with pytest.raises(TypeError, match="input"):
        nfold.conv(x, w)
    with pytest.raises(TypeError, match="input"):
        nfold.conv_transpose(x, w.transpose(0, 1))


def test_table_under_memory_cap():
    """Run every row in a subprocess capped at 6 GB of address space: a row that
    allocated instead of rejecting would surface as a RuntimeError/MemoryError."""
    if not sys.platform.startswith("linux"):
        pytest.skip("RLIMIT_AS is Linux-specific here")
    script = textwrap.dedent(
        """
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
        sys.path.insert(0, sys.argv[1])
        import test_hostile as t
        bad = []
        for name, call, exc, words in t.ALL:
            try:
                call()
                bad.append(f"{name}: no error")
            except exc:
                pass
            except BaseException as e:
                bad.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
        print("\\n".join(bad))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    here = os.path.dirname(os.path.abspath(__file__))
    res = subprocess.run(
        [sys.executable, "-c", script, here], capture_output=True, text=True, timeout=120, env=env
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "", res.stdout


def test_errors_are_also_the_runtime_errors_torch_raises():
    """Code written against torch catches RuntimeError for such input; nfold's ValueError /
    TypeError are that too, for the drop-in layers as for the functional ops."""
    x = torch.randn(1, 3, 5, 5)
    layer = nfold.Conv2d(4, 2, 3)
    for ours, theirs in ((layer, torch.nn.Conv2d(4, 2, 3)),):
        x4 = torch.randn(1, 4, 5, 5)
        for bad in (x, x4.double(), x4.long()):  # wrong channels, wrong dtype, integer input
            with pytest.raises(RuntimeError):
                theirs(bad)
            with pytest.raises(RuntimeError) as info:
                ours(bad)
            assert isinstance(info.value, (ValueError, TypeError))
    calls = (
        lambda: nfold.conv(x, torch.randn(2, 4, 3, 3)),
        lambda: nfold.unfold(x, 7),
        lambda: nfold.fold(torch.randn(1, 5, 4), (3, 3), 2),
        lambda: nfold.conv_transpose(x, torch.randn(4, 2, 3, 3)),
        lambda: nfold.ConvNd(3, 2, 3, ndim=2, groups=2),
    )
    for call in calls:
        with pytest.raises(RuntimeError) as info:
            call()
        assert isinstance(info.value, ValueError)
