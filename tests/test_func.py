"""torch.func: grad, vmap (over a leading batch of inputs and of weights), jvp
(forward-mode AD), jacfwd/jacrev/hessian and functional_call on the modules.

References are torch's own ops (N = 2 unfold/fold, conv{1,2,3}d) or the same nfold op
run eagerly per sample; everything in float64 so that round-off stays ~1e-15.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, stack_module_state, vmap

import nfold


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64)


# name -> (nfold op, torch op computing the same, input shape). Each op maps one tensor.
OPS: dict[str, tuple[Callable, Callable, tuple[int, ...]]] = {
    "unfold": (
        lambda x: nfold.unfold(x, (2, 3), dilation=(2, 1), padding=1, stride=(1, 2)),
        lambda x: F.unfold(x, (2, 3), dilation=(2, 1), padding=1, stride=(1, 2)),
        (2, 3, 6, 7),
    ),
    "fold": (
        lambda y: nfold.fold(y, (5, 6), (2, 3), padding=1, stride=2),
        lambda y: F.fold(y, (5, 6), (2, 3), padding=1, stride=2),
        (2, 3 * 6, 3 * 3),
    ),
    "unfold_transpose": (
        # conv_transpose(x, W) == W^T @ unfold_transpose(x): check via a one-hot weight.
        lambda z: nfold.unfold_transpose(z, 3, stride=2, padding=1),
        lambda z: F.conv_transpose2d(
            z,
            torch.eye(2 * 9, dtype=z.dtype).view(18, 2, 3, 3).transpose(0, 1),
            stride=2,
            padding=1,
        ).flatten(2),
        (2, 2, 3, 4),
    ),
    "conv": (
        lambda x: nfold.conv(x, _WEIGHT_CONV, stride=2, padding=1, groups=2),
        lambda x: F.conv3d(x, _WEIGHT_CONV, stride=2, padding=1, groups=2),
        (2, 4, 4, 5, 3),
    ),
    "conv_transpose": (
        lambda x: nfold.conv_transpose(x, _WEIGHT_CONVT, stride=2, output_padding=1, groups=2),
        lambda x: F.conv_transpose1d(x, _WEIGHT_CONVT, stride=2, output_padding=1, groups=2),
        (2, 4, 5),
    ),
}
_gen = torch.Generator().manual_seed(1)
_WEIGHT_CONV = torch.randn(6, 2, 2, 3, 2, dtype=torch.float64, generator=_gen)
_WEIGHT_CONVT = torch.randn(4, 3, 3, dtype=torch.float64, generator=_gen)


@pytest.mark.parametrize("op", list(OPS))
def test_grad_matches_torch(op: str) -> None:
    ours, theirs, shape = OPS[op]
    x = _randn(*shape)
    torch.testing.assert_close(
        grad(lambda t: (ours(t) ** 2).sum())(x), grad(lambda t: (theirs(t) ** 2).sum())(x)
    )


@pytest.mark.parametrize("op", list(OPS))
def test_vmap_over_leading_batch_of_inputs(op: str) -> None:
    ours, _, shape = OPS[op]
    xs = _randn(3, *shape)
    torch.testing.assert_close(vmap(ours)(xs), torch.stack([ours(x) for x in xs]), rtol=0, atol=0)


@pytest.mark.parametrize("op", list(OPS))
def test_vmap_over_unbatched_samples_with_in_dims(op: str) -> None:
    """vmap over the batch dim itself (per-sample, unbatched op), batch dim not leading."""
    ours, _, shape = OPS[op]
    x = _randn(*shape)
    per_sample = vmap(lambda s: ours(s.unsqueeze(0)).squeeze(0), in_dims=0)(x)
    torch.testing.assert_close(per_sample, ours(x))
    moved = vmap(lambda s: ours(s.unsqueeze(0)).squeeze(0), in_dims=-1, out_dims=0)
    torch.testing.assert_close(moved(x.movedim(0, -1)), ours(x))


@pytest.mark.parametrize("op", list(OPS))
def test_jvp_matches_torch(op: str) -> None:
    ours, theirs, shape = OPS[op]
    x, tangent = _randn(*shape), _randn(*shape)
    out, jvp_out = jvp(ours, (x,), (tangent,))
    torch.testing.assert_close(out, theirs(x))
    torch.testing.assert_close(jvp_out, jvp(theirs, (x,), (tangent,))[1])


@pytest.mark.parametrize("op", list(OPS))
def test_jacfwd_equals_jacrev(op: str) -> None:
    """Forward- and reverse-mode Jacobians of a small sample agree (and are linear maps)."""
    ours, _, shape = OPS[op]
    x = _randn(1, *shape[1:])
    torch.testing.assert_close(jacfwd(ours)(x), jacrev(ours)(x))


def test_vmap_over_weights_conv() -> None:
    x = _randn(2, 4, 5, 6)
    weights = _randn(3, 6, 2, 3, 2)
    got = vmap(lambda w: nfold.conv(x, w, padding="same", groups=2))(weights)
    want = torch.stack([F.conv2d(x, w, padding="same", groups=2) for w in weights])
    torch.testing.assert_close(got, want)


def test_vmap_over_weights_conv_transpose() -> None:
    x = _randn(2, 4, 3, 5)
    weights = _randn(3, 4, 2, 3, 2)
    got = vmap(lambda w: nfold.conv_transpose(x, w, stride=(2, 1), groups=2))(weights)
    want = torch.stack([F.conv_transpose2d(x, w, stride=(2, 1), groups=2) for w in weights])
    torch.testing.assert_close(got, want)


def test_vmap_over_inputs_and_weights_together() -> None:
    """Per-example weights (e.g. hypernetworks): both operands batched."""
    xs, ws, bs = _randn(3, 2, 2, 7), _randn(3, 4, 2, 3), _randn(3, 4)
    got = vmap(lambda x, w, b: nfold.conv(x, w, b, dilation=2))(xs, ws, bs)
    want = torch.stack([F.conv1d(x, w, b, dilation=2) for x, w, b in zip(xs, ws, bs, strict=True)])
    torch.testing.assert_close(got, want)


def test_per_sample_gradients_with_vmap_of_grad() -> None:
    """The classic torch.func recipe: vmap(grad(loss)) over samples, w.r.t. the weight."""
    xs, w = _randn(4, 2, 6, 5), _randn(3, 2, 3, 3)

    def loss(fn: Callable, w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return fn(x.unsqueeze(0), w, stride=2, padding=1).tanh().sum()

    got = vmap(grad(lambda w, x: loss(nfold.conv, w, x)), in_dims=(None, 0))(w, xs)
    want = vmap(grad(lambda w, x: loss(F.conv2d, w, x)), in_dims=(None, 0))(w, xs)
    torch.testing.assert_close(got, want)


def test_jvp_of_conv_in_input_and_weight() -> None:
    x, w, b = _randn(2, 3, 5, 4, 3), _randn(4, 3, 2, 2, 2), _randn(4)
    primals = (x, w, b)
    tangents = tuple(torch.randn_like(p) for p in primals)
    got = jvp(lambda x, w, b: nfold.conv(x, w, b, stride=(2, 1, 1)), primals, tangents)
    want = jvp(lambda x, w, b: F.conv3d(x, w, b, stride=(2, 1, 1)), primals, tangents)
    torch.testing.assert_close(got, want)


def test_hessian_forward_over_reverse_matches_torch() -> None:
    x, w = _randn(1, 2, 4, 4), _randn(2, 2, 2, 2)

    def energy(fn: Callable, w: torch.Tensor) -> torch.Tensor:
        return fn(x, w, padding=1).sin().sum()

    torch.testing.assert_close(
        hessian(lambda w: energy(nfold.conv, w))(w), hessian(lambda w: energy(F.conv2d, w))(w)
    )


# name -> (nfold module, torch module of the same geometry or None, input shape)
MODULES: dict[str, tuple[Callable[[], torch.nn.Module], Callable[[], torch.nn.Module], tuple]] = {
    "Conv1d": (
        lambda: nfold.Conv1d(2, 4, 3, padding=1, groups=2),
        lambda: torch.nn.Conv1d(2, 4, 3, padding=1, groups=2),
        (2, 2, 7),
    ),
    "Conv2d": (
        lambda: nfold.Conv2d(2, 3, (2, 3), stride=2, padding_mode="circular", padding=1),
        lambda: torch.nn.Conv2d(2, 3, (2, 3), stride=2, padding_mode="circular", padding=1),
        (2, 2, 5, 6),
    ),
    "Conv3d": (
        lambda: nfold.ConvNd(2, 3, (2, 2, 2), dilation=(1, 2, 1)),
        lambda: torch.nn.Conv3d(2, 3, (2, 2, 2), dilation=(1, 2, 1)),
        (2, 2, 4, 5, 3),
    ),
    "ConvTranspose2d": (
        lambda: nfold.ConvTranspose2d(4, 2, 3, stride=2, groups=2),
        lambda: torch.nn.ConvTranspose2d(4, 2, 3, stride=2, groups=2),
        (2, 4, 3, 4),
    ),
    "ConvTranspose3d": (
        lambda: nfold.ConvTransposeNd(2, 3, (2, 1, 2), stride=(1, 2, 1), bias=False),
        lambda: torch.nn.ConvTranspose3d(2, 3, (2, 1, 2), stride=(1, 2, 1), bias=False),
        (2, 2, 3, 2, 3),
    ),
}


@pytest.mark.parametrize("name", list(MODULES))
def test_functional_call_matches_torch_module(name: str) -> None:
    """functional_call with explicit parameters == the torch layer with those parameters,
    and grad w.r.t. the parameter dict (the torch.func training recipe) matches too."""
    make_ours, make_theirs, shape = MODULES[name]
    ours, theirs = make_ours().double(), make_theirs().double()
    params = {k: torch.randn_like(v) for k, v in theirs.named_parameters()}
    assert params.keys() == dict(ours.named_parameters()).keys()
    x = _randn(*shape)

    torch.testing.assert_close(
        functional_call(ours, params, (x,)), functional_call(theirs, params, (x,))
    )

    def loss(module: torch.nn.Module, p: dict[str, torch.Tensor]) -> torch.Tensor:
        return (functional_call(module, p, (x,)) ** 2).mean()

    torch.testing.assert_close(
        grad(lambda p: loss(ours, p))(params), grad(lambda p: loss(theirs, p))(params)
    )


def test_model_ensembling_vmap_over_stacked_module_states() -> None:
    """stack_module_state + vmap(functional_call): an ensemble of nfold models in one call."""
    torch.manual_seed(0)
    models = [
        torch.nn.Sequential(
            nfold.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(), nfold.Conv2d(3, 1, 1)
        ).double()
        for _ in range(3)
    ]
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = models[0]
    x = _randn(2, 2, 5, 5)
    got = vmap(lambda p, b: functional_call(base, (p, b), (x,)), in_dims=(0, 0))(params, buffers)
    torch.testing.assert_close(got, torch.stack([m(x) for m in models]))


def test_functional_call_on_data_movement_modules() -> None:
    """Modules without parameters still work under functional_call and vmap."""
    unfold, fold = nfold.Unfold(2, stride=2), nfold.Fold((4, 6), 2, stride=2)
    xs = _randn(3, 2, 2, 4, 6)
    cols = vmap(lambda x: functional_call(unfold, {}, (x,)))(xs)
    torch.testing.assert_close(vmap(lambda c: functional_call(fold, {}, (c,)))(cols), xs)


# --------------------------------------------------------------------------- legacy vmap
# torch.autograd.grad(..., is_grads_batched=True) and torch.autograd.functional's
# jacobian / hessian(vectorize=True) run backward under torch's older vmap, which has no
# custom-Function vmap rules and refuses in-place writes of batched values.

_W4 = torch.randn(4, 1, 2, 3, 1, 2, dtype=torch.float64, generator=_gen)
_W4T = torch.randn(2, 3, 2, 1, 2, 2, dtype=torch.float64, generator=_gen)
LEGACY: dict[str, tuple[Callable, tuple[int, ...]]] = {
    **{name: (op, shape) for name, (op, _, shape) in OPS.items()},
    "unfold 3-d": (
        lambda x: nfold.unfold(x, 2, padding=(1, 0, 1), stride=(2, 1, 1)),
        (2, 2, 4, 3, 3),
    ),
    "fold 1-d": (lambda y: nfold.fold(y, (7,), (3,), dilation=2, padding=2), (2, 2 * 3, 7)),
    "conv 2-d gemm asymmetric": (
        lambda x: nfold.conv(x, _WEIGHT_CONV[:, :, 0], padding="same", method="gemm"),
        (2, 2, 5, 6),
    ),
    "conv 2-d gemm small": (
        lambda x: nfold.conv(x, _WEIGHT_CONV[:, :, 0], padding=1, method="gemm"),
        (1, 2, 4, 4),
    ),
    "conv 4-d auto": (lambda x: nfold.conv(x, _W4, padding=1, groups=2), (2, 2, 3, 4, 3, 3)),
    "conv 4-d gemm": (
        lambda x: nfold.conv(x, _W4, stride=(1, 2, 1, 1), groups=2, method="gemm"),
        (1, 2, 3, 4, 3, 3),
    ),
    "conv_transpose 4-d auto": (
        lambda x: nfold.conv_transpose(x, _W4T, stride=2, padding=(1, 0, 0, 1)),
        (1, 2, 2, 3, 2, 2),
    ),
    "conv_transpose 4-d gemm": (
        lambda x: nfold.conv_transpose(x, _W4T, stride=(1, 2, 1, 2), method="gemm"),
        (2, 2, 2, 3, 2, 2),
    ),
}


@pytest.mark.parametrize("name", list(LEGACY))
def test_is_grads_batched_and_vectorized_jacobian(name: str) -> None:
    fn, shape = LEGACY[name]
    x = _randn(*shape).requires_grad_()
    out = fn(x)
    v = _randn(3, *out.shape)
    (batched,) = torch.autograd.grad(out, x, v, retain_graph=True, is_grads_batched=True)
    looped = torch.stack([torch.autograd.grad(out, x, vi, retain_graph=True)[0] for vi in v])
    torch.testing.assert_close(batched, looped, rtol=1e-13, atol=1e-13)
    jac = torch.autograd.functional.jacobian(fn, x.detach(), vectorize=True)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(fn, x.detach()))


def test_vectorized_hessian_of_conv_gemm() -> None:
    def f(x: torch.Tensor) -> torch.Tensor:
        return nfold.conv(x, _WEIGHT_CONV[:, :, 0], padding=1, method="gemm").tanh().sum()

    x = _randn(1, 2, 3, 4)
    torch.testing.assert_close(
        torch.autograd.functional.hessian(f, x, vectorize=True),
        torch.autograd.functional.hessian(f, x),
    )
