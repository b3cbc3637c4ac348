"""``method="auto"`` and ``method="gemm"`` of conv / conv_transpose against each other and
against torch (N <= 3) or the nested-loop reference ``nfold._reference`` (N = 4, 5),
forward and every gradient in float64; the auto engine's two leading-dim strategies
(offsets merged into channels, one conv per offset summed) forced in turn; its
``max_workspace_bytes`` slabs; its fallback to "gemm"; autograd, torch.func and compile
through it; the ``method`` argument of the functions, modules and ``convert``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfold
from nfold import _native, _plan, _reference, conv, conv_transpose

F64 = torch.float64
REL = 1e-12

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 4), 4: (5, 4, 5, 4), 5: (4, 5, 3, 4, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (3, 2, 2), 4: (3, 2, 2, 2), 5: (2, 3, 2, 1, 2)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def assert_rel(a: torch.Tensor, b: torch.Tensor, rel: float = REL) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype, (a.shape, b.shape, a.dtype, b.dtype)
    err = rel_err(a, b)
    assert err <= rel, f"max relative error {err:.3g} > {rel:.3g}"


def pairs(n: int) -> tuple[tuple[int, int], ...]:
    return tuple((i % 2, 1 + (i + 1) % 2) for i in range(n))


# --------------------------------------------------------------------------- settings

# c_in, c_out, spatial, kernel default per N; "kernel" as an int means that size per dim
CONV_SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "no_bias": {"bias": False},
    "stride2": {"stride": 2},
    "stride_tuple": {"stride": lambda n: tuple(1 + i % 2 for i in range(n))},
    "dilation2": {"dilation": 2, "kernel": 2},
    "groups2": {"groups": 2},
    "depthwise": {"groups": 4, "c_out": 8},
    "pad_int": {"padding": 1},
    "pad_tuple": {"padding": lambda n: tuple(i % 2 for i in range(n))},
    "pad_pairs": {"padding": pairs},
    "same_even_kernel": {"padding": "same", "kernel": 2},
    "valid": {"padding": "valid"},
    "reflect": {"padding": 1, "padding_mode": "reflect"},
    "replicate": {"padding": pairs, "padding_mode": "replicate"},
    "circular": {"padding": 1, "padding_mode": "circular"},
    "combo": {"stride": 2, "dilation": 2, "kernel": 2, "groups": 2, "padding": pairs},
    "batch0": {"batch": 0},
    "unbatched": {"batch": None},
}

TRANSPOSE_SETTINGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "no_bias": {"bias": False},
    "stride2": {"stride": 2},
    "stride2_output_padding1": {"stride": 2, "output_padding": 1},
    # output_padding >= stride is allowed when dilation > stride
    "dilation3_output_padding2": {"stride": 2, "dilation": 3, "output_padding": 2},
    "padding": {"padding": 1},
    "padding_past_output_padding": {"stride": 3, "padding": 1, "output_padding": 2},
    "groups2": {"groups": 2},
    "depthwise": {"groups": 4, "c_out": 4},
    "output_size": {"stride": 2, "output_size": 1},  # 1: one more than the smallest size
    "batch0": {"batch": 0},
    "unbatched": {"batch": None},
}

# auto-merge / auto-sum force the leading-dim strategy (they differ only for N > 3)
METHODS = ("auto", "auto-merge", "auto-sum", "auto-limit", "gemm")


def value(v: Any, n: int) -> Any:
    return v(n) if callable(v) else v


def operands(
    n: int, setting: dict[str, Any], transposed: bool, dtype: torch.dtype = F64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, dict[str, Any]]:
    gen = torch.Generator().manual_seed(n)
    kw = {k: value(v, n) for k, v in setting.items()}
    c_in, c_out = kw.pop("c_in", 4), kw.pop("c_out", 6 if not transposed else 4)
    k = kw.pop("kernel", None)
    kernel = KERNEL[n] if k is None else (k,) * n
    batch = kw.pop("batch", 2)
    bias = kw.pop("bias", True)
    g = kw.get("groups", 1)
    spatial = SPATIAL[n]
    shape = (c_in, *spatial) if batch is None else (batch, c_in, *spatial)
    x = torch.randn(shape, generator=gen, dtype=dtype)
    w_shape = (c_in, c_out // g, *kernel) if transposed else (c_out, c_in // g, *kernel)
    w = torch.randn(w_shape, generator=gen, dtype=dtype)
    b = torch.randn(c_out, generator=gen, dtype=dtype) if bias else None
    return x, w, b, kw


def reference(transposed: bool, n: int) -> Callable[..., torch.Tensor]:
    """torch's own op for N <= 3 (zero-padded per-side / mode padding applied first, as
    torch's modules do), the nested-loop reference for N = 4, 5."""
    if n > 3:
        return _reference.conv_transpose if transposed else _reference.conv
    if transposed:
        return {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[n]
    native = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[n]

    def torch_conv(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
        k, d = tuple(w.shape[2:]), (dilation,) * n if isinstance(dilation, int) else dilation
        if not isinstance(padding, str) or padding_mode != "zeros":
            x = _reference.pad(x, _reference.pairs(padding, k, d), padding_mode)
            padding = 0
        return native(x, w, b, stride, padding, dilation, groups)

    return torch_conv


def run(
    method: str,
    transposed: bool,
    x: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor | None,
    kw: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> torch.Tensor:
    kw = dict(kw)
    if method == "auto-merge":
        monkeypatch.setattr(_native, "_sum_offsets", lambda *a: False)
    if method == "auto-sum":
        monkeypatch.setattr(_native, "_sum_offsets", lambda *a: True)
    if method == "auto-limit":
        kw["max_workspace_bytes"] = small_limit(transposed, x, w, kw)
    fn = conv_transpose if transposed else conv
    out = fn(x, w, b, method=method.split("-")[0], **kw)
    monkeypatch.undo()
    return out


def small_limit(transposed: bool, x: torch.Tensor, w: torch.Tensor, kw: dict[str, Any]) -> int:
    """A limit that cuts the case into several slabs but fits one output position."""
    n = w.dim() - 2
    kernel, item = tuple(w.shape[2:]), x.element_size()
    stride = kw.get("stride", 1)
    stride = (stride,) * n if isinstance(stride, int) else stride
    dilation = kw.get("dilation", 1)
    spans = [
        (dilation if isinstance(dilation, int) else dilation[i]) * (k - 1) + 1
        for i, k in enumerate(kernel)
    ]
    c_in = x.shape[-n - 1]
    if transposed:
        c_out = w.shape[1] * kw.get("groups", 1)
        rows = _prod(
            min(sz, -(-sp // st)) for sz, sp, st in zip(x.shape[-n:], spans, stride, strict=False)
        )
        one = item * max(c_out * _prod(kernel) * rows, c_in * rows, c_out)
    else:
        one = item * max(c_in * _prod(kernel), c_in * _prod(spans), w.shape[0])
    return max(one, item * x.numel() // 4)


def outputs_and_grads(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None
) -> list[torch.Tensor]:
    leaves = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*leaves) if b is not None else fn(*leaves, None)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    return [out, *torch.autograd.grad(out, leaves, g)]


def check_all(transposed: bool, n: int, setting: dict[str, Any], monkeypatch) -> None:
    x, w, b, kw = operands(n, setting, transposed)
    if transposed and "output_size" in kw:  # one more than the smallest size, per dim
        smallest = [
            (s - 1) * kw.get("stride", 1) + (k - 1) + 1
            for s, k in zip(x.shape[-n:], w.shape[2:], strict=False)
        ]
        kw["output_size"] = tuple(v + kw["output_size"] for v in smallest)
    ref_kw = dict(kw)
    if transposed and "output_size" in ref_kw and n > 3:
        pass  # _reference.conv_transpose takes output_size too
    ref_fn = reference(transposed, n)
    if transposed and n <= 3 and "output_size" in ref_kw:
        size = ref_kw.pop("output_size")
        stride = ref_kw.get("stride", 1)
        ref_kw["output_padding"] = tuple(
            o - ((s - 1) * stride + k)
            for o, s, k in zip(size, x.shape[-n:], w.shape[2:], strict=False)
        )
    expected = outputs_and_grads(lambda *t: ref_fn(*t, **ref_kw), x, w, b)
    results = {
        m: outputs_and_grads(lambda *t, m=m: run(m, transposed, *t, kw, monkeypatch), x, w, b)
        for m in METHODS
    }
    names = ["output", "grad input", "grad weight", "grad bias"]
    for m, got in results.items():
        assert got[0].is_contiguous(), m  # an ordinary output, as torch's
        for name, a, e in zip(names[: len(got)], got, expected, strict=True):
            try:
                assert_rel(a, e)
            except AssertionError as err:
                raise AssertionError(f"{m} {name} vs reference: {err}") from None
    for a, e in zip(results["auto"], results["gemm"], strict=True):
        assert_rel(a, e)


# N = 5 (slow references) on the settings where a second leading dim matters
FIVE_D = {"plain", "combo", "depthwise", "dilation3_output_padding2", "output_size"}


def cases(settings: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    return [(s, n) for s in settings for n in (1, 2, 3, 4, 5) if n < 5 or s in FIVE_D]


@pytest.mark.parametrize(
    ("setting", "n"), cases(CONV_SETTINGS), ids=lambda v: str(v) if isinstance(v, str) else f"N{v}"
)
def test_conv_methods_agree(setting: str, n: int, monkeypatch) -> None:
    check_all(False, n, CONV_SETTINGS[setting], monkeypatch)


@pytest.mark.parametrize(
    ("setting", "n"),
    cases(TRANSPOSE_SETTINGS),
    ids=lambda v: str(v) if isinstance(v, str) else f"N{v}",
)
def test_conv_transpose_methods_agree(setting: str, n: int, monkeypatch) -> None:
    check_all(True, n, TRANSPOSE_SETTINGS[setting], monkeypatch)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("strategy", [False, True], ids=["merge", "sum"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_gradcheck_gradgradcheck_4d_auto(transposed: bool, strategy: bool, monkeypatch) -> None:
    monkeypatch.setattr(_native, "_sum_offsets", lambda *a: strategy)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 2, 3, 2, 2, 3, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(2, 1, 2, 2, 1, 2, generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(2, generator=gen, dtype=F64, requires_grad=True)
    if transposed:
        kw = {
            "stride": (2, 1, 1, 2),
            "padding": (1, 0, 0, 1),
            "output_padding": (1, 0, 0, 1),
            "groups": 2,
        }

        def fn(x, w, b):
            return conv_transpose(x, w, b, method="auto", **kw)
    else:
        kw = {"stride": (2, 1, 1, 1), "padding": ((1, 0), (0, 1), (1, 1), (0, 0)), "groups": 2}

        def fn(x, w, b):
            return conv(x, w, b, method="auto", **kw)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def _case4d(grad: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 4, 5, 4, generator=gen, dtype=F64, requires_grad=grad)
    w = torch.randn(6, 2, 3, 2, 3, 2, generator=gen, dtype=F64, requires_grad=grad)
    b = torch.randn(6, generator=gen, dtype=F64, requires_grad=grad)
    return x, w, b


KW4 = {"padding": 1, "groups": 2, "stride": (2, 1, 1, 1)}


def test_jvp_4d_auto() -> None:
    x, w, b = _case4d()
    gen = torch.Generator().manual_seed(4)
    tx, tw = (
        torch.randn(x.shape, generator=gen, dtype=F64),
        torch.randn(w.shape, generator=gen, dtype=F64),
    )

    def fn(x, w):
        return conv(x, w, b, method="auto", **KW4)

    out, tangent = torch.func.jvp(fn, (x, w), (tx, tw))
    assert_rel(out, fn(x, w))
    # bilinear: d conv = conv(tx, w) + conv(x, tw) (bias is constant)
    expected = conv(tx, w, None, method="gemm", **KW4) + conv(x, tw, None, method="gemm", **KW4)
    assert_rel(tangent, expected)


def test_vmap_4d_auto() -> None:
    x, w, b = _case4d()
    got = torch.func.vmap(lambda xi: conv(xi, w, b, method="auto", **KW4))(x)
    assert_rel(got, torch.stack([conv(xi, w, b, method="gemm", **KW4) for xi in x]))
    xs = x.unsqueeze(0).expand(3, *x.shape)
    got = torch.func.vmap(lambda xi: conv(xi, w, b, method="auto", **KW4))(xs)
    assert_rel(got, conv(x, w, b, method="gemm", **KW4).expand(3, -1, -1, -1, -1, -1, -1))


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_compile_fullgraph_4d_auto(transposed: bool) -> None:
    torch._dynamo.reset()
    x, w, b = _case4d(grad=True)
    if transposed:
        w = w.detach().reshape(4, 3, 3, 2, 3, 2).requires_grad_()
        kw = {"stride": 2, "padding": 1, "output_padding": 1, "groups": 2}
        op: Callable[..., torch.Tensor] = conv_transpose
    else:
        kw, op = KW4, conv
    eager = op(x, w, b, method="auto", **kw)
    compiled = torch.compile(
        lambda x, w, b: op(x, w, b, method="auto", **kw), fullgraph=True, backend="eager"
    )
    out = compiled(x, w, b)
    assert_rel(out, eager)
    g = torch.ones_like(out)
    for a, e in zip(
        torch.autograd.grad(out, (x, w, b), g),
        torch.autograd.grad(eager, (x, w, b), g),
        strict=True,
    ):
        assert_rel(a, e)


def test_output_is_an_ordinary_tensor() -> None:
    """In-place ops and ReLU(inplace=True) on an auto output, with correct gradients."""
    x, w, b = _case4d(grad=True)
    out = conv(x, w, b, method="auto", **KW4)
    out += 1
    nn.ReLU(inplace=True)(out)
    got = torch.autograd.grad(out.sum(), (x, w, b))
    expected_out = (conv(x, w, b, method="gemm", **KW4) + 1).relu()
    assert_rel(out, expected_out)
    for a, e in zip(got, torch.autograd.grad(expected_out.sum(), (x, w, b)), strict=True):
        assert_rel(a, e)


def test_complex_4d_and_2d() -> None:
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 4, 3, 4, 5, generator=gen, dtype=torch.complex128)
    w = torch.randn(6, 2, 2, 2, 3, 2, generator=gen, dtype=torch.complex128)
    kw = {"groups": 2, "padding": 1}
    expected = _reference.conv(x, w, **kw)
    assert_rel(conv(x, w, method="auto", **kw), expected)
    assert_rel(conv(x, w, method="gemm", **kw), expected)
    x2, w2 = x[:, :, 0, 0], w[:, :, 0, 0]
    assert_rel(conv(x2, w2, method="auto", **kw), F.conv2d(x2, w2, **kw))
    wt = torch.randn(4, 3, 2, 2, 3, 2, generator=gen, dtype=torch.complex128)
    kwt = {"stride": 2, "output_padding": 1}
    assert_rel(conv_transpose(x, wt, method="auto", **kwt), _reference.conv_transpose(x, wt, **kwt))


@pytest.mark.parametrize("n", [2, 4], ids=lambda n: f"N{n}")
def test_autocast_bfloat16(n: int) -> None:
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, *SPATIAL[n], generator=gen)
    w = torch.randn(6, 4, *KERNEL[n], generator=gen)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = conv(x, w, padding=1, method="auto")
        expected = F.conv2d(x, w, padding=1) if n == 2 else conv(x, w, padding=1, method="gemm")
    assert got.dtype == expected.dtype == torch.bfloat16
    exact = _reference.conv(x.bfloat16().double(), w.bfloat16().double(), padding=1)
    if n == 2:
        assert torch.equal(got, expected)  # the very same torch kernel
    # bfloat16 output rounding (2^-8) plus accumulation in lower precision
    assert_rel(got.double(), exact, 2e-2)
    assert_rel(expected.double(), exact, 2e-2)


# --------------------------------------------------------------------------- fallback


@pytest.fixture
def fresh_probe_cache(monkeypatch):
    monkeypatch.setattr(_native, "_NATIVE", {})
    _plan.clear_caches()  # conv plans hold the probe's answer


def test_fallback_to_gemm_where_torch_has_no_kernel(monkeypatch, fresh_probe_cache) -> None:
    """Force a missing native conv3d: the probe says so and "auto" runs the "gemm" path."""

    def missing(*args, **kwargs):
        raise NotImplementedError("conv3d not implemented for this dtype")

    monkeypatch.setitem(_native.CONV, 3, missing)
    monkeypatch.setitem(_native._CONV_TRANSPOSE, 3, missing)
    x, w, b = _case4d()
    assert torch.equal(conv(x, w, b, method="auto", **KW4), conv(x, w, b, method="gemm", **KW4))
    wt = w.reshape(4, 3, 3, 2, 3, 2)
    kw = {"stride": 2, "groups": 2}
    assert torch.equal(
        conv_transpose(x, wt, method="auto", **kw), conv_transpose(x, wt, method="gemm", **kw)
    )
    assert _native._NATIVE == {("cpu", F64, 3, False): False, ("cpu", F64, 3, True): False}


def test_probe_runs_once_per_key(monkeypatch, fresh_probe_cache) -> None:
    calls = []
    real = _native._probe
    monkeypatch.setattr(_native, "_probe", lambda *a: calls.append(a[1:]) or real(*a))
    x, w, b = _case4d()
    for _ in range(3):
        conv(x, w, b, method="auto", groups=2)
        conv(x[:, :2, 0], w[:, :, 0], b, method="auto")
    assert calls == [(F64, 3, False)]


def test_complex32_has_no_native_kernel_so_auto_is_gemm(fresh_probe_cache) -> None:
    assert not _native.native(torch.device("cpu"), torch.complex32, 2, False)
    x, w = (
        torch.ones(1, 2, 3, 3, dtype=torch.complex32),
        torch.ones(2, 2, 2, 2, dtype=torch.complex32),
    )
    errors = []
    for method in ("auto", "gemm"):
        with pytest.raises(Exception) as info:  # noqa: PT011 (whatever gemm raises)
            conv(x, w, method=method)
        errors.append((type(info.value), str(info.value)))
    assert errors[0] == errors[1]


# --------------------------------------------------------------------------- workspace


@pytest.mark.parametrize("n", [3, 4], ids=lambda n: f"N{n}")
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_workspace_bounds_native_calls(transposed: bool, n: int, monkeypatch) -> None:
    """Every native call's input, output and (im2col-sized) workspace fit the limit, and
    the result equals the unbounded one."""
    gen = torch.Generator().manual_seed(8)
    spatial = (6, 7, 6, 5)[-n:] if n == 4 else (7, 6, 5)
    x = torch.randn(3, 4, *spatial, generator=gen, dtype=F64)
    kernel = (3,) * n
    w = torch.randn(*((4, 3) if transposed else (3, 4)), *kernel, generator=gen, dtype=F64)
    kw: dict[str, Any] = {"stride": 2, "padding": 1}
    if transposed:
        kw["output_padding"] = 1
    fn = conv_transpose if transposed else conv
    unbounded = fn(x, w, method="auto", **kw)
    limit = 80_000 if transposed else 20_000  # fits one native slab (see _layouts)
    seen: list[int] = []
    table = _native._CONV_TRANSPOSE if transposed else _native.CONV
    real = table[3]

    def spy(inp, weight, *args):
        out = real(inp, weight, *args)
        # the im2col matrix of one sample, as an im2col-based native kernel builds it
        cols = weight.shape[1] * _prod(weight.shape[2:]) * _prod(out.shape[2:])
        if transposed:  # the columns of a transposed conv: C_out * prod(k) per input position
            cols = weight.shape[1] * _prod(weight.shape[2:]) * _prod(inp.shape[2:])
        seen.append(8 * max(inp.numel(), out.numel(), cols))
        return out

    monkeypatch.setitem(table, 3, spy)
    bounded = fn(x, w, method="auto", max_workspace_bytes=limit, **kw)
    assert len(seen) > 3 and max(seen) <= limit, (len(seen), max(seen))
    assert_rel(bounded, unbounded)


def _prod(values) -> int:
    out = 1
    for v in values:
        out *= v
    return out


# --------------------------------------------------------------------------- method argument


@pytest.mark.parametrize(
    "call",
    [
        lambda: conv(torch.ones(1, 1, 3), torch.ones(1, 1, 1), method="fast"),
        lambda: conv_transpose(torch.ones(1, 1, 3), torch.ones(1, 1, 1), method=None),
        lambda: nfold.ConvNd(1, 1, 1, ndim=4, method="native"),
        lambda: nfold.ConvTransposeNd(1, 1, 1, ndim=4, method="GEMM"),
        lambda: nfold.Conv2d(1, 1, 1, method="torch"),
        lambda: nfold.ConvTranspose3d(1, 1, 1, method=3),
        lambda: nfold.convert(nn.Conv2d(1, 1, 1), method="native"),
    ],
    ids=[
        "conv",
        "conv_transpose",
        "ConvNd",
        "ConvTransposeNd",
        "Conv2d",
        "ConvTranspose3d",
        "convert",
    ],
)
def test_bad_method_is_a_value_error_naming_it(call) -> None:
    with pytest.raises(ValueError, match="method must be one of 'auto', 'gemm'"):
        call()


def _uses_native(monkeypatch, run: Callable[[], Any]) -> bool:
    calls = []
    real_conv, real_transpose = _native.conv, _native.conv_transpose
    monkeypatch.setattr(_native, "conv", lambda *a: calls.append(1) or real_conv(*a))
    monkeypatch.setattr(_native, "conv_transpose", lambda *a: calls.append(1) or real_transpose(*a))
    run()
    monkeypatch.undo()
    return bool(calls)


def test_module_defaults_and_convert(monkeypatch) -> None:
    x4, x2 = torch.randn(1, 2, 4, 4, 4, 4), torch.randn(1, 2, 5, 5)
    nd = nfold.ConvNd(2, 3, 3, ndim=4)
    assert nd.method == "auto" and "method" not in repr(nd)
    assert _uses_native(monkeypatch, lambda: nd(x4))
    nd.method = "gemm"
    assert "method=gemm" in repr(nd) and not _uses_native(monkeypatch, lambda: nd(x4))
    t = nfold.ConvTransposeNd(2, 3, 3, ndim=4, method="gemm")
    assert not _uses_native(monkeypatch, lambda: t(x4))
    drop_in = nfold.Conv2d(2, 3, 3)
    assert drop_in.method == "gemm" and not _uses_native(monkeypatch, lambda: drop_in(x2))
    drop_in = nfold.ConvTranspose2d(2, 3, 3, method="auto")
    assert _uses_native(monkeypatch, lambda: drop_in(x2))
    net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ConvTranspose2d(3, 2, 3))
    assert [m.method for m in nfold.convert(net)] == ["gemm", "gemm"]
    converted = nfold.convert(net, method="auto")
    assert [m.method for m in converted] == ["auto", "auto"]
    assert _uses_native(monkeypatch, lambda: converted(x2))
    assert torch.allclose(converted(x2), net(x2), atol=1e-6)


def test_strategy_choice() -> None:
    """Per call: leading offsets summed one native conv each for depthwise convs, merged
    into channels otherwise."""
    x = torch.randn(1, 4, 3, 3, 3, 3)
    assert _native._sum_offsets(x, torch.randn(4, 1, 3, 3, 3, 3), 4)
    assert _native._sum_offsets(x, torch.randn(8, 1, 3, 3, 3, 3), 4)
    assert not _native._sum_offsets(x, torch.randn(4, 2, 3, 3, 3, 3), 2)
    assert not _native._sum_offsets(x, torch.randn(4, 4, 3, 3, 3, 3), 1)
    assert not _native._sum_offsets(x[:, :1], torch.randn(4, 1, 3, 3, 3, 3), 1)


# --------------------------------------------------------------------------- training memory


@pytest.mark.parametrize(
    ("shape", "kw"),
    [
        ((3, 2, 9, 5, 4, 6), {"padding": 1}),  # several samples and rows per chunk
        ((1, 4, 11, 4, 5, 4), {"stride": 2, "padding": (2, 1, 0, 1), "dilation": (2, 1, 1, 1)}),
        ((2, 2, 6, 4, 3, 4, 3), {"padding": 1}),  # 5-d: two leading dims
    ],
    ids=["rows_and_samples", "strided_dilated", "5d"],
)
def test_training_rebuilds_the_merged_input_in_chunks(shape, kw, monkeypatch) -> None:
    """With a gradient to record, "auto" for N > 3 saves the input, not the merged input,
    and builds the merged input a chunk at a time in forward and backward: the same
    output and gradients (float64, to round-off) as autograd through the torch ops, over
    several chunks (double backward, which differentiates a recomputation, is in
    test_gradcheck_gradgradcheck_4d_auto)."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn(3, shape[1], *(3,) * (len(shape) - 2), generator=gen, dtype=F64,
                    requires_grad=True)  # fmt: skip
    b = torch.randn(3, generator=gen, dtype=F64, requires_grad=True)
    chunks = []
    real = _native._chunks
    monkeypatch.setattr(_native, "_chunks", lambda *a: chunks.append(list(real(*a))) or chunks[-1])
    out = conv(x, w, b, **kw)
    g = torch.randn(out.shape, generator=gen, dtype=F64)
    grads = torch.autograd.grad(out, (x, w, b), g)
    assert len(chunks) == 2 and all(len(c) > 2 for c in chunks)  # forward, backward
    with torch.enable_grad():
        monkeypatch.setattr(_native, "eager_graph", lambda *a: False)  # torch ops throughout
        ref = conv(x, w, b, **kw)
        ref_grads = torch.autograd.grad(ref, (x, w, b), g)
    assert_rel(out, ref)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want)
