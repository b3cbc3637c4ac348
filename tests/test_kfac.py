"""patch_covariance and kfac_input_factors (KFAC input factors of conv layers).

Reference: the definition, written here on the nested-loop im2col of ``reference.py``
(independent of nfold's unfold): ``Σ_n Σ_l u uᴴ`` ("expand") or ``Σ_n ū ūᴴ`` of the
per-sample means ("reduce"), per channel group, with a constant-1 coordinate for the bias;
float64, to 1e-12 of the largest entry. Plus: chunking (tiny workspaces equal the
unchunked result; the chunk plan and the slabs actually unfolded stay under the
workspace), half-precision accumulation, no_grad / inference_mode, bad arguments, and the
model helper against per-layer definitions.
"""

from __future__ import annotations

import math
import runpy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

import nfold
from nfold import kfac
from reference import make_tensor, ref_unfold

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]


def _pairs(padding: object, kernel: tuple[int, ...], dilation: tuple[int, ...]) -> object:
    """Strings as per-side pairs for the reference ("same": extra element on the high side)."""
    if padding == "valid":
        return ((0, 0),) * len(kernel)
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(kernel, dilation, strict=True)]
        return tuple((t // 2, t - t // 2) for t in totals)
    return padding


def _tuple(value: int | tuple[int, ...], n: int) -> tuple[int, ...]:
    return (value,) * n if isinstance(value, int) else tuple(value)


def definition(
    x: torch.Tensor,
    kernel_size: int | tuple[int, ...],
    dilation: int | tuple[int, ...] = 1,
    padding: object = 0,
    stride: int | tuple[int, ...] = 1,
    padding_mode: str = "zeros",
    groups: int = 1,
    bias: bool = False,
    reduction: str = "expand",
) -> torch.Tensor:
    """The KFAC input factor from its definition: unfold, then sums of outer products."""
    n = x.dim() - 2
    kernel, dil = _tuple(kernel_size, n), _tuple(dilation, n)
    u = ref_unfold(x, kernel, dil, _pairs(padding, kernel, dil), stride, padding_mode)
    b, rows, positions = u.shape
    u = u.view(b, groups, rows // groups, positions)
    if bias:
        u = torch.cat([u, torch.ones((b, groups, 1, positions), dtype=u.dtype)], dim=2)
    if reduction == "expand":
        out = torch.einsum("bgil,bgjl->gij", u, u.conj())
    else:
        mean = u.mean(-1)
        out = torch.einsum("bgi,bgj->gij", mean, mean.conj())
    return out if groups > 1 else out[0]


def assert_exact(actual: torch.Tensor, expected: torch.Tensor, rel: float = 1e-12) -> None:
    """Equal to ``rel`` of the largest entry (float64 round-off)."""
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=0, atol=rel * max(scale, 1e-300))


@dataclass(frozen=True)
class Case:
    id: str
    shape: tuple[int, ...]  # (B, C, *S), or (C, *S) with tuple sizes
    kernel_size: int | tuple[int, ...]
    dilation: int | tuple[int, ...] = 1
    padding: object = 0
    stride: int | tuple[int, ...] = 1
    padding_mode: str = "zeros"
    groups: int = 1
    bias: bool = False

    def kwargs(self) -> dict[str, object]:
        return {
            "dilation": self.dilation,
            "padding": self.padding,
            "stride": self.stride,
            "padding_mode": self.padding_mode,
            "groups": self.groups,
            "bias": self.bias,
        }


CASES = [
    Case("1d-int-padding", (3, 4, 9), 3, padding=1),
    Case("1d-stride-dilation", (2, 2, 13), 3, dilation=2, padding=2, stride=2),
    Case("1d-reflect-bias", (2, 3, 8), 4, padding=3, padding_mode="reflect", bias=True),
    Case("2d-tuple-padding", (2, 4, 7, 6), (3, 2), padding=(1, 0)),
    Case("2d-per-side-pairs", (2, 2, 6, 7), 3, padding=((0, 2), (1, 0))),
    Case("2d-same-even-kernel", (2, 2, 6, 5), (4, 2), padding="same"),
    Case("2d-valid", (2, 3, 6, 6), 3, padding="valid"),
    Case("2d-reflect", (2, 2, 5, 6), 3, padding=2, padding_mode="reflect"),
    Case(
        "2d-replicate-pairs",
        (2, 2, 5, 4),
        (2, 3),
        padding=((2, 0), (1, 3)),
        padding_mode="replicate",
    ),  # fmt: skip
    Case("2d-circular-strided", (2, 2, 6, 7), 3, padding=(1, 2), stride=2, padding_mode="circular"),
    Case("2d-groups-bias", (2, 6, 5, 5), 3, padding=1, groups=3, bias=True),
    Case("2d-depthwise", (3, 4, 6, 5), 2, stride=(2, 1), groups=4),
    Case("2d-kernel-covers-input", (2, 2, 3, 4), (5, 6), padding=1),
    Case("2d-padding-only-windows", (2, 1, 2, 2), 2, padding=3),
    Case("2d-empty-dim-padded", (2, 2, 0, 3), (1, 2), padding=1, bias=True),
    Case("2d-empty-last-dim-padded", (2, 2, 3, 0), (2, 1), padding=(0, 1), bias=True),
    Case("3d-mixed", (2, 2, 5, 4, 6), (2, 3, 2), dilation=(2, 1, 1), padding=1, stride=(1, 2, 1)),
    Case(
        "3d-reflect-groups-bias",
        (2, 4, 4, 5, 3),
        2,
        padding=1,
        padding_mode="reflect",
        groups=2,
        bias=True,
    ),  # fmt: skip
    Case("4d-circular", (1, 2, 4, 5, 3, 4), 2, padding=1, padding_mode="circular"),
    Case(
        "4d-same-dilated", (2, 1, 4, 3, 5, 3), (2, 3, 2, 1), dilation=(1, 1, 2, 1), padding="same"
    ),  # fmt: skip
    Case(
        "5d-replicate-strided",
        (2, 1, 3, 4, 3, 3, 4),
        2,
        padding=(1, 0, 0, 1, 0),
        stride=(1, 2, 1, 1, 2),
        padding_mode="replicate",
    ),  # fmt: skip
    Case("5d-groups", (1, 4, 3, 3, 2, 3, 2), (2, 2, 1, 2, 1), groups=2, bias=True),
    Case("unbatched", (3, 6, 5), (3, 2), padding=(1, 1)),
]


def _input(shape: tuple[int, ...], dtype: torch.dtype = F64, seed: int = 0) -> torch.Tensor:
    return make_tensor(shape, dtype, seed)


def _batched(case: Case, x: torch.Tensor) -> torch.Tensor:
    n = len(case.kernel_size) if isinstance(case.kernel_size, tuple) else x.dim() - 2
    return x if x.dim() == n + 2 else x.unsqueeze(0)


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_definition(case: Case, reduction: str) -> None:
    x = _input(case.shape)
    out = nfold.patch_covariance(x, case.kernel_size, **case.kwargs(), reduction=reduction)
    expected = definition(_batched(case, x), case.kernel_size, **case.kwargs(), reduction=reduction)  # type: ignore[arg-type]
    assert out.dtype == F64
    assert_exact(out, expected)


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("case", CASES[::3], ids=lambda c: c.id)
def test_smallest_workspace_equals_unchunked(case: Case, reduction: str) -> None:
    """The smallest workspace the error message allows: many chunks, the same result."""
    x = _input(case.shape)
    whole = nfold.patch_covariance(x, case.kernel_size, **case.kwargs(), reduction=reduction)
    with pytest.raises(ValueError, match=r"max_workspace_bytes=1 is smaller than the \d+") as info:
        nfold.patch_covariance(
            x, case.kernel_size, **case.kwargs(), reduction=reduction, max_workspace_bytes=1
        )
    smallest = int(str(info.value).split("smaller than the ")[1].split()[0])
    tiny = nfold.patch_covariance(
        x, case.kernel_size, **case.kwargs(), reduction=reduction, max_workspace_bytes=smallest
    )
    assert_exact(tiny, whole)


def _geometry(case: Case, x: torch.Tensor) -> tuple[kfac._Geometry, torch.Tensor]:
    """The validated geometry patch_covariance builds (through its own helpers)."""
    x = _batched(case, x)
    n = x.dim() - 2
    kernel = _tuple(case.kernel_size, n)  # type: ignore[arg-type]
    dil = _tuple(case.dilation, n)  # type: ignore[arg-type]
    st = _tuple(case.stride, n)  # type: ignore[arg-type]
    from nfold import _args

    pads = _args.padding_pairs(case.padding, n, kernel, dil, st)
    outs = _args.output_size(tuple(x.shape[2:]), kernel, dil, pads, st)
    return kfac._Geometry(kernel, dil, pads, st, case.padding_mode, outs), x


@pytest.mark.parametrize("limit", [1500, 4000, 20000, 10**9])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_expand_plan_tiles_the_work_within_the_workspace(case: Case, limit: int) -> None:
    geom, x = _geometry(case, _input(case.shape))
    batch, channels = x.shape[:2]
    args = (channels, geom, 8, 8)
    if kfac.expand_chunk_bytes(1, (1,) * len(geom.kernel), *args) > limit:
        return  # rejected up front (test_bad_arguments)
    plan = kfac.expand_plan(batch, *args, limit)
    covered = torch.zeros((batch, *geom.outs), dtype=torch.int64)
    for chunk in plan:
        lengths = [hi - lo for lo, hi in chunk.outputs]
        b = chunk.batch[1] - chunk.batch[0]
        assert kfac.expand_chunk_bytes(b, lengths, *args) <= limit, chunk
        index = (slice(*chunk.batch), *(slice(lo, hi) for lo, hi in chunk.outputs))
        covered[index] += 1
    assert bool((covered == 1).all()), "every (sample, output position) exactly once"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("case", CASES[1::4], ids=lambda c: c.id)
def test_unfolded_slabs_stay_under_the_workspace(
    case: Case, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tensors "expand" actually allocates per slab (padded input slab, its cast, the
    unfolded matrix) add up to at most max_workspace_bytes."""
    x = _input(case.shape, dtype)
    seen: list[int] = []
    unfold_forward = kfac._unfold_forward

    def tracked(slab: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        cols = unfold_forward(slab, *args, **kwargs)  # type: ignore[arg-type]
        cast = slab.numel() * x.element_size() if slab.dtype != x.dtype else 0
        seen.append(cols.numel() * cols.element_size() + slab.numel() * slab.element_size() + cast)
        return cols

    monkeypatch.setattr(kfac, "_unfold_forward", tracked)
    geom, xb = _geometry(case, x)
    acc = 4 if dtype == torch.float16 else 8
    one = kfac.expand_chunk_bytes(1, (1,) * len(geom.kernel), xb.shape[1], geom, 8 // acc * 2, acc)
    limit = 3 * one
    nfold.patch_covariance(x, case.kernel_size, **case.kwargs(), max_workspace_bytes=limit)
    assert len(seen) > 1 and max(seen) <= limit, (len(seen), max(seen))


@pytest.mark.parametrize("limit", [3000, 6000, 100000])
def test_reduce_plan_within_the_workspace(limit: int, monkeypatch: pytest.MonkeyPatch) -> None:
    x = _input((7, 3, 6, 5))
    step, flush = kfac.reduce_plan(7, 3, (6, 5), (3, 2), 1, True, 8, limit)
    one = kfac.reduce_chunk_bytes(1, 3, (6, 5), (3, 2), 8)
    assert step * one + flush * (3 * 6 + 1) * 8 <= limit and flush % step == 0
    seen: list[int] = []
    window_means = kfac._window_means

    def tracked(part: torch.Tensor, *args: object) -> torch.Tensor:
        seen.append(part.shape[0])
        return window_means(part, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(kfac, "_window_means", tracked)
    out = nfold.patch_covariance(
        x, (3, 2), bias=True, reduction="reduce", max_workspace_bytes=limit
    )
    assert max(seen) <= step and sum(seen) == 7
    assert_exact(out, definition(x, (3, 2), bias=True, reduction="reduce"))


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("bias", [False, True])
def test_batch_zero_gives_zeros(reduction: str, bias: bool) -> None:
    x = torch.zeros(0, 4, 5, 5, dtype=F64)
    out = nfold.patch_covariance(x, 3, padding=1, groups=2, bias=bias, reduction=reduction)
    assert out.shape == (2, 18 + bias, 18 + bias)
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("bias", [False, True])
def test_zero_channels_leave_the_bias_coordinate(reduction: str, bias: bool) -> None:
    """0 input channels: D = 0, so the factor is empty, or only the bias coordinate's
    count (B * L for "expand", B for "reduce") per group."""
    x = torch.zeros(2, 0, 5, 5, dtype=F64)
    out = nfold.patch_covariance(x, 3, padding=1, groups=2, bias=bias, reduction=reduction)
    count = 2 * 25 if reduction == "expand" else 2
    assert torch.equal(out, torch.full((2, bias, bias), float(count), dtype=F64))


TRANSFORM_SETTINGS = [
    {"padding": 1, "bias": True},
    {"padding": ((1, 0), (2, 1)), "padding_mode": "reflect", "groups": 2, "bias": True},
    {"stride": 2, "dilation": (1, 2)},
]


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("kw", TRANSFORM_SETTINGS, ids=["bias", "reflect-groups", "strided"])
def test_vmap_gives_per_sample_factors(reduction: str, kw: dict[str, object]) -> None:
    """torch.func.vmap over samples (unbatched inputs) and over a leading dim of batches:
    the factor of each, as computed one at a time."""
    x = _input((3, 4, 6, 6))
    per_sample = torch.func.vmap(
        lambda xi: nfold.patch_covariance(xi, (3, 3), reduction=reduction, **kw)
    )(x)
    for i in range(3):
        assert_exact(per_sample[i], definition(x[i : i + 1], 3, reduction=reduction, **kw))
    stacked = torch.stack([x, x.flip(0)])
    per_batch = torch.func.vmap(
        lambda xb: nfold.patch_covariance(xb, 3, reduction=reduction, **kw)
    )(stacked)
    for i in range(2):
        assert_exact(per_batch[i], definition(stacked[i], 3, reduction=reduction, **kw))


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("kw", TRANSFORM_SETTINGS, ids=["bias", "reflect-groups", "strided"])
def test_compiles_fullgraph(reduction: str, kw: dict[str, object]) -> None:
    """torch.compile(fullgraph=True) traces the streamed path, small workspaces included."""
    x = _input((3, 4, 6, 6))
    for limit in (None, 4096):
        torch._dynamo.reset()  # one lambda code object, compiled per setting
        compiled = torch.compile(
            lambda x, limit=limit: nfold.patch_covariance(
                x, 3, reduction=reduction, max_workspace_bytes=limit, **kw
            ),
            fullgraph=True,
            backend="eager",
        )
        assert_exact(compiled(x), definition(x, 3, reduction=reduction, **kw))


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_accumulates_in_float32(dtype: torch.dtype, reduction: str) -> None:
    """Positive terms summed over 64 samples and all positions in many small chunks:
    accumulated chunk by chunk in the input dtype, the sums would be off by percents;
    accumulated in float32, only the final rounding to the input dtype remains."""
    x = (torch.rand(64, 2, 8, 8, generator=torch.Generator().manual_seed(0)) + 0.5).to(dtype)
    kwargs: dict[str, object] = {"padding": 1, "bias": True, "reduction": reduction}
    with pytest.raises(ValueError, match="smaller than the") as info:
        nfold.patch_covariance(x, 3, **kwargs, max_workspace_bytes=1)  # type: ignore[arg-type]
    smallest = int(str(info.value).split("smaller than the ")[1].split()[0])
    out = nfold.patch_covariance(x, 3, **kwargs, max_workspace_bytes=2 * smallest)  # type: ignore[arg-type]
    assert out.dtype == dtype
    expected = definition(x.double(), 3, **kwargs)  # type: ignore[arg-type]
    ulp = {torch.float16: 2**-10, torch.bfloat16: 2**-7}[dtype]
    torch.testing.assert_close(out.double(), expected, rtol=ulp, atol=0)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_complex32_accumulates_in_complex64() -> None:
    x = _input((4, 2, 8, 8), torch.complex64).to(torch.complex32)
    for reduction in ("expand", "reduce"):
        out = nfold.patch_covariance(x, 3, padding=1, bias=True, reduction=reduction)
        assert out.dtype == torch.complex32
        expected = definition(x.to(torch.complex128), 3, padding=1, bias=True, reduction=reduction)
        assert_exact(out.to(torch.complex128), expected, rel=2**-10)


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
def test_complex_is_hermitian_u_uH(reduction: str) -> None:
    """D = 40 * 4 + 1 = 161 ... and 361 rows: one and two row blocks."""
    for channels, kernel in ((4, 2), (40, 3)):
        x = _input((2, channels, 4, 4), torch.complex128)
        out = nfold.patch_covariance(x, kernel, padding=1, bias=True, reduction=reduction)
        assert_exact(out, definition(x, kernel, padding=1, bias=True, reduction=reduction))
        assert torch.equal(out, out.mH)


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
def test_exactly_symmetric(reduction: str) -> None:
    """D = 40 * 9 = 360 rows: two row blocks, the lower one mirrored from the upper; and a
    case where the GEMM alone (x(16, 3, 32, 32), D = 28) is not symmetric to the last bit."""
    x = _input((2, 40, 6, 6))
    out = nfold.patch_covariance(x, 3, padding=1, reduction=reduction)
    assert len(kfac._tri_blocks(360)) > 1
    assert torch.equal(out, out.mT)
    assert_exact(out, definition(x, 3, padding=1, reduction=reduction))
    out = nfold.patch_covariance(_input((16, 3, 32, 32)), 3, padding=1, bias=True)
    assert torch.equal(out, out.mT)


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_non_contiguous_input(layout: str) -> None:
    base = _input((2, 3, 6, 8))
    x = base.to(memory_format=torch.channels_last) if layout == "channels_last" else base[..., ::2]
    for reduction in ("expand", "reduce"):
        out = nfold.patch_covariance(x, 3, padding=1, reduction=reduction)
        assert_exact(out, definition(x.contiguous(), 3, padding=1, reduction=reduction))


@pytest.mark.parametrize("context", ["grad", "no_grad", "inference_mode"])
def test_no_grad_and_inference_mode(context: str) -> None:
    x = _input((2, 3, 5, 5)).requires_grad_(context == "grad")
    expected = definition(x.detach(), 3, padding=1, groups=3, bias=True)
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad,
           "inference_mode": torch.inference_mode}[context]  # fmt: skip
    with ctx():
        inp = x.clone() if context == "inference_mode" else x  # an inference tensor
        for reduction in ("expand", "reduce"):
            out = nfold.patch_covariance(inp, 3, padding=1, groups=3, bias=True,
                                         reduction=reduction)  # fmt: skip
            assert not out.requires_grad  # documented: not differentiable
            if reduction == "expand":
                assert_exact(out, expected)


BAD = [
    ({"input": [1.0]}, TypeError, "input must be a torch.Tensor"),
    ({"input": torch.ones(1, 2, 5, dtype=torch.int64)}, TypeError, "floating or complex.*int64"),
    ({"input": torch.ones(2, 5)}, ValueError, "input must have at least 3 dims"),
    ({"kernel_size": 0}, ValueError, "kernel_size must be >= 1"),
    ({"kernel_size": (3,) * 5}, ValueError, "input must have 7 dims"),
    ({"kernel_size": 7}, ValueError, "the input spatial size"),
    ({"kernel_size": (3, 3), "dilation": (1, 2, 1)}, ValueError, "disagree on the number"),
    ({"stride": 1.5}, TypeError, "stride must be an int"),
    ({"padding": "full"}, ValueError, "padding must be an int, a tuple"),
    ({"padding": "same", "stride": 2}, ValueError, 'padding="same" needs stride 1'),
    ({"padding": -1}, ValueError, "padding must be >= 0"),
    ({"padding_mode": "mirror"}, ValueError, "padding_mode must be one of"),
    ({"padding": 6, "padding_mode": "reflect"}, ValueError, "must be smaller than the input"),
    ({"groups": 0}, ValueError, "groups must be a positive int"),
    ({"groups": 3}, ValueError, r"input channels \(4\) must be divisible by groups \(3\)"),
    ({"groups": 2.0}, TypeError, "groups must be an int"),
    ({"bias": 1}, TypeError, "bias must be a bool"),
    ({"reduction": "mean"}, ValueError, "reduction must be one of 'expand', 'reduce'"),
    ({"max_workspace_bytes": 0}, ValueError, "max_workspace_bytes must be positive"),
    ({"max_workspace_bytes": "4MB"}, TypeError, "max_workspace_bytes must be an int or None"),
    ({"max_workspace_bytes": 100}, ValueError, "smaller than the .* one output position"),
    ({"max_workspace_bytes": 100, "reduction": "reduce"}, ValueError, "one sample needs"),
]


@pytest.mark.parametrize(("kwargs", "error", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_arguments(kwargs: dict[str, object], error: type, message: str) -> None:
    args: dict[str, object] = {"input": torch.ones(2, 4, 6, 6), "kernel_size": 3, **kwargs}
    with pytest.raises(error, match=message):
        nfold.patch_covariance(**args)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- model helper


def _layer_inputs(model: nn.Module, *inputs: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Every conv layer's inputs, recorded by the test's own hooks."""
    seen: dict[str, list[torch.Tensor]] = {}
    handles = [
        m.register_forward_hook(lambda m, a, o, name=name: seen.setdefault(name, []).append(a[0]))
        for name, m in model.named_modules()
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nfold.ConvNd))
    ]
    with torch.no_grad():
        model(*inputs)
    for h in handles:
        h.remove()
    return seen


def _layer_definition(layer: nn.Module, x: torch.Tensor, reduction: str) -> torch.Tensor:
    n = len(layer.kernel_size)
    padding = layer.padding
    if not isinstance(padding, str) and not isinstance(padding[0], tuple):
        padding = tuple(padding)
    return definition(
        x if x.dim() == n + 2 else x.unsqueeze(0),
        tuple(layer.kernel_size),
        tuple(layer.dilation),
        padding,
        tuple(layer.stride),
        layer.padding_mode,
        layer.groups,
        layer.bias is not None,
        reduction,
    )


def _check_model(model: nn.Module, x: torch.Tensor, reduction: str) -> dict[str, torch.Tensor]:
    factors = nfold.kfac_input_factors(model, x, reduction=reduction)
    inputs = _layer_inputs(model, x)
    layers = dict(model.named_modules())
    assert list(factors) == list(inputs)
    for name, xs in inputs.items():
        expected = sum(_layer_definition(layers[name], xi, reduction) for xi in xs)
        assert_exact(factors[name], expected)  # type: ignore[arg-type]
    return factors


@pytest.mark.parametrize("reduction", ["expand", "reduce"])
def test_model_helper_2d(reduction: str) -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"),
        nn.ReLU(),
        nn.Conv2d(6, 6, 3, stride=2, groups=3, bias=False),
        nn.Tanh(),
        nfold.Conv2d(6, 4, (2, 3), dilation=(1, 2), padding="same", padding_mode="circular"),
        nn.Linear(4, 3),  # not a conv: ignored
    ).double()
    factors = _check_model(model, _input((2, 3, 10, 10)), reduction)
    assert [tuple(a.shape) for a in factors.values()] == [(28, 28), (3, 18, 18), (37, 37)]


def test_model_helper_1d_3d_and_nd() -> None:
    conv1 = nn.Sequential(nn.Conv1d(2, 3, 3, padding="same", padding_mode="replicate"),
                          nfold.Conv1d(3, 2, 2, stride=2)).double()  # fmt: skip
    _check_model(conv1, _input((2, 2, 9)), "expand")
    conv3 = nn.Sequential(nn.Conv3d(2, 2, 2, padding=1, groups=2), nn.Conv3d(2, 1, 3)).double()
    _check_model(conv3, _input((1, 2, 4, 4, 3)), "reduce")
    conv4 = nfold.ConvNd(2, 3, 2, padding=((1, 0), (0, 1), (0, 0), (1, 1)), ndim=4, dtype=F64)
    factors = _check_model(conv4, _input((2, 2, 3, 3, 2, 3)), "expand")
    assert list(factors) == [""]  # the model itself is the layer


def test_model_helper_sums_a_layer_called_twice_and_unbatched_input() -> None:
    conv = nn.Conv2d(2, 2, 3, padding=1).double()
    model = nn.Sequential(conv, nn.ReLU(), conv)
    _check_model(model, _input((2, 5, 5)), "expand")  # unbatched (C, H, W)
    assert list(nfold.kfac_input_factors(model, _input((2, 5, 5)))) == ["0"]


def test_model_helper_input_passed_by_keyword() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv1d(2, 2, 3, bias=False).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(input=x)

    x = _input((2, 2, 6))
    assert_exact(nfold.kfac_input_factors(Net(), x)["conv"], definition(x, 3))


def test_model_helper_removes_its_hooks_also_on_error() -> None:
    model = nn.Sequential(nn.Conv2d(2, 2, 3), nn.Linear(5, 5))
    assert list(nfold.kfac_input_factors(model, torch.randn(1, 2, 7, 7))) == ["0"]
    with pytest.raises(RuntimeError):
        nfold.kfac_input_factors(model, torch.randn(1, 2, 9, 9))  # Linear(5) gets width 7
    assert not model[0]._forward_hooks
    with pytest.raises(ValueError, match="reduction must be one of"):
        nfold.kfac_input_factors(model, torch.randn(1, 2, 4, 4), reduction="mean")


def test_model_helper_skips_transposed_convs() -> None:
    model = nn.Sequential(nn.ConvTranspose2d(2, 2, 3), nfold.ConvTranspose2d(2, 2, 3))
    assert nfold.kfac_input_factors(model, torch.randn(1, 2, 4, 4)) == {}


def test_example_runs() -> None:
    runpy.run_path(str(ROOT / "examples" / "kfac_factors.py"), run_name="__main__")


def test_kfac_input_factors_under_inference_mode() -> None:
    model = nn.Conv2d(2, 3, 3).double()
    with torch.inference_mode():
        x = _input((2, 2, 5, 5))
        a = nfold.kfac_input_factors(model, x)[""]
    assert_exact(a, definition(x.clone(), 3, bias=True))
    assert math.isfinite(float(a.sum()))
