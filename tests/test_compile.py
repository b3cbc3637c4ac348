"""torch.compile(fullgraph=True): every op and module traces without a graph break and
gives eager's results, forward and backward.

Compiling costs seconds on a small machine, so most tests use the ``aot_eager`` backend:
it runs the same Dynamo trace (``fullgraph=True`` raises on any graph break) and the
same AOTAutograd forward/backward split as the default backend, without Inductor's
code generation. One test runs the default Inductor backend end to end.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator

import pytest
import torch

import nfold

BACKEND = "aot_eager"


@pytest.fixture(autouse=True)
def _fresh_dynamo() -> Iterator[None]:
    """Each test starts from an empty Dynamo cache (no recompile limits carried over)."""
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _randn(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, dtype=torch.float64, requires_grad=True)


def _check_compiled(fn: Callable[..., torch.Tensor], *args: torch.Tensor, exact: bool) -> None:
    """``fn`` compiled with fullgraph=True equals eager ``fn``: outputs (bitwise if
    ``exact``) and the gradients of every tensor argument (and parameter, for a module)
    for a random cotangent, to float64 round-off: under compile AOTAutograd derives the
    backward from the traced ops, which may sum overlapping blocks in another order."""
    compiled = torch.compile(fn, fullgraph=True, backend=BACKEND, dynamic=False)
    got, want = compiled(*args), fn(*args)
    tol = {"rtol": 0.0, "atol": 0.0} if exact else {}
    torch.testing.assert_close(got, want, **tol)
    leaves = [*args, *(fn.parameters() if isinstance(fn, torch.nn.Module) else ())]
    leaves = [t for t in leaves if t.requires_grad]
    cotangent = torch.randn_like(want)
    grads_got = torch.autograd.grad(got, leaves, cotangent)
    grads_want = torch.autograd.grad(want, leaves, cotangent)
    torch.testing.assert_close(grads_got, grads_want)


# Data movement: no arithmetic but fold's sums, so compiled == eager bitwise.
# Each entry is its own function (own code object, own Dynamo cache entry).
FUNCTIONAL_CASES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[], tuple]]] = {
    "unfold_3d_stride_dilation_padding": (
        lambda x: nfold.unfold(x, (2, 3, 2), dilation=(1, 2, 1), padding=1, stride=(2, 1, 1)),
        lambda: (_randn(2, 3, 5, 6, 4),),
    ),
    "unfold_2d_same_reflect": (
        lambda x: nfold.unfold(x, 3, padding="same", padding_mode="reflect"),
        lambda: (_randn(2, 3, 5, 6),),
    ),
    "unfold_1d_unbatched_circular": (
        lambda x: nfold.unfold(x, (3,), padding=(2,), padding_mode="circular"),
        lambda: (_randn(3, 7),),
    ),
    "fold_2d_stride_padding": (
        lambda y: nfold.fold(y, (5, 6), 3, padding=1, stride=2),
        lambda: (_randn(2, 2 * 9, 9),),
    ),
    "fold_4d": (
        lambda y: nfold.fold(y, (3, 2, 2, 3), (2, 1, 1, 2), stride=(1, 1, 2, 1)),
        lambda: (_randn(1, 2 * 4, 2 * 2 * 1 * 2),),
    ),
    "fold_mean": (
        lambda y: nfold.fold(y, (5, 6), 3, padding=1, stride=2, reduction="mean"),
        lambda: (_randn(2, 2 * 9, 9),),
    ),
    "unfold_transpose_2d": (
        lambda z: nfold.unfold_transpose(z, 3, stride=2, padding=1, output_padding=1),
        lambda: (_randn(2, 2, 3, 4),),
    ),
    "sliding_window_view_3d": (
        lambda x: nfold.sliding_window_view(x, 2, stride=(1, 2, 1)) * 1,
        lambda: (_randn(2, 2, 4, 5, 3),),
    ),
}


@pytest.mark.parametrize("case", list(FUNCTIONAL_CASES))
def test_data_movement_compiles_fullgraph(case: str) -> None:
    fn, make_args = FUNCTIONAL_CASES[case]
    _check_compiled(fn, *make_args(), exact=True)


CONV_CASES: dict[str, tuple[Callable[..., torch.Tensor], Callable[[], tuple]]] = {
    "conv_2d_groups_stride_dilation": (
        lambda x, w, b: nfold.conv(x, w, b, stride=2, padding=1, dilation=(1, 2), groups=2),
        lambda: (_randn(2, 4, 7, 8), _randn(6, 2, 3, 3), _randn(6)),
    ),
    "conv_3d_same_circular": (
        lambda x, w, b: nfold.conv(x, w, b, padding="same", padding_mode="circular"),
        lambda: (_randn(1, 2, 4, 5, 3), _randn(3, 2, 3, 2, 3), _randn(3)),
    ),
    "conv_4d": (
        lambda x, w, b: nfold.conv(x, w, b, stride=(1, 2, 1, 1)),
        lambda: (_randn(1, 2, 3, 4, 3, 3), _randn(2, 2, 2, 1, 2, 1), _randn(2)),
    ),
    "conv_transpose_2d_groups": (
        lambda x, w, b: nfold.conv_transpose(
            x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=(2, 1)
        ),
        lambda: (_randn(2, 4, 3, 4), _randn(4, 3, 3, 2), _randn(6)),
    ),
    "conv_transpose_1d_output_size": (
        lambda x, w, b: nfold.conv_transpose(x, w, b, stride=3, output_size=[13]),
        lambda: (_randn(2, 2, 4), _randn(2, 3, 3), _randn(3)),
    ),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv_compiles_fullgraph(case: str) -> None:
    fn, make_args = CONV_CASES[case]
    _check_compiled(fn, *make_args(), exact=False)


def _module_cases() -> dict[str, tuple[Callable[[], torch.nn.Module], tuple[int, ...]]]:
    """name -> (module factory, input shape)."""
    return {
        "Unfold": (lambda: nfold.Unfold((2, 3), padding=1, stride=2), (2, 3, 5, 6)),
        "Fold": (lambda: nfold.Fold((4, 5), 2, reduction="mean"), (2, 3 * 4, 12)),
        "UnfoldTranspose": (lambda: nfold.UnfoldTranspose(3, stride=2), (2, 2, 3, 4)),
        "Conv1d": (lambda: nfold.Conv1d(2, 3, 3, padding="same"), (2, 2, 7)),
        "Conv2d": (lambda: nfold.Conv2d(4, 6, 3, stride=2, groups=2), (2, 4, 7, 6)),
        "Conv3d": (
            lambda: nfold.Conv3d(2, 3, 2, padding=1, padding_mode="reflect"),
            (1, 2, 3, 4, 3),
        ),
        "ConvNd_4d": (lambda: nfold.ConvNd(2, 3, (2, 1, 2, 1)), (1, 2, 3, 3, 2, 3)),
        "ConvTranspose1d": (lambda: nfold.ConvTranspose1d(2, 3, 3, stride=2), (2, 2, 5)),
        "ConvTranspose2d": (
            lambda: nfold.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2),
            (2, 4, 3, 4),
        ),
        "ConvTranspose3d": (lambda: nfold.ConvTranspose3d(2, 2, 2, dilation=2), (1, 2, 3, 2, 3)),
        "ConvTransposeNd_4d": (
            lambda: nfold.ConvTransposeNd(2, 2, (2, 1, 1, 2), stride=(1, 2, 1, 1)),
            (1, 2, 2, 2, 2, 2),
        ),
    }


@pytest.mark.parametrize("name", list(_module_cases()))
def test_module_compiles_fullgraph(name: str) -> None:
    make_module, shape = _module_cases()[name]
    torch.manual_seed(0)
    module = make_module().double()
    _check_compiled(module, _randn(*shape), exact=name.startswith(("Unfold", "Fold")))


def test_conv_transpose_module_output_size_compiles() -> None:
    """``forward(input, output_size)``: output_padding is derived in plain Python."""
    torch.manual_seed(0)
    module = nfold.ConvTranspose2d(2, 3, 3, stride=2).double()
    compiled = torch.compile(module, fullgraph=True, backend=BACKEND, dynamic=False)
    x = _randn(1, 2, 4, 5)
    got = compiled(x, output_size=(10, 12))
    torch.testing.assert_close(got, module(x, output_size=(10, 12)))
    assert got.shape == (1, 3, 10, 12)


def test_inductor_forward_and_backward_match_eager() -> None:
    """The default backend (Inductor code generation), kept tiny: it is the slow one."""

    def conv1d(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return nfold.conv(x, w, padding=1, stride=2)

    x, w = torch.randn(2, 3, 9, requires_grad=True), torch.randn(4, 3, 3, requires_grad=True)
    compiled = torch.compile(conv1d, fullgraph=True)
    got, want = compiled(x, w), conv1d(x, w)
    torch.testing.assert_close(got, want)
    cotangent = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, (x, w), cotangent), torch.autograd.grad(want, (x, w), cotangent)
    )


def test_dynamic_batch_size_recompiles_without_graph_break() -> None:
    """A second batch size (automatic dynamic shapes) still traces as one graph."""
    compiled = torch.compile(
        lambda x: nfold.unfold(x, (2, 3), padding=1, stride=(2, 1)), fullgraph=True, backend=BACKEND
    )
    for batch in (2, 3):
        x = torch.randn(batch, 2, 5, 6)
        torch.testing.assert_close(
            compiled(x),
            torch.nn.functional.unfold(x, (2, 3), padding=1, stride=(2, 1)),
            rtol=0,
            atol=0,
        )


# --------------------------------------------------------------------------- torch.jit.trace
# Deprecated in torch 2.13 but still how some models are exported: a traced nfold layer
# records aten ops only (plans are made outside the trace), saves, loads, and gives eager's
# values and gradients. The trace is for the traced shapes, as torch's TracerWarning says.

JIT_CASES = {
    "Conv2d small (torch's im2col)": (lambda: nfold.Conv2d(2, 4, 3, padding=1), (1, 2, 5, 5)),
    "Conv2d gemm": (lambda: nfold.Conv2d(2, 4, 3, padding=1, stride=2), (4, 2, 16, 16)),
    "Conv2d same reflect": (
        lambda: nfold.Conv2d(2, 4, 2, padding="same", padding_mode="reflect"),
        (2, 2, 5, 5),
    ),
    "ConvNd 3-d gemm": (
        lambda: nfold.ConvNd(2, 4, 3, padding=1, ndim=3, method="gemm"),
        (1, 2, 4, 5, 5),
    ),  # fmt: skip
    "ConvNd 4-d auto": (lambda: nfold.ConvNd(2, 4, 3, padding=1, ndim=4), (1, 2, 4, 4, 5, 5)),
    "ConvTranspose2d": (lambda: nfold.ConvTranspose2d(2, 4, 3, stride=2), (1, 2, 5, 5)),
    "ConvTransposeNd 4-d": (
        lambda: nfold.ConvTransposeNd(2, 4, 3, stride=2, ndim=4),
        (1, 2, 3, 3, 3, 3),
    ),  # fmt: skip
    "Unfold 3-d": (lambda: nfold.Unfold((2, 2, 2), padding=1), (1, 2, 4, 5, 5)),
    "Fold": (lambda: nfold.Fold((5, 5), 3, padding=1, stride=2), (1, 18, 9)),
}


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.filterwarnings("ignore:`torch.jit.* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("name", list(JIT_CASES))
def test_jit_trace_saves_and_matches_eager(name: str, monkeypatch, tmp_path) -> None:
    from nfold import _native, _plan

    monkeypatch.setattr(_native, "_NATIVE", {})  # the native-kernel probe, under the trace
    _plan.clear_caches()  # so that planning happens while tracing
    make, shape = JIT_CASES[name]
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    traced = torch.jit.trace(module, x)
    torch.jit.save(traced, tmp_path / "m.pt")
    loaded = torch.jit.load(tmp_path / "m.pt")
    assert "PythonOp" not in str(loaded.graph)
    xs = [x.clone().requires_grad_() for _ in range(2)]
    got, want = loaded(xs[0]), module(xs[1])
    assert torch.equal(got, want)
    g = torch.randn(got.shape, dtype=torch.float64)
    got.backward(g)
    want.backward(g)
    torch.testing.assert_close(xs[0].grad, xs[1].grad, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- torch.export
# An exported program records the forward's aten ops (as under jit.trace): autograd
# differentiates them in the program, and it saves and loads (no grad-mode switches).

EXPORT_CASES = {
    **JIT_CASES,
    "Conv1d": (lambda: nfold.Conv1d(2, 4, 3, padding=1), (2, 2, 9)),
    "Conv3d": (lambda: nfold.Conv3d(2, 4, 3, padding=1), (2, 2, 4, 4, 4)),
    "ConvTranspose2d k2 s2": (lambda: nfold.ConvTranspose2d(4, 2, 2, stride=2), (2, 4, 4, 4)),
    "ConvNd 4-d gemm": (
        lambda: nfold.ConvNd(2, 3, 3, padding=1, ndim=4, method="gemm"),
        (1, 2, 3, 4, 4, 4),
    ),  # fmt: skip
}


@pytest.mark.parametrize("name", list(EXPORT_CASES))
def test_export_differentiates_saves_and_matches_eager(name: str, tmp_path) -> None:
    make, shape = EXPORT_CASES[name]
    torch.manual_seed(0)
    module = make().double()
    x = torch.randn(shape, dtype=torch.float64)
    program = torch.export.export(module, (x,))
    torch.export.save(program, tmp_path / "m.pt2")
    for exported in (program.module(), torch.export.load(tmp_path / "m.pt2").module()):
        xs = [x.clone().requires_grad_() for _ in range(2)]
        got, want = exported(xs[0]), module(xs[1])
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        g = torch.randn(got.shape, dtype=torch.float64)
        ours = torch.autograd.grad(got, [xs[0], *exported.parameters()], g)
        theirs = torch.autograd.grad(want, [xs[1], *module.parameters()], g)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- torch.fx


def test_fx_symbolic_trace_records_nfold_calls() -> None:
    """torch.fx.symbolic_trace traces through nfold's layers (torch's are fx leaves) and
    records their conv / unfold / fold calls as graph nodes: the GraphModule computes the
    same bits, pickles, and FX passes such as conv-bn fusion run on converted models."""
    from torch.fx.experimental.optimization import fuse

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        nfold.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), torch.nn.ReLU(inplace=True),
        nfold.ConvTranspose2d(4, 2, 2, stride=2), nfold.Unfold(3, padding=1),
        nfold.Fold((16, 16), 3, padding=1),
    )  # fmt: skip
    net4 = torch.nn.Sequential(
        nfold.ConvNd(2, 3, 3, padding=1, ndim=4), nfold.ConvTransposeNd(3, 2, 2, stride=2, ndim=4),
        nfold.UnfoldTranspose(2, stride=2),
    )  # fmt: skip
    for module, x in ((net, torch.randn(2, 3, 8, 8)), (net4, torch.randn(1, 2, 3, 3, 3, 3))):
        traced = torch.fx.symbolic_trace(module)
        assert torch.equal(traced(x), module(x))
        assert torch.equal(pickle.loads(pickle.dumps(traced))(x), module(x))
    model = nfold.convert(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU())
    ).eval()
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(fuse(model)(x), model(x))


def test_channels_last_model_compiles_with_torchs_memory_format() -> None:
    """A channels_last "gemm" model compiles (fullgraph) and keeps torch's output format."""
    model = nfold.Conv2d(3, 4, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend=BACKEND)
    got, want = compiled(x), model(x)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    torch.testing.assert_close(got, want)
    g = torch.randn_like(want)
    torch.testing.assert_close(
        torch.autograd.grad(got, x, g)[0], torch.autograd.grad(want, x, g)[0]
    )
