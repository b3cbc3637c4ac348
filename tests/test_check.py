"""nfold.check: the verdict logic, the shipped reference ops, the built-in table (and
that it can fail), check_model and compare."""

from __future__ import annotations

import itertools
import math
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import nfold
from nfold import _check_run, _check_settings, _check_verdicts, check
from nfold import _reference as R
from nfold.check import MISMATCH, ROUND_OFF, tolerance, verdict

EPS32, EPS64, EPS16 = 2.0**-23, 2.0**-52, 2.0**-10
F64 = torch.float64


# ----------------------------------------------------------------------------- verdicts

TOL = tolerance(EPS32, 36)  # a 36-term sum: 16 * eps32 * 6 ~ 1.1e-5

# (abs_low, rel_low, abs_high, rel_high, tol, expected)
VERDICT_CASES = {
    "exact": (0.0, 0.0, 0.0, 0.0, TOL, "exact"),
    "typical-roundoff": (4e-7, 2e-7, 8e-16, 4e-16, TOL, "round-off"),
    "roundoff-at-eps-ratio": (1e-6, 5e-7, 1e-6 * 2**-29, 5e-7 * 2**-29, TOL, "round-off"),
    "roundoff-ratio-spread-100x": (
        1e-6,
        5e-7,
        1e-6 * 2**-29 * 100,
        5e-7 * 2**-29 * 100,
        TOL,
        "round-off",
    ),
    "low-exact-high-tiny": (0.0, 0.0, 2e-16, 1e-16, TOL, "round-off"),
    "low-tiny-high-zero": (3e-8, 1e-8, 0.0, 0.0, TOL, "round-off"),
    "bug-same-size-both": (0.3, 0.1, 0.3, 0.1, TOL, "MISMATCH"),
    "small-bug-same-size-both": (2e-6, 1e-6, 2e-6, 1e-6, TOL, "MISMATCH"),
    "bug-ratio-only-1e-3": (2e-6, 1e-6, 2e-9, 1e-9, TOL, "MISMATCH"),
    "low-precision-loss-tf32-like": (1e-3, 5e-4, 1e-16, 5e-17, TOL, "MISMATCH"),
    "low-exact-high-wrong": (0.0, 0.0, 1e-3, 1e-3, TOL, "MISMATCH"),
    "copy-must-be-exact": (1e-7, 1e-7, 1e-16, 1e-16, tolerance(EPS32, 0), "MISMATCH"),
    "infinite-shape-mismatch": (math.inf, math.inf, math.inf, math.inf, TOL, "MISMATCH"),
    "nan": (math.nan, math.nan, 0.0, 0.0, TOL, "MISMATCH"),
}


@pytest.mark.parametrize("case", VERDICT_CASES.values(), ids=VERDICT_CASES.keys())
def test_verdict_on_synthetic_errors(case: tuple) -> None:
    *errors, tol, expected = case
    assert verdict(*errors, tol, eps_low=EPS32, eps_high=EPS64) == expected


def test_verdict_ratio_threshold_is_1e_minus_6() -> None:
    # f32 error within its bound; the f64 error is above its own bound, so the ratio decides.
    abs_low, rel_low = 1e-6, 5e-7
    rel_high_over_bound = TOL * EPS64 / EPS32 * 10
    just_in = verdict(abs_low, rel_low, 0.9e-6 * abs_low, rel_high_over_bound, TOL)
    just_out = verdict(abs_low, rel_low, 1.1e-6 * abs_low, rel_high_over_bound, TOL)
    assert (just_in, just_out) == (ROUND_OFF, MISMATCH)


def test_verdict_low_precision_bound() -> None:
    assert verdict(1.0, 0.99 * TOL, 0.0, 0.0, TOL) == ROUND_OFF
    assert verdict(1.0, 1.01 * TOL, 0.0, 0.0, TOL) == MISMATCH


def test_verdict_float16_eps_scales_the_float64_bound() -> None:
    tol16 = tolerance(EPS16, 9)
    # f16 agrees exactly; f64 error at f64 round-off level: fine with eps16, not a bug
    assert verdict(0.0, 0.0, 1e-16, 1e-16, tol16, eps_low=EPS16) == ROUND_OFF
    assert verdict(1e-3, 1e-3, 1e-3, 1e-3, tol16, eps_low=EPS16) == MISMATCH


def test_tolerance() -> None:
    assert tolerance(EPS32, 0) == 0.0
    assert tolerance(EPS32, 100) == pytest.approx(16 * EPS32 * 10)
    assert tolerance(EPS32, 1, noise_low=1e-3) == pytest.approx(16e-3)  # reference's own noise


def test_errors_shape_mismatch_and_nan() -> None:
    b = torch.tensor([1.0, -4.0, float("nan")])
    assert _check_verdicts.errors(torch.tensor([1.0, -4.0, float("nan")]), b) == (0.0, 0.0)
    assert _check_verdicts.errors(torch.tensor([1.0, -3.0, float("nan")]), b) == (1.0, 0.25)
    assert _check_verdicts.errors(torch.tensor([1.0, -4.0, 0.0]), b) == (math.inf, math.inf)
    assert _check_verdicts.errors(torch.zeros(2), b) == (math.inf, math.inf)
    assert _check_verdicts.errors(None, b) == (math.inf, math.inf)


# ----------------------------------------------------------------------------- references


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
@pytest.mark.parametrize("n", [1, 2, 3])
def test_reference_pad_matches_torch(n: int, mode: str) -> None:
    x = _rand(2, 2, *range(4, 4 + n))
    pads = tuple((i % 3, (i + 2) % 3) for i in range(n))
    flat = [v for pair in reversed(pads) for v in pair]
    torch.testing.assert_close(R.pad(x, pads, mode), F.pad(x, flat, mode=mode), rtol=0, atol=0)


CONV_CASES = {
    "plain": dict(),
    "s2-d2-p1-g2": dict(stride=2, dilation=2, padding=1, groups=2),
    "same-even": dict(padding="same", dilation=2),
    "valid": dict(padding="valid"),
    "pairs": dict(padding="pairs"),
    "reflect": dict(padding=1, padding_mode="reflect"),
    "circular-s2": dict(padding=2, stride=2, padding_mode="circular"),
}


def _torch_conv(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, n: int, kw: dict
) -> torch.Tensor:
    kw = dict(kw)
    mode = kw.pop("padding_mode", "zeros")
    padding = kw.pop("padding", 0)
    conv = getattr(F, f"conv{n}d")
    if mode == "zeros" and not isinstance(padding, tuple):
        return conv(x, w, b, padding=padding, **kw)
    pads = R.pairs(padding, w.shape[2:], (kw.get("dilation", 1),) * n)
    flat = [v for pair in reversed(pads) for v in pair]
    return conv(F.pad(x, flat, mode="constant" if mode == "zeros" else mode), w, b, **kw)


@pytest.mark.parametrize("name", CONV_CASES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_reference_conv_matches_torch(n: int, name: str) -> None:
    kw = dict(CONV_CASES[name])
    if kw.get("padding") == "pairs":
        kw["padding"] = tuple((i % 2, 1 + i % 2) for i in range(n))
    groups = kw.get("groups", 1)
    x, w, b = (
        _rand(2, 4, *(6,) * n),
        _rand(6, 4 // groups, *(2, 3, 2)[:n], seed=1),
        _rand(6, seed=2),
    )
    torch.testing.assert_close(R.conv(x, w, b, **kw), _torch_conv(x, w, b, n, kw))


TRANSPOSE_CASES = {
    "plain": dict(),
    "s2-p1-op1-g2": dict(stride=2, padding=1, output_padding=1, groups=2),
    "s3-d2-op2": dict(stride=3, dilation=2, output_padding=2),
}


@pytest.mark.parametrize("name", TRANSPOSE_CASES)
@pytest.mark.parametrize("n", [1, 2, 3])
def test_reference_conv_transpose_and_unfold_transpose_match_torch(n: int, name: str) -> None:
    kw = TRANSPOSE_CASES[name]
    groups = kw.get("groups", 1)
    x, w, b = (
        _rand(2, 4, *(4,) * n),
        _rand(4, 6 // groups, *(3, 2, 3)[:n], seed=1),
        _rand(6, seed=2),
    )
    expected = getattr(F, f"conv_transpose{n}d")(x, w, b, **kw)
    torch.testing.assert_close(R.conv_transpose(x, w, b, **kw), expected)
    if groups == 1:
        geometry = {k: v for k, v in kw.items() if k != "groups"}
        cols = R.unfold_transpose(x, w.shape[2:], **geometry)
        out = (w.transpose(0, 1).flatten(1) @ cols).reshape(expected.shape) + b.view(-1, *(1,) * n)
        torch.testing.assert_close(out, expected)


def test_reference_conv_transpose_output_size() -> None:
    x, w = _rand(1, 2, 4, 4), _rand(2, 3, 3, 3, seed=1)
    out = R.conv_transpose(x, w, stride=2, padding=1, output_size=(8, 8))
    torch.testing.assert_close(out, F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1))


def test_reference_unfold_and_fold_match_torch() -> None:
    x = _rand(2, 3, 7, 8)
    geo = dict(kernel_size=(2, 3), dilation=(1, 2), padding=(1, 0), stride=(2, 1))
    cols = R.unfold(x, **geo)
    torch.testing.assert_close(cols, F.unfold(x, **geo), rtol=0, atol=0)
    y = _rand(*cols.shape, seed=1)
    torch.testing.assert_close(R.fold(y, (7, 8), **geo), F.fold(y, (7, 8), **geo))


def test_reference_conv4d_is_a_sum_of_conv3d() -> None:
    # torch has no conv4d: slice the first kernel dim into conv3d calls
    x, w, b = _rand(2, 4, 5, 4, 5, 4), _rand(6, 2, 2, 3, 2, 2, seed=1), _rand(6, seed=2)
    s, d = (1, 2, 1, 1), (2, 1, 1, 1)
    out = R.conv(x, w, b, stride=s, dilation=d, groups=2)
    length = (5 - d[0] * (2 - 1) - 1) // s[0] + 1
    expected = torch.stack(
        [
            sum(
                F.conv3d(x[:, :, t + j * d[0]], w[:, :, j], stride=s[1:], dilation=d[1:], groups=2)
                for j in range(2)
            )
            for t in range(length)
        ],
        dim=2,
    ) + b.view(-1, 1, 1, 1, 1)
    torch.testing.assert_close(out, expected)


def test_reference_conv_transpose_is_the_adjoint_of_conv_for_n4() -> None:
    # <conv(x, W), z> == <x, conv_transpose(z, W)>: the same weight tensor serves both
    x, w = _rand(1, 3, 5, 4, 4, 5), _rand(2, 3, 2, 3, 1, 2, seed=1)
    kw = dict(stride=(2, 1, 1, 2), padding=(1, 0, 0, 1), dilation=(1, 1, 1, 2))
    y = R.conv(x, w, **kw)
    z = _rand(*y.shape, seed=2)
    xt = R.conv_transpose(z, w, output_size=x.shape[2:], **kw)
    torch.testing.assert_close((y * z).sum(), (x * xt).sum())


# ----------------------------------------------------------------------------- settings


def test_settings_cover_every_op_n_and_padding_form() -> None:
    s = check.SETTINGS
    assert {(x.op, x.n) for x in s} >= set(itertools.product(check.OPS, (1, 2, 3, 4)))
    auto = {(x.op, x.n) for x in s if x.method == "auto"}
    assert auto == set(itertools.product(("conv", "conv_transpose"), (4, 5)))
    conv = [x for x in s if x.op == "conv"]
    for n in (1, 2, 3, 4):
        modes = {x.kwargs.get("padding_mode", "zeros") for x in conv if x.n == n}
        assert modes == {"zeros", "reflect", "replicate", "circular"}, n
        paddings = [x.kwargs.get("padding", 0) for x in conv if x.n == n]
        assert "same" in paddings and "valid" in paddings
        assert any(_check_run._is_pairs(p) for p in paddings)
        assert any(
            x.shapes[1][1] == 1 and x.kwargs.get("groups", 1) > 1 for x in conv if x.n == n
        )  # depthwise
    assert any(x.kwargs.get("reduction") == "mean" for x in s if x.op == "fold")
    assert any("output_size" in x.kwargs for x in s if x.op == "conv_transpose")
    assert len({x.id for x in s}) == len(s)


def _expected_reference(x: check.Setting) -> str:
    if x.method == "auto":
        return "nfold-gemm"
    if x.op in ("conv", "conv_transpose") and x.n <= 3:
        return f"F.{x.op}{x.n}d"
    if x.op == "unfold" and x.n == 2:
        return "F.unfold"
    if x.op == "fold" and x.n == 2 and not _check_run._is_pairs(x.kwargs.get("padding", 0)):
        return "F.fold"
    return "naive"


def test_torch_is_the_reference_where_it_has_the_op() -> None:
    got = {x.id: _check_run.reference_op(x)[1] for x in check.SETTINGS}
    assert got == {x.id: _expected_reference(x) for x in check.SETTINGS}


def _failed(report: check.Report) -> set[tuple[str, str]]:
    return {(r.setting, r.quantity) for r in report.rows if r.failed}


def test_data_movement_is_exact() -> None:
    # the whole table runs in test_cli (in-process and as `python -m nfold check`)
    moves = [s for s in check.SETTINGS if s.op in ("unfold", "fold", "unfold_transpose")]
    report = check.check_builtin(settings=moves)
    bad = [f"{r.setting} {r.quantity} {r.verdict} {r.note}" for r in report.rows if r.failed]
    assert not bad, bad
    copies = [r for r in report.rows if r.reduction_length == 0]
    assert len(copies) == len(moves) and all(r.verdict == "exact" for r in copies)


def test_reduced_precision_inside_nfold_is_a_mismatch(monkeypatch: pytest.MonkeyPatch) -> None:
    # float32 in, bfloat16 arithmetic: the float64 run is untouched, so only the
    # low-precision bound can catch this (the ratio test alone would not).
    real = nfold.conv

    def bf16_conv(x, w, b=None, **kw):  # type: ignore[no-untyped-def]
        if x.dtype != torch.float32:
            return real(x, w, b, **kw)
        return real(x.bfloat16(), w.bfloat16(), None if b is None else b.bfloat16(), **kw).float()

    monkeypatch.setattr(nfold, "conv", bf16_conv)
    report = check.check_builtin(only="conv2d-k3x3-p1-reflect")
    assert {r.quantity for r in report.rows if r.verdict == MISMATCH} >= {
        "forward",
        "grad_input",
        "grad_weight",
    }


# ----------------------------------------------------------------------------- check_model


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=2, padding_mode="reflect"),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 3, stride=2, padding=1, output_padding=1),
        nn.Conv2d(4, 2, 1, bias=False),
    )


def _x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def test_check_model_all_layers_agree() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    report = nfold.check_model(net, _x())
    assert report.ok and report.first_mismatch is None, report.format()
    assert {r.verdict for r in report.rows} <= {"exact", "round-off"}
    assert {r.setting for r in report.rows} == {"0", "2", "5", "6", "(model)"}
    assert {r.quantity for r in report.rows if r.setting == "6"} == {
        "output",
        "grad_input",
        "grad_weight",
    }
    # the user's model is untouched: same classes, weights, no gradients
    assert type(net[0]) is nn.Conv2d and all(p.grad is None for p in net.parameters())
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def _tamper_convert(monkeypatch: pytest.MonkeyPatch, tamper) -> None:  # type: ignore[no-untyped-def]
    real = nfold.convert

    def convert(model, inplace=False):  # type: ignore[no-untyped-def]
        twin = real(model, inplace=inplace)
        tamper(twin)
        return twin

    monkeypatch.setattr(nfold, "convert", convert)


def test_check_model_names_the_layer_with_a_wrong_weight(monkeypatch: pytest.MonkeyPatch) -> None:
    def tamper(twin: nn.Module) -> None:
        with torch.no_grad():
            twin[2].weight[0, 0, 0, 0] += 1e-3

    _tamper_convert(monkeypatch, tamper)
    report = nfold.check_model(_net(), _x())
    assert not report.ok
    assert report.first_mismatch == "2 (output)"
    rows = {(r.setting, r.quantity): r.verdict for r in report.rows}
    assert rows["0", "output"] != MISMATCH and rows["2", "output"] == MISMATCH
    assert "first layer that disagrees: 2 (output)" in report.format()


class _ScaleGrad(torch.autograd.Function):
    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):  # type: ignore[no-untyped-def]
        pass

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        return grad * 1.01


def test_check_model_names_the_layer_with_a_wrong_backward(monkeypatch: pytest.MonkeyPatch) -> None:
    def tamper(twin: nn.Module) -> None:
        forward = twin[5].forward
        twin[5].forward = lambda x, output_size=None: forward(_ScaleGrad.apply(x), output_size)

    _tamper_convert(monkeypatch, tamper)
    report = nfold.check_model(_net(), _x())
    assert report.first_mismatch == "5 (gradients)"
    verdicts = {(r.setting, r.quantity): r.verdict for r in report.rows}
    assert all(verdicts[name, "output"] != MISMATCH for name in ("0", "2", "5", "6"))
    assert verdicts["5", "grad_input"] == MISMATCH and verdicts["6", "grad_input"] != MISMATCH


def test_check_model_layer_called_twice_and_conv1d_conv3d() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv1d(2, 2, 3, padding=1)
            self.b = nn.Conv3d(1, 1, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(self.a(x))
            return self.b(y.reshape(1, 1, 2, 2, -1))

    report = nfold.check_model(Net(), torch.randn(1, 2, 6))
    assert report.ok, report.format()
    assert [r.setting for r in report.rows if r.quantity == "output"] == [
        "a",
        "a#2",
        "b",
        "(model)",
    ]


def test_check_model_reports_a_twin_that_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def tamper(twin: nn.Module) -> None:
        twin[0].forward = lambda x: (_ for _ in ()).throw(RuntimeError("boom"))

    _tamper_convert(monkeypatch, tamper)
    report = nfold.check_model(_net(), _x())
    assert not report.ok and report.rows[0].verdict == "ERROR" and "boom" in report.rows[0].note


def test_check_model_rejects_a_model_that_fails_on_its_input() -> None:
    with pytest.raises(check.ModelError, match="torch model failed"):
        nfold.check_model(_net(), torch.randn(2, 5, 8, 8))


def test_report_json_round_trip() -> None:
    import json

    data = json.loads(nfold.check_model(_net(), _x()).to_json())
    assert data["ok"] is True and data["thresholds"] == {"ratio": 1e-6, "tol_factor": 16.0}
    assert {"setting", "quantity", "abs_low", "rel_high", "verdict"} <= set(data["rows"][0])


# ----------------------------------------------------------------------------- no verdict
# without a comparison (issue 11 §2)


class _OwnForward(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # computes through torch
        return super().forward(x)


class _PlainSubclass(nn.Conv2d):
    pass


def test_check_model_gives_no_verdict_to_layers_nfold_did_not_run() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(_OwnForward(3, 4, 3), _PlainSubclass(4, 4, 1), nfold.Conv2d(4, 2, 1))
    report = nfold.check_model(net, _x())
    rows = {(r.setting, r.quantity): r for r in report.rows}
    assert report.ok, report.format()
    assert [(r.setting, r.verdict) for r in report.rows if r.setting in ("0", "2")] == [
        ("0", "not compared"),
        ("2", "not compared"),
    ]
    assert "_OwnForward overrides forward" in rows["0", "-"].note
    assert "already an nfold layer" in rows["2", "-"].note
    # a subclass that keeps torch's forward is converted as its base, so it is compared
    assert {q for s, q in rows if s == "1"} == {"output", "grad_input", "grad_weight", "grad_bias"}
    assert "2 not compared" in report.format()


@pytest.mark.parametrize(
    "model",
    [nn.Sequential(nn.Linear(3, 2), nn.ReLU()), nn.Sequential(nfold.Conv1d(3, 2, 1))],
    ids=["no-conv", "only-nfold-layers"],
)
def test_check_model_that_compares_nothing_is_not_ok(model: nn.Module) -> None:
    report = nfold.check_model(model, torch.randn(2, 3, 3))
    assert not report.ok and not report.compared
    assert not [r for r in report.rows if r.verdict != "not compared"]
    assert "nothing was compared" in report.format()


@pytest.mark.parametrize("dtype", [torch.float64, torch.int32, "float64"])
def test_one_dtype_rule_for_check_model_compare_and_check_builtin(dtype: object) -> None:
    message = "dtype must be one of float32, float16, bfloat16 (the low precision compared"
    net = nn.Conv1d(1, 1, 1)
    x = torch.randn(1, 1, 3)
    with pytest.raises(ValueError, match=re.escape(message)):
        nfold.check_model(net, x, dtype=dtype)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        nfold.compare(net, net, x, dtype=dtype)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=re.escape(message)):
        check.check_builtin(dtype=dtype, only="unfold1d-k3")  # type: ignore[arg-type]


def test_near_zero_reference_rows_are_marked_and_explained() -> None:
    # a conv bias followed by BatchNorm: its gradient is zero up to round-off
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))
    report = nfold.check_model(net, _x())
    marked = {(r.setting, r.quantity) for r in report.rows if r.near_zero}
    assert marked == {("0", "grad_bias")}, report.format()
    row = next(r for r in report.rows if r.near_zero)
    assert row.rel_low > 1e-2 and row.verdict == "round-off"
    table = report.format()
    line = next(
        line for line in table.splitlines() if line.startswith("0 ") and "grad_bias" in line
    )
    assert " ~0 " in line and _check_verdicts.NEAR_ZERO_LEGEND in table


def test_near_zero_mark_needs_a_reference_that_lost_half_its_digits() -> None:
    row = _check_verdicts.Row("s", "q", "r", reduction_length=9)
    ref = torch.tensor([1.0, -1.0], dtype=F64)
    noisy = (ref + torch.tensor([1e-3, 0.0], dtype=F64)).float()  # rel 1e-3 > sqrt(eps32)
    _check_verdicts.judge(row, (noisy, ref), (noisy, ref), EPS32)
    assert row.near_zero
    clean = ref.float()
    _check_verdicts.judge(row, (clean, ref), (clean, ref), EPS32)
    assert not row.near_zero
    # a long sum in bfloat16 loses digits without cancelling: not marked
    row = _check_verdicts.Row("s", "q", "r", reduction_length=10_000)
    eps16 = 2.0**-7
    noisy = (ref * (1 + 8 * eps16)).bfloat16()  # 8 eps < 16 eps sqrt(K), > sqrt(eps)
    _check_verdicts.judge(row, (noisy, ref), (noisy, ref), eps16)
    assert not row.near_zero and row.tolerance > row.rel_low


def test_readme_and_help_state_the_rule_that_verdict_applies() -> None:
    from pathlib import Path

    readme = Path(__file__).parents[1] / "README.md"
    flat = " ".join(readme.read_text().split())
    assert " ".join(check.RULE.split()) in flat
    assert flat.count("round-off rel_low <= tol") == 1  # stated once
    assert f"tol = {check.TOL_FACTOR:g} * max(" in check.RULE and check.RATIO == 1e-6
    # the clause the README used to leave out: a float64 error within the bound counts
    tol = tolerance(EPS32, 9)
    assert verdict(1e-7, 1e-7, 1e-16, 1e-16, tol) == ROUND_OFF  # ratio 1e-9 <= 1e-6
    assert verdict(1e-7, 1e-7, 5e-14, 1e-16, tol) == ROUND_OFF  # ratio 5e-7: rel_high in bound


# ----------------------------------------------------------------------------- method


def test_conv_rows_run_gemm_and_auto_rows_run_against_gemm(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Built-in conv rows run nfold's own arithmetic ("gemm") against torch or the naive
    reference; "auto" rows (issue 13) run the auto engine against "gemm"."""
    seen = []
    real = nfold.conv

    def conv(x, w, b=None, *, method="auto", **kw):  # type: ignore[no-untyped-def]
        seen.append(method)
        return real(x, w, b, method=method, **kw)

    monkeypatch.setattr(nfold, "conv", conv)
    settings = [
        _check_settings._conv((1, 2, *(3,) * n), 3, (2,) * n, method=m)
        for n in (2, 5)
        for m in ("auto", "gemm")
    ]
    assert [s.id for s in settings] == [
        "conv2d-k2x2-auto",
        "conv2d-k2x2",
        "conv5d-k2x2x2x2x2-auto",
        "conv5d-k2x2x2x2x2",
    ]
    report = check.check_builtin(settings=settings)
    refs = {r.setting: r.reference for r in report.rows}
    assert report.ok and refs == {
        "conv2d-k2x2-auto": "nfold-gemm",
        "conv2d-k2x2": "F.conv2d",
        "conv5d-k2x2x2x2x2-auto": "nfold-gemm",
        "conv5d-k2x2x2x2x2": "naive",
    }
    # auto rows call auto (nfold) and gemm (reference); gemm rows call gemm only
    assert seen.count("auto") == 2 * 2 and set(seen) == {"auto", "gemm"}


# ----------------------------------------------------------------------------- compare


def _unfold_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    cols = F.unfold(x, w.shape[2:])
    size = [s - k + 1 for s, k in zip(x.shape[2:], w.shape[2:], strict=True)]
    return (w.flatten(1) @ cols).reshape(x.shape[0], w.shape[0], *size)


def test_compare_a_correct_rewrite_and_a_wrong_one() -> None:
    x, w = torch.randn(2, 3, 7, 6), torch.randn(5, 3, 3, 2)
    report = nfold.compare(_unfold_conv, F.conv2d, x, w)
    assert report.ok, report.format()
    assert [r.quantity for r in report.rows] == ["output", "grad_input[0]", "grad_input[1]"]
    assert {r.verdict for r in report.rows} == {"round-off"}

    def flipped(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _unfold_conv(x, w.flip(-1))

    bad = nfold.compare(flipped, F.conv2d, x, w)
    assert not bad.ok and {r.verdict for r in bad.rows} == {MISMATCH}
    assert "MISMATCH" in str(bad) and bad.title.startswith("nfold.compare: flipped against conv2d")


def test_compare_error_says_captured_tensors_are_not_converted() -> None:
    x, w = torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3)
    with pytest.raises(ValueError, match="pass tensors a function captures as inputs"):
        nfold.compare(lambda x: _unfold_conv(x, w), lambda x: F.conv2d(x, w), x)


def test_compare_low_precision_arithmetic_is_a_mismatch() -> None:
    def bf16_conv(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if x.dtype == F64:
            return F.conv2d(x, w)
        return F.conv2d(x.bfloat16(), w.bfloat16()).to(x.dtype)

    report = nfold.compare(bf16_conv, F.conv2d, torch.randn(2, 3, 6, 6), torch.randn(4, 3, 3, 3))
    assert {r.verdict for r in report.rows} == {MISMATCH}


def test_compare_modules_pairs_their_parameters() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 6, 6)
    report = nfold.compare(nfold.convert(conv), conv, x)
    assert report.ok, report.format()
    assert [r.quantity for r in report.rows] == ["output", "grad_input", "grad_weight", "grad_bias"]

    class ScaledBiasGrad(nn.Module):  # a wrong backward for the bias only
        def __init__(self) -> None:
            super().__init__()
            self.weight, self.bias = conv.weight, conv.bias  # the same Parameters

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.conv2d(x, self.weight, _ScaleGrad.apply(self.bias))

    report = nfold.compare(ScaledBiasGrad(), conv, x)
    verdicts = {r.quantity: r.verdict for r in report.rows}
    assert verdicts["grad_bias"] == MISMATCH and verdicts["output"] != MISMATCH
    assert verdicts["grad_weight"] != MISMATCH and not report.ok


def test_compare_reports_what_it_cannot_pair_and_what_raises() -> None:
    import copy

    class Wrapper(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    lin = nn.Linear(3, 3)
    x = torch.randn(1, 2, 3)
    shared = nfold.compare(lin, Wrapper(lin), x)  # the same Parameters: paired
    assert shared.ok and [r.quantity for r in shared.rows][-2:] == ["grad_weight", "grad_bias"]
    apart = nfold.compare(lin, Wrapper(copy.deepcopy(lin)), x)  # other names, other objects
    verdicts = {r.quantity: r.verdict for r in apart.rows}
    assert apart.ok and verdicts["grad_weight"] == verdicts["grad_inner.bias"] == "not compared"
    assert "only fn has parameter 'bias'" in str(apart)
    assert "only reference has parameter 'inner.weight'" in str(apart)

    conv = nn.Conv1d(2, 2, 3, bias=False)

    def boom(x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom")

    raised = nfold.compare(boom, conv, x)
    assert not raised.ok and raised.rows[0].verdict == "ERROR" and "boom" in raised.rows[0].note
    with pytest.raises(check.ModelError, match="reference boom failed"):
        nfold.compare(conv, boom, x)
    with pytest.raises(TypeError, match="reference must be callable"):
        nfold.compare(conv, 3, x)  # type: ignore[arg-type]


def test_compare_is_seeded_and_rounds_both_runs_to_the_same_numbers() -> None:
    x64 = torch.randn(2, 3, 6, 6, dtype=F64)  # not representable in float32
    w = torch.randn(4, 3, 3, 3)
    a = nfold.compare(_unfold_conv, F.conv2d, x64, w, seed=3)
    b = nfold.compare(_unfold_conv, F.conv2d, x64.float(), w, seed=3)
    assert a.ok and [r.abs_high for r in a.rows] == [r.abs_high for r in b.rows]
    assert [r.abs_low for r in a.rows] == [r.abs_low for r in b.rows]
