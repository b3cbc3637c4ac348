"""nfold.conv / nfold.conv_transpose against torch (N = 1, 2, 3), a nested-loop reference
(N = 4, 5), gradcheck, the chunked path and the argument errors."""

from __future__ import annotations

import dataclasses
import itertools
import sys

import pytest
import torch
import torch.nn.functional as F

import nfold
from nfold import _plan, conv, conv_transpose
from reference import dtype_id

F64 = torch.float64

# torch warns that its own "same" with an even kernel copies the input; not our concern here.
pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
SPATIAL = {1: (9,), 2: (7, 6), 3: (5, 6, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (3, 2, 2)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 for empty tensors)."""
    if b.numel() == 0:
        return 0.0
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-300)).item()


def assert_rel(a: torch.Tensor, b: torch.Tensor, rel: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    err = rel_err(a, b)
    assert err <= rel, f"max relative error {err:.3g} > {rel:.3g}"


# --------------------------------------------------------------------------- settings

# Each setting: keyword arguments of the test case. c_in/c_out/k/spatial default per N.
CONV_SETTINGS = {
    "plain": {},
    "no_bias": {"bias": False},
    "stride2": {"stride": 2},
    "stride_tuple": {"stride": "tuple"},
    "dilation2": {"dilation": 2},
    "pad1": {"padding": 1},
    "pad_tuple": {"padding": "tuple"},
    "pad_pairs": {"padding": "pairs"},
    "same_odd": {"padding": "same", "k": 3},
    "same_even": {"padding": "same", "k": 2},
    "same_even_dil": {"padding": "same", "k": 2, "dilation": 3},
    "same_mixed_dil": {"padding": "same", "dilation": 2},
    "valid": {"padding": "valid"},
    "reflect": {"padding": 1, "padding_mode": "reflect"},
    "replicate": {"padding": 2, "padding_mode": "replicate"},
    "circular": {"padding": "tuple", "padding_mode": "circular"},
    "reflect_same_even": {"padding": "same", "k": 2, "padding_mode": "reflect"},
    "groups2": {"groups": 2, "c_in": 4, "c_out": 6},
    "depthwise": {"groups": 4, "c_in": 4, "c_out": 4},
    "depthwise_x2": {"groups": 3, "c_in": 3, "c_out": 6},
    "kernel1": {"k": 1},
    "kernel1_stride2": {"k": 1, "stride": 2},
    "batch0": {"batch": 0},
    "unbatched": {"batch": None},
    "noncontiguous": {"noncontiguous": True},
    "channels_last": {"channels_last": True},
    "kitchen_sink": {
        "groups": 2,
        "c_in": 4,
        "c_out": 6,
        "stride": "tuple",
        "dilation": 2,
        "padding": "pairs",
    },  # fmt: skip
}

TRANSPOSE_SETTINGS = {
    "plain": {},
    "no_bias": {"bias": False},
    "stride2": {"stride": 2},
    "stride2_op1": {"stride": 2, "output_padding": 1},
    "stride3_op2_pad": {"stride": 3, "output_padding": 2, "padding": 1},
    "dilation2": {"dilation": 2},
    "op_from_dilation": {"dilation": 2, "output_padding": 1},  # op >= stride, allowed by d
    "pad_gt_op": {"stride": 2, "padding": 2, "output_padding": 1},
    "op_gt_pad": {"stride": 3, "padding": 1, "output_padding": 2, "k": 1},
    "pad_tuple": {"padding": "tuple"},
    "stride_tuple": {"stride": "tuple", "output_padding": "tuple"},
    "output_size": {"stride": 2, "output_size": True},
    "groups2": {"groups": 2, "c_in": 4, "c_out": 6},
    "depthwise": {"groups": 4, "c_in": 4, "c_out": 4},
    "kernel1": {"k": 1},
    "kernel1_stride2": {"k": 1, "stride": 2},
    "batch0": {"batch": 0},
    "unbatched": {"batch": None},
    "noncontiguous": {"noncontiguous": True},
    "kitchen_sink": {
        "groups": 2,
        "c_in": 4,
        "c_out": 6,
        "stride": "tuple",
        "dilation": 2,
        "padding": 1,
        "output_padding": "tuple",
    },  # fmt: skip
}


def _resolve(value: object, n: int, kind: str) -> object:
    """Turn the table's "tuple"/"pairs" markers into N-d values."""
    if value == "tuple":
        return {"stride": (2, 1, 3), "padding": (1, 0, 1), "output_padding": (1, 0, 2)}[kind][:n]
    if value == "pairs":
        return ((1, 0), (0, 2), (2, 1))[:n]
    return value


def make_case(setting: dict, n: int, dtype: torch.dtype, transposed: bool, seed: int = 0) -> dict:
    s = dict(setting)
    gen = torch.Generator().manual_seed(seed)
    c_in, c_out, groups = s.pop("c_in", 2), s.pop("c_out", 3), s.get("groups", 1)
    k = s.pop("k", None)
    kernel = KERNEL[n] if k is None else (k,) * n
    batch = s.pop("batch", 2)
    spatial = SPATIAL[n] if not transposed else tuple(v - 2 for v in SPATIAL[n])
    x = torch.randn((batch or 1, c_in, *spatial), generator=gen, dtype=F64)
    if s.pop("noncontiguous", False):
        x = torch.randn((batch, c_in, *(2 * v for v in spatial)), generator=gen, dtype=F64)
        x = x[(..., *(slice(None, None, 2),) * n)]
        assert not x.is_contiguous()
    if s.pop("channels_last", False):
        x = x.movedim(1, -1).contiguous().movedim(-1, 1)
    if batch is None:
        x = x[0]
    wshape = (c_in, c_out // groups, *kernel) if transposed else (c_out, c_in // groups, *kernel)
    w = torch.randn(wshape, generator=gen, dtype=F64)
    b = torch.randn(c_out, generator=gen, dtype=F64) if s.pop("bias", True) else None
    kwargs = {key: _resolve(v, n, key) for key, v in s.items()}
    if kwargs.pop("output_size", False):
        # one more than the smallest size: torch's functional form needs output_padding=1
        smallest = [(v - 1) * 2 + (kk - 1) + 1 for v, kk in zip(spatial, kernel, strict=True)]
        kwargs["output_size"] = [v + 1 for v in smallest]
    return {"x": x.to(dtype), "w": w.to(dtype), "b": None if b is None else b.to(dtype), **kwargs}


def torch_conv(x, w, b, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch's conv, with torch.nn.ConvNd's handling of padding_mode and per-side pairs."""
    n = w.dim() - 2
    fn = getattr(F, f"conv{n}d")
    if padding_mode == "zeros" and not (
        isinstance(padding, tuple) and isinstance(padding[0], tuple)
    ):
        return fn(x, w, b, stride, padding, dilation, groups)
    k = w.shape[2:]
    if isinstance(padding, str):
        dil = (dilation,) * n if isinstance(dilation, int) else dilation
        tot = [d * (kk - 1) for kk, d in zip(k, dil, strict=True)]
        pairs = [(t // 2, t - t // 2) for t in tot]
    elif isinstance(padding, int):
        pairs = [(padding, padding)] * n
    elif isinstance(padding[0], tuple):
        pairs = list(padding)
    else:
        pairs = [(p, p) for p in padding]
    flat = [v for pair in reversed(pairs) for v in pair]
    mode = "constant" if padding_mode == "zeros" else padding_mode
    unbatched = x.dim() == n + 1
    xp = F.pad(x.unsqueeze(0) if unbatched else x, flat, mode=mode)
    xp = xp.squeeze(0) if unbatched else xp
    return fn(xp, w, b, stride, 0, dilation, groups)


def torch_conv_transpose(x, w, b, stride=1, padding=0, output_padding=0, groups=1, dilation=1,
                         output_size=None):  # fmt: skip
    n = w.dim() - 2
    if output_size is not None:
        output_padding = 1  # make_case asks for one more than the smallest size
    return getattr(F, f"conv_transpose{n}d")(
        x, w, b, stride, padding, output_padding, groups, dilation
    )


def run(fn, case: dict, grad_out: torch.Tensor | None = None):
    """Forward and gradients w.r.t. input, weight, bias."""
    x = case["x"].detach().clone().requires_grad_()
    if not case["x"].is_contiguous():  # keep the caller's strides
        x = case["x"].detach().clone(memory_format=torch.preserve_format)
        x = torch.empty_strided(case["x"].shape, case["x"].stride(), dtype=x.dtype).copy_(x)
        x.requires_grad_()
    w = case["w"].detach().clone().requires_grad_()
    b = None if case["b"] is None else case["b"].detach().clone().requires_grad_()
    kwargs = {k: v for k, v in case.items() if k not in ("x", "w", "b")}
    out = fn(x, w, b, **kwargs)
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    out.backward(grad_out.to(out.dtype))
    grads = [x.grad, w.grad] + ([] if b is None else [b.grad])
    return out.detach(), grads, grad_out


NAMES = ["forward", "grad_input", "grad_weight", "grad_bias"]


def _ids(table: dict) -> list:
    return [pytest.param(n, name, id=f"{n}d-{name}") for n in (1, 2, 3) for name in table]


@pytest.mark.parametrize("n, name", _ids(CONV_SETTINGS))
def test_conv_matches_torch_float64(n: int, name: str) -> None:
    case = make_case(CONV_SETTINGS[name], n, F64, transposed=False)
    ref, ref_grads, g = run(torch_conv, case)
    out, grads, _ = run(conv, case, g)
    assert_rel(out, ref, 1e-12)
    assert len(grads) == len(ref_grads)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-12)


@pytest.mark.parametrize("n, name", _ids(TRANSPOSE_SETTINGS))
def test_conv_transpose_matches_torch_float64(n: int, name: str) -> None:
    case = make_case(TRANSPOSE_SETTINGS[name], n, F64, transposed=True)
    ref, ref_grads, g = run(torch_conv_transpose, case)
    out, grads, _ = run(conv_transpose, case, g)
    assert_rel(out, ref, 1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-12)


# Float32 tolerance, from the standard error bound of a sum of m products:
# |fl(sum) - sum| <= gamma_m * sum |x_i w_i|, gamma_m ~ m * eps. nfold and torch each sum the
# same products in their own order, so they differ by at most 2 * m * eps * (the same sum
# taken over absolute values), which we compute exactly (float64) by running the float64
# reference on |x|, |w|, |grad_out|. m is the largest number of terms any output or gradient
# element sums (forward C_in/G * prod(k); grad input C_out/G * prod(k); grad weight B * prod(L)),
# and the bias term adds |b| * eps. A real bug (wrong tap, wrong group) breaks this bound
# by orders of magnitude, as the float64 tests do.
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("n, name", [(1, "kitchen_sink"), (2, "kitchen_sink"), (3, "groups2"),
                                     (2, "plain"), (3, "depthwise")])  # fmt: skip
def test_float32_within_roundoff_bound(n: int, name: str, transposed: bool) -> None:
    table = TRANSPOSE_SETTINGS if transposed else CONV_SETTINGS
    case = make_case(table[name], n, torch.float32, transposed)
    ours, reference = (conv_transpose, torch_conv_transpose) if transposed else (conv, torch_conv)
    ref, ref_grads, g = run(reference, case)
    out, grads, _ = run(ours, case, g)
    # magnitudes: the same computation on |x|, |w|, |grad_out| in float64
    abs_case = {**case, "x": case["x"].double().abs(), "w": case["w"].double().abs()}
    abs_case["b"] = None if case["b"] is None else case["b"].double().abs()
    mag, mag_grads, _ = run(reference, abs_case, g.abs())
    w = case["w"]
    x = case["x"] if case["x"].dim() == w.dim() else case["x"].unsqueeze(0)
    terms = max(w[0].numel(), w.shape[0] * w[0, 0].numel(), x.shape[0] * out[0, 0].numel())
    eps = torch.finfo(torch.float32).eps
    for got, want, m in zip([out, *grads], [ref, *ref_grads], [mag, *mag_grads], strict=True):
        bound = 2 * terms * eps * m + eps * want.double().abs()
        excess = (got.double() - want.double()).abs() - bound
        assert excess.max() <= 0, f"float32 error exceeds the round-off bound by {excess.max():.3g}"


# --------------------------------------------------------------------------- N = 4, 5


def ref_conv(x, w, b, stride, pads, dilation, groups):
    """Nested loops over output positions and kernel taps; einsum over channels only."""
    n = w.dim() - 2
    flat = [v for pair in reversed(pads) for v in pair]
    xp = F.pad(x, flat)
    bsz, c_in = x.shape[:2]
    c_out, k = w.shape[0], w.shape[2:]
    outs = [(xp.shape[2 + i] - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1 for i in range(n)]
    wg = w.reshape(groups, c_out // groups, c_in // groups, *k)
    out = x.new_zeros((bsz, c_out, *outs))
    for pos in itertools.product(*map(range, outs)):
        acc = x.new_zeros((bsz, groups, c_out // groups))
        for tap in itertools.product(*map(range, k)):
            idx = tuple(
                p * s + t * d for p, s, t, d in zip(pos, stride, tap, dilation, strict=True)
            )
            xv = xp[(slice(None), slice(None), *idx)].reshape(bsz, groups, c_in // groups)
            acc = acc + torch.einsum("bgc,goc->bgo", xv, wg[(..., *tap)])
        out[(slice(None), slice(None), *pos)] = acc.reshape(bsz, c_out)
    return out if b is None else out + b.view(-1, *(1,) * n)


def ref_conv_transpose(x, w, b, stride, padding, output_padding, dilation, groups):
    """Scatter each input position through each kernel tap, then crop the padding."""
    n = w.dim() - 2
    bsz, c_in, *spatial = x.shape
    k = w.shape[2:]
    c_out = w.shape[1] * groups
    outs = [
        (s_ - 1) * st - 2 * p + d * (kk - 1) + op + 1
        for s_, st, p, d, kk, op in zip(
            spatial, stride, padding, dilation, k, output_padding, strict=True
        )
    ]
    full = [max((s_ - 1) * st + d * (kk - 1) + 1, p + o) for s_, st, d, kk, p, o
            in zip(spatial, stride, dilation, k, padding, outs, strict=True)]  # fmt: skip
    wg = w.reshape(groups, c_in // groups, c_out // groups, *k)
    buf = x.new_zeros((bsz, c_out, *full))
    for pos in itertools.product(*map(range, spatial)):
        xv = x[(slice(None), slice(None), *pos)].reshape(bsz, groups, c_in // groups)
        for tap in itertools.product(*map(range, k)):
            idx = tuple(
                p * s + t * d for p, s, t, d in zip(pos, stride, tap, dilation, strict=True)
            )
            contrib = torch.einsum("bgc,gco->bgo", xv, wg[(..., *tap)]).reshape(bsz, c_out)
            buf[(slice(None), slice(None), *idx)] = buf[(slice(None), slice(None), *idx)] + contrib
    out = buf[
        (slice(None), slice(None), *(slice(p, p + o) for p, o in zip(padding, outs, strict=True)))
    ]
    return out if b is None else out + b.view(-1, *(1,) * n)


HIGH_N = {
    "4d-plain": dict(n=4, spatial=(4, 3, 4, 3), k=(2, 2, 1, 2), stride=(1,) * 4, pads=((0, 0),) * 4,
                     dilation=(1,) * 4, groups=1),
    "4d-grouped-strided": dict(n=4, spatial=(5, 4, 3, 4), k=(2, 2, 2, 1), stride=(2, 1, 1, 2),
                               pads=((1, 0), (1, 1), (0, 1), (0, 0)), dilation=(1, 2, 1, 1),
                               groups=2),
    "5d-dilated": dict(n=5, spatial=(3, 4, 3, 3, 3), k=(2, 2, 1, 2, 1), stride=(1, 2, 1, 1, 2),
                       pads=((1, 1), (0, 0), (0, 1), (0, 0), (1, 0)), dilation=(2, 1, 1, 1, 1),
                       groups=2),
}  # fmt: skip


def _high_n_tensors(cfg: dict, transposed: bool, dtype=F64):
    gen = torch.Generator().manual_seed(3)
    g, c_in, c_out = cfg["groups"], 2 * cfg["groups"], 2 * cfg["groups"]
    spatial = cfg["spatial"] if not transposed else tuple(max(2, v - 2) for v in cfg["spatial"])
    x = torch.randn((2, c_in, *spatial), generator=gen, dtype=dtype)
    wshape = (c_in, c_out // g) if transposed else (c_out, c_in // g)
    w = torch.randn((*wshape, *cfg["k"]), generator=gen, dtype=dtype)
    b = torch.randn(c_out, generator=gen, dtype=dtype)
    return x, w, b


def _transpose_args(cfg: dict) -> dict:
    # symmetric padding from the lower side of the table's pairs; op < max(stride, dilation)
    op = tuple(max(s, d) - 1 for s, d in zip(cfg["stride"], cfg["dilation"], strict=True))
    return dict(stride=cfg["stride"], padding=tuple(lo for lo, _ in cfg["pads"]),
                output_padding=op, dilation=cfg["dilation"], groups=cfg["groups"])  # fmt: skip


def _value_and_grads(fn, x, w, b, g=None):
    x, w, b = (t.detach().clone().requires_grad_() for t in (x, w, b))
    out = fn(x, w, b)
    if g is None:
        g = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
    out.backward(g)
    return out.detach(), [x.grad, w.grad, b.grad], g


@pytest.mark.parametrize("name", list(HIGH_N))
def test_conv_high_n_matches_nested_loops(name: str) -> None:
    cfg = HIGH_N[name]
    x, w, b = _high_n_tensors(cfg, False)
    args = (cfg["stride"], cfg["pads"], cfg["dilation"], cfg["groups"])
    ref, ref_grads, g = _value_and_grads(lambda x, w, b: ref_conv(x, w, b, *args), x, w, b)
    out, grads, _ = _value_and_grads(
        lambda x, w, b: conv(x, w, b, cfg["stride"], cfg["pads"], cfg["dilation"], cfg["groups"]),
        x, w, b, g,
    )  # fmt: skip
    assert_rel(out, ref, 1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-12)


@pytest.mark.parametrize("name", list(HIGH_N))
def test_conv_transpose_high_n_matches_nested_loops(name: str) -> None:
    cfg = HIGH_N[name]
    x, w, b = _high_n_tensors(cfg, True)
    t = _transpose_args(cfg)
    ref_args = (t["stride"], t["padding"], t["output_padding"], t["dilation"], t["groups"])
    ref, ref_grads, g = _value_and_grads(
        lambda x, w, b: ref_conv_transpose(x, w, b, *ref_args), x, w, b
    )
    out, grads, _ = _value_and_grads(lambda x, w, b: conv_transpose(x, w, b, **t), x, w, b, g)
    assert_rel(out, ref, 1e-12)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-12)


def test_nested_loop_reference_matches_torch_in_3d() -> None:
    """The N = 4, 5 references are themselves checked against torch where torch has the op."""
    gen = torch.Generator().manual_seed(0)
    x, w = (
        torch.randn(2, 4, 5, 4, 4, generator=gen, dtype=F64),
        torch.randn(6, 2, 2, 3, 1, generator=gen, dtype=F64),
    )
    b = torch.randn(6, generator=gen, dtype=F64)
    pads = ((1, 1), (0, 0), (2, 2))
    got = ref_conv(x, w, b, (2, 1, 1), pads, (1, 1, 2), 2)
    assert_rel(got, F.conv3d(x, w, b, (2, 1, 1), (1, 0, 2), (1, 1, 2), 2), 1e-13)
    wt = torch.randn(4, 3, 2, 3, 1, generator=gen, dtype=F64)
    got = ref_conv_transpose(x, wt, None, (2, 1, 1), (1, 0, 1), (1, 0, 1), (1, 1, 2), 2)
    assert_rel(
        got, F.conv_transpose3d(x, wt, None, (2, 1, 1), (1, 0, 1), (1, 0, 1), 2, (1, 1, 2)), 1e-13
    )


GRADCHECK = {
    "4d": dict(spatial=(3, 3, 2, 2), k=(2, 1, 2, 2), stride=(1, 2, 1, 1), padding=(1, 0, 0, 1),
               dilation=(1, 1, 1, 1), groups=2),
    "5d": dict(spatial=(2, 2, 2, 2, 3), k=(2, 1, 1, 2, 2), stride=(1, 1, 2, 1, 2),
               padding=(0, 1, 0, 0, 1), dilation=(1, 1, 1, 1, 1), groups=1),
}  # fmt: skip


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("name", list(GRADCHECK))
def test_gradcheck_and_gradgradcheck(name: str, transposed: bool) -> None:
    cfg = GRADCHECK[name]
    gen = torch.Generator().manual_seed(7)
    g = cfg["groups"]
    x = torch.randn((1, 2 * g, *cfg["spatial"]), generator=gen, dtype=F64, requires_grad=True)
    w = torch.randn((2 * g, 2, *cfg["k"]), generator=gen, dtype=F64, requires_grad=True)
    b = torch.randn(
        2 * g if not transposed else 2 * g, generator=gen, dtype=F64, requires_grad=True
    )
    kw = {k: cfg[k] for k in ("stride", "padding", "dilation", "groups")}
    if transposed:
        kw["padding"] = tuple(
            min(p, 1) * (k - 1) for p, k in zip(cfg["padding"], cfg["k"], strict=True)
        )

        def fn(x, w, b):
            return conv_transpose(x, w, b, output_padding=tuple(s - 1 for s in cfg["stride"]), **kw)
    else:

        def fn(x, w, b):
            return conv(x, w, b, **kw)

    # fast_mode checks random projections of the Jacobians (seconds instead of minutes)
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


SMALL_GEMM = {
    "drop-in": ((1, 1, 4, 4), (1, 1, 3, 3), dict(padding=1)),
    "strided, dilated, groups": ((2, 4, 7, 6), (6, 2, 3, 2), dict(stride=2, padding=1,
                                                                  dilation=(1, 2), groups=2)),
    "pointwise": ((3, 2, 5, 5), (4, 2, 1, 1), {}),
    "circular": ((2, 3, 5, 6), (3, 1, 3, 3), dict(padding=1, padding_mode="circular", groups=3)),
    "unbatched same": ((3, 6, 6), (2, 3, 3, 3), dict(padding="same")),
    "rows > L": ((3, 9, 4, 4), (5, 9, 3, 3), dict(padding=1)),  # weight grad: batch in K
}  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=dtype_id)
@pytest.mark.parametrize("name", list(SMALL_GEMM))
def test_small_gemm_equals_the_bilinear_function_bitwise(name, dtype, monkeypatch) -> None:
    """Small N = 2 "gemm" calls run as plain torch ops (torch's im2col, bmm; torch's
    autograd): the same values and gradients, bit for bit, as nfold's Function."""
    x_shape, w_shape, kw = SMALL_GEMM[name]
    gen = torch.Generator().manual_seed(3)
    x, w, b = (torch.randn(s, generator=gen, dtype=dtype) for s in (x_shape, w_shape, w_shape[:1]))
    conv_mod = sys.modules["nfold.conv"]
    plan = conv_mod._conv_plan(x.shape, dtype, x.device, w.shape, dtype, b.shape, dtype,
                               *(kw.get(k, d) for k, d in (("stride", 1), ("padding", 0),
                                 ("dilation", 1), ("groups", 1), ("padding_mode", "zeros"))),
                               None, "gemm")  # fmt: skip
    assert plan.small is not None

    def fn(x, w, b):
        return conv(x, w, b, method="gemm", **kw)

    small = _value_and_grads(fn, x, w, b)
    monkeypatch.setitem(_plan.POLICIES, "cpu", dataclasses.replace(_plan.CPU, torch_below=0))
    _plan.clear_caches()
    function = _value_and_grads(fn, x, w, b, small[2])
    assert torch.equal(small[0], function[0])
    for got, want in zip(small[1], function[1], strict=True):
        if name == "rows > L" and got.shape == w.shape:
            # the Function merges the batch into one GEMM's K; torch's autograd sums
            # per-sample products: the same K = B * L terms in another order
            terms = x_shape[0] * 16
            assert_rel(got, want, terms * torch.finfo(dtype).eps)
        else:
            assert torch.equal(got, want)


def test_small_gemm_gradgradcheck() -> None:
    gen = torch.Generator().manual_seed(4)
    x_shape, w_shape, kw = SMALL_GEMM["strided, dilated, groups"]
    args = [
        torch.randn(s, generator=gen, dtype=F64, requires_grad=True)
        for s in (x_shape, w_shape, w_shape[:1])
    ]

    def fn(x, w, b):
        return conv(x, w, b, method="gemm", **kw)

    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


# --------------------------------------------------------------------------- chunking


def _chunk_case(transposed: bool, spatial: tuple[int, int] = (9, 7)):
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, 4, *spatial, generator=gen, dtype=F64)
    if transposed:
        w = torch.randn(4, 3, 3, 2, generator=gen, dtype=F64)
        kw = dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2), groups=2)
    else:
        w = torch.randn(6, 2, 3, 2, generator=gen, dtype=F64)
        kw = dict(stride=(2, 1), padding=((1, 2), (0, 1)), dilation=(1, 2), groups=2)
    return x, w, torch.randn(6, generator=gen, dtype=F64), kw


def _sample_bytes(x: torch.Tensor, w: torch.Tensor, kw: dict, transposed: bool) -> int:
    """Bytes of one sample's unfolded matrix (columns) on the unchunked path."""
    if transposed:
        return w.shape[1] * kw["groups"] * w[0, 0].numel() * x[0, 0].numel() * x.element_size()
    out = conv(x[:1], w, None, **kw)
    return x.shape[1] * w[0, 0].numel() * out[0, 0].numel() * x.element_size()


# limits as fractions of one sample's unfolded matrix: several samples, a slab of rows,
# less than a row (chunks along the second dim too); "minimum" is just above what a single
# output position needs (conv: C_in * span(k) padded elements; transposed: C_out * prod(k)
# columns for each of the up to 2 * 3 input positions reaching it), 8 bytes each.
FRACTIONS = {"3_samples": 3.0, "2_samples": 2.0, "half_sample": 0.5, "below_one_row": 0.15}
MINIMUM = {False: 8 * 4 * 3 * 3, True: 8 * 6 * 6 * 6}


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
@pytest.mark.parametrize("fraction", [*FRACTIONS, "minimum"])
def test_chunked_equals_unchunked(fraction: str, transposed: bool) -> None:
    fn = conv_transpose if transposed else conv
    x, w, b, kw = _chunk_case(transposed)
    if fraction == "minimum":
        limit = MINIMUM[transposed]
        with pytest.raises(ValueError, match="max_workspace_bytes"):
            fn(x, w, b, max_workspace_bytes=limit - 1, **kw)
    else:
        limit = int(FRACTIONS[fraction] * _sample_bytes(x, w, kw, transposed))
    kw["method"] = "gemm"  # the limits are fractions of its matrix; "auto": test_conv_engine
    ref, ref_grads, g = _value_and_grads(lambda x, w, b: fn(x, w, b, **kw), x, w, b)
    out, grads, _ = _value_and_grads(
        lambda x, w, b: fn(x, w, b, max_workspace_bytes=limit, **kw), x, w, b, g
    )
    if FRACTIONS.get(fraction, 0) >= 1:
        # batch chunks run the very same per-sample matmuls: bitwise equal
        assert torch.equal(out, ref)
        assert torch.equal(grads[0], ref_grads[0])
    # slabs of output positions change the matmul width, and the BLAS kernel with it:
    # equal to round-off (see test_blas_columns_depend_on_width)
    assert_rel(out, ref, 1e-14)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-14)


def test_blas_columns_depend_on_width() -> None:
    """Why position chunks are not bitwise: a matmul column's rounding depends on how many
    columns the BLAS call has (kernel choice, edge tiles), not on nfold."""
    gen = torch.Generator().manual_seed(0)
    w, c = (
        torch.randn(8, 36, generator=gen, dtype=F64),
        torch.randn(36, 100, generator=gen, dtype=F64),
    )
    full = w @ c
    assert_rel(w @ c[:, :7], full[:, :7], 1e-14)


@pytest.mark.parametrize("spatial", [(9, 7), (4, 3)], ids=["long_rows", "short_rows"])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_batch_tiles_equal_one_tile(transposed: bool, spatial, monkeypatch) -> None:
    """Work goes in batch tiles of about the policy's tile_bytes. Forward and input gradient run the
    very same per-sample matmuls whatever the tiling (bitwise). Weight gradients are sums
    over tiles; for conv with fewer output positions than rows of the unfolded matrix
    (short_rows) a tile's batch is merged into one GEMM (K = n * L). To round-off."""
    fn, torch_fn = (conv_transpose, torch_conv_transpose) if transposed else (conv, torch_conv)
    x, w, b, kw = _chunk_case(transposed, spatial)
    ref, ref_grads, g = _value_and_grads(lambda x, w, b: fn(x, w, b, **kw), x, w, b)
    rule = dataclasses.replace(_plan.CPU, tile_bytes=1)  # a sample per tile
    monkeypatch.setitem(_plan.POLICIES, "cpu", rule)
    _plan.clear_caches()  # plans are derived from the policy
    out, grads, _ = _value_and_grads(lambda x, w, b: fn(x, w, b, **kw), x, w, b, g)
    assert torch.equal(out, ref) and torch.equal(grads[0], ref_grads[0])
    _, torch_grads, _ = _value_and_grads(lambda x, w, b: torch_fn(x, w, b, **kw), x, w, b, g)
    for tiled, untiled, want in zip(grads, ref_grads, torch_grads, strict=True):
        assert_rel(tiled, untiled, 1e-14)
        assert_rel(tiled, want, 1e-14)


@pytest.mark.parametrize("groups", [1, 3])
def test_weight_matmul_reads_the_weight_in_place_bitwise(groups: int) -> None:
    """One group: bmm over the expanded (stride-0) weight, no copies; the same bits as
    torch.matmul's broadcast, which copies the weight per sample."""
    mod = sys.modules["nfold.conv"]
    gen = torch.Generator().manual_seed(12)
    w = torch.randn(groups, 5, 7, generator=gen)
    t = torch.randn(4, groups, 7, 9, generator=gen)
    assert torch.equal(mod._weight_matmul(w, t), torch.matmul(w, t))
    assert torch.equal(
        mod._weight_matmul(w.transpose(1, 2), t[:, :, :5]), torch.matmul(w.mT, t[:, :, :5])
    )


@pytest.mark.parametrize(
    ("kernel", "stride"), [((4, 2), (4, 2)), ((1, 1), (1, 1))], ids=["patchify", "1x1"]
)
def test_patchify_and_pointwise_equal_reshape_matmul_and_torch(kernel, stride) -> None:
    """stride == kernel: the unfolded matrix is a permutation of the input (no tiles)."""
    from nfold.bench.peers import _patch_matmul

    gen = torch.Generator().manual_seed(13)
    x = torch.randn(5, 3, 8, 6, generator=gen, dtype=F64)
    w = torch.randn(7, 3, *kernel, generator=gen, dtype=F64)
    b = torch.randn(7, generator=gen, dtype=F64)
    ref, ref_grads, g = _value_and_grads(lambda x, w, b: F.conv2d(x, w, b, stride), x, w, b)
    out, grads, _ = _value_and_grads(lambda x, w, b: conv(x, w, b, stride), x, w, b, g)
    assert_rel(out, _patch_matmul(x, w, b, kernel), 1e-15)
    assert_rel(out, ref, 1e-14)
    for got, want in zip(grads, ref_grads, strict=True):
        assert_rel(got, want, 1e-14)


def _intermediate_bytes(monkeypatch, transposed: bool, limit: int | None) -> list[int]:
    """Bytes of every unfolded matrix and matmul result of a forward pass."""
    mod = sys.modules["nfold.conv"]
    seen: list[int] = []
    real_unfold, real_matmul = mod._unfold, torch.matmul

    def unfold_spy(x, geom):
        out = real_unfold(x, geom)
        seen.append(out.numel() * out.element_size())
        return out

    def matmul_spy(a, b):
        out = real_matmul(a, b)
        seen.append(out.numel() * out.element_size())
        return out

    x, w, b, kw = _chunk_case(transposed)
    with monkeypatch.context() as m:
        m.setattr(mod, "_unfold", unfold_spy)
        m.setattr(mod.torch, "matmul", matmul_spy)
        (conv_transpose if transposed else conv)(
            x, w, b, max_workspace_bytes=limit, method="gemm", **kw
        )
    return seen


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_chunked_intermediates_respect_limit(transposed: bool, monkeypatch) -> None:
    x, w, _, kw = _chunk_case(transposed)
    limit = int(0.3 * _sample_bytes(x, w, kw, transposed))
    seen = _intermediate_bytes(monkeypatch, transposed, limit)
    assert len(seen) > 3 and max(seen) <= limit


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_limit_above_default_slabs_keeps_them(transposed: bool, monkeypatch) -> None:
    """A generous max_workspace_bytes caps the slabs but does not enlarge them beyond the
    default size (larger slabs fall out of cache and run slower)."""
    x, w, _, kw = _chunk_case(transposed)
    default = int(0.3 * _sample_bytes(x, w, kw, transposed))
    monkeypatch.setitem(
        _plan.POLICIES, "cpu", dataclasses.replace(_plan.CPU, auto_workspace=default)
    )
    _plan.clear_caches()  # plans are derived from the policy
    seen = _intermediate_bytes(monkeypatch, transposed, 1 << 40)
    assert seen == _intermediate_bytes(monkeypatch, transposed, None)
    assert len(seen) > 3 and max(seen) <= default


@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_workspace_smaller_than_one_position_is_rejected(transposed: bool) -> None:
    x, w, b, kw = _chunk_case(transposed)
    fn = conv_transpose if transposed else conv
    with pytest.raises(ValueError, match="max_workspace_bytes"):
        fn(x, w, b, max_workspace_bytes=16, **kw)


def test_chunked_padding_only_slabs() -> None:
    """Slabs of output rows that see only padding (padding larger than the kernel)."""
    gen = torch.Generator().manual_seed(2)
    x, w = (
        torch.randn(1, 2, 3, 2, generator=gen, dtype=F64),
        torch.randn(3, 2, 1, 1, generator=gen, dtype=F64),
    )
    ref = F.conv2d(x, w, padding=(4, 1), stride=(2, 1))
    out = conv(x, w, padding=(4, 1), stride=(2, 1), max_workspace_bytes=64)
    # the 64-byte limit runs "gemm", whose two-term sums equal torch's kernel's only to
    # round-off (FMA or not, by CPU); the padding-only rows and columns exactly 0 (atol=0)
    assert ref[..., :2, :].abs().sum() == 0 and ref[..., 0].abs().sum() == 0
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- other properties


def test_integer_input_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="floating or complex"):
        conv(torch.ones(1, 2, 5, dtype=torch.int64), torch.ones(3, 2, 3, dtype=torch.int64))


def test_complex_conv_matches_torch() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=torch.complex128)
    w = torch.randn(6, 2, 3, 2, generator=gen, dtype=torch.complex128)
    assert_rel(conv(x, w, groups=2, padding=1), F.conv2d(x, w, groups=2, padding=1), 1e-12)


def test_torch_compile_fullgraph() -> None:
    x, w, b, kw = _chunk_case(False)
    compiled = torch.compile(lambda x, w, b: conv(x, w, b, **kw), fullgraph=True, backend="eager")
    assert_rel(compiled(x, w, b), conv(x, w, b, **kw), 1e-14)


def test_vmap_over_conv() -> None:
    gen = torch.Generator().manual_seed(0)
    xs, w = (
        torch.randn(3, 2, 4, 7, generator=gen, dtype=F64),
        torch.randn(5, 4, 3, generator=gen, dtype=F64),
    )
    got = torch.func.vmap(lambda x: conv(x, w, stride=2))(xs)
    assert_rel(got, torch.stack([F.conv1d(x, w, stride=2) for x in xs]), 1e-13)


# --------------------------------------------------------------------------- errors

X2, W2 = torch.ones(2, 4, 6, 6), torch.ones(6, 2, 3, 3)
WT2 = torch.ones(4, 3, 3, 3)
ERRORS = {
    "conv-channels": (lambda: conv(X2, torch.ones(6, 3, 3, 3)), ValueError, "channels"),
    "conv-groups-c_in": (lambda: conv(torch.ones(2, 5, 6, 6), torch.ones(6, 1, 3, 3), groups=2),
                         ValueError, "groups"),
    "conv-groups-c_out": (lambda: conv(X2, torch.ones(5, 2, 3, 3), groups=2), ValueError, "C_out"),
    "conv-groups-zero": (lambda: conv(X2, W2, groups=0), ValueError, "groups"),
    "conv-groups-type": (lambda: conv(X2, W2, groups=2.0), TypeError, "groups"),
    "conv-weight-rank": (lambda: conv(X2, torch.ones(6, 4, 3)), ValueError, "input must have"),
    "conv-weight-rank-tuple": (lambda: conv(X2, torch.ones(6, 4, 3), stride=(1, 1)), ValueError,
                               "weight must have 4 dims"),
    "conv-weight-1d": (lambda: conv(X2, torch.ones(6, 4)), ValueError, "weight"),
    "conv-bias-size": (lambda: conv(X2, W2, torch.ones(5), groups=2), ValueError, "bias"),
    "conv-bias-dtype": (
        lambda: conv(X2, W2, torch.ones(6, dtype=F64), groups=2), TypeError, "bias"
    ),
    "conv-weight-dtype": (lambda: conv(X2, W2.double(), groups=2), TypeError, "weight"),
    "conv-same-stride": (lambda: conv(X2, W2, stride=2, padding="same", groups=2), ValueError,
                         "same"),
    "conv-padding-string": (lambda: conv(X2, W2, padding="full", groups=2), ValueError, "padding"),
    "conv-padding-mode": (lambda: conv(X2, W2, padding=1, padding_mode="mirror", groups=2),
                          ValueError, "padding_mode"),
    "conv-reflect-too-wide": (lambda: conv(X2, W2, padding=6, padding_mode="reflect", groups=2),
                              ValueError, "reflect"),
    "conv-kernel-too-big": (lambda: conv(X2, torch.ones(6, 2, 7, 7), groups=2), ValueError,
                            "kernel_size"),
    "conv-stride-length": (lambda: conv(X2, W2, stride=(1, 1, 1), groups=2), ValueError, "stride"),
    "conv-not-tensor": (lambda: conv([[1.0]], W2), TypeError, "input"),
    "conv-workspace-type": (lambda: conv(X2, W2, groups=2, max_workspace_bytes=1.5), TypeError,
                            "max_workspace_bytes"),
    "convT-channels": (lambda: conv_transpose(X2, torch.ones(3, 3, 3, 3)), ValueError, "channels"),
    "convT-groups": (lambda: conv_transpose(X2, WT2, groups=3), ValueError, "groups"),
    "convT-bias-size": (lambda: conv_transpose(X2, WT2, torch.ones(4)), ValueError, "bias"),
    "convT-weight-rank": (lambda: conv_transpose(X2, torch.ones(4, 3, 3, 3, 3), stride=(1, 1)),
                          ValueError, "weight must have 4 dims"),
    "convT-output-padding": (lambda: conv_transpose(X2, WT2, stride=2, output_padding=2),
                             ValueError, "output_padding"),
    "convT-output-padding-dil": (lambda: conv_transpose(X2, WT2, dilation=2, output_padding=2),
                                 ValueError, "output_padding"),
    "convT-output-size-small": (lambda: conv_transpose(X2, WT2, stride=2, output_size=(12, 12)),
                                ValueError, "output_size"),
    "convT-output-size-large": (lambda: conv_transpose(X2, WT2, stride=2, output_size=(15, 13)),
                                ValueError, "output_size"),
    "convT-output-size-length": (lambda: conv_transpose(X2, WT2, stride=2, output_size=(13,) * 5),
                                 ValueError, "output_size"),
    "convT-output-size-vs-padding": (lambda: conv_transpose(X2, WT2, stride=3, output_padding=1,
                                                            output_size=(18, 18)),
                                     ValueError, "contradicts"),
    "convT-padding-string": (lambda: conv_transpose(X2, WT2, padding="same"), TypeError, "padding"),
    "convT-integer": (lambda: conv_transpose(X2.long(), WT2.long()), TypeError, "floating"),
}  # fmt: skip


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_arguments(name: str) -> None:
    fn, exc, match = ERRORS[name]
    with pytest.raises(exc, match=match):
        fn()


def test_errors_come_before_any_work(monkeypatch) -> None:
    mod = sys.modules["nfold.conv"]

    def boom(*args, **kwargs):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(mod, "_unfold", boom)
    monkeypatch.setattr(mod, "_fold", boom)
    monkeypatch.setattr(mod, "pad", boom)
    for name in ERRORS:
        fn, exc, _ = ERRORS[name]
        with pytest.raises(exc):
            fn()


def test_public_names() -> None:
    for name in ("conv", "conv_transpose"):
        assert name in nfold.__all__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex128], ids=dtype_id)
@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("transposed", [False, True], ids=["conv", "conv_transpose"])
def test_gemm_output_has_torchs_memory_format(transposed, n, dtype):
    """A channels-last input or weight gives a channels-last output, as torch's conv does
    (not for torch's float64 3-d kernel): a model moved to channels_last stays so
    through nfold's layers. Values as before, to round-off."""
    fmt = torch.channels_last if n == 2 else torch.channels_last_3d
    ours = conv_transpose if transposed else conv
    theirs = getattr(F, f"conv_transpose{n}d" if transposed else f"conv{n}d")
    gen = torch.Generator().manual_seed(5)
    x0 = torch.randn(2, 4, *(5,) * n, generator=gen, dtype=dtype)
    w0 = torch.randn(4, 2, *(3,) * n, generator=gen, dtype=dtype)
    for x_cl, w_cl in itertools.product((False, True), repeat=2):
        x = x0.contiguous(memory_format=fmt) if x_cl else x0
        w = w0.contiguous(memory_format=fmt) if w_cl else w0
        for kw in ({}, {"max_workspace_bytes": 16384}):
            got = ours(x, w, padding=1, stride=2, groups=2, method="gemm", **kw)
            want = theirs(x, w, padding=1, stride=2, groups=2)
            assert got.stride() == want.stride(), (x_cl, w_cl, kw)
            torch.testing.assert_close(
                got, want, rtol=1e-12, atol=1e-12
            ) if dtype != torch.float32 else None
    module = nfold.Conv2d(4, 6, 3, padding=1).to(memory_format=torch.channels_last)
    assert module(torch.randn(2, 4, 8, 8)).is_contiguous(memory_format=torch.channels_last)


def test_channels_last_weights_under_vmap_and_batched_grads():
    """functorch's vmap (and legacy vmap) cannot make channels-last tensors: there the
    output keeps the contiguous format, and per-sample gradients of a channels-last model
    work as for a contiguous one."""
    model = nfold.Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last)
    plain = nfold.Conv2d(3, 4, 3, padding=1)
    plain.load_state_dict(model.state_dict())
    params = {k: v.detach() for k, v in model.named_parameters()}
    xs = torch.randn(5, 3, 6, 6, dtype=torch.float32)

    def per_sample(module):
        def loss(p, x):
            return torch.func.functional_call(module, p, (x.unsqueeze(0),)).square().sum()

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, xs)

    for key, value in per_sample(model).items():
        torch.testing.assert_close(value, per_sample(plain)[key])
    x = xs.requires_grad_()
    y = model(x)
    (g,) = torch.autograd.grad(y, x, torch.ones(2, *y.shape), is_grads_batched=True)
    torch.testing.assert_close(g[0], g[1])
