"""``check_model``: a model against its ``nfold.convert``-ed twin, layer by layer, with
forward hooks on every conv layer that ``convert`` swapped."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._check_report import Report
from ._check_run import differentiable, flatten, seeded, versions
from ._check_settings import conv_lengths, low_precision
from ._check_verdicts import ERROR, HIGH, MISMATCH, NOT_COMPARED, Row, eps, judge
from .conv_modules import _ConvBase
from .convert import OWN_COMPUTE, TWINS

_TORCH_CONVS: tuple[type[nn.Module], ...] = tuple(TWINS)
_NFOLD_CONVS: tuple[type[nn.Module], ...] = (_ConvBase, *TWINS.values())


def conv_layers(model: nn.Module) -> list[str]:
    """Qualified names of the conv / transposed conv layers of ``model`` (torch's, their
    subclasses and nfold's)."""
    return [
        name for name, m in model.named_modules() if isinstance(m, (*_TORCH_CONVS, *_NFOLD_CONVS))
    ]


def _why_not_compared(module: nn.Module) -> str:
    if isinstance(module, _NFOLD_CONVS):
        return "already an nfold layer: both runs compute through nfold"
    base = next((b for b in TWINS if isinstance(module, b)), None)
    own = [m for m in OWN_COMPUTE if getattr(type(module), m, None) is not getattr(base, m, None)]
    if own:
        return (
            f"{type(module).__name__} overrides {', '.join(own)}: nfold.convert leaves it to torch"
        )
    return "nfold.convert did not swap it"


class ModelError(ValueError):
    """The torch model itself failed on the example input (not nfold's fault)."""


@dataclass
class _Run:
    order: list[str] = field(
        default_factory=list
    )  # layer calls in forward order ("name" or "name#2")
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)
    grad_inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    shapes: dict[str, tuple[torch.Size, torch.Size]] = field(default_factory=dict)
    params: dict[str, torch.Tensor | None] = field(default_factory=dict)  # "name.weight" -> grad
    model_outputs: list[torch.Tensor] = field(default_factory=list)
    input_grads: list[torch.Tensor | None] = field(default_factory=list)

    def quantities(self, key: str | None) -> dict[str, torch.Tensor | None]:
        """Compared quantities of one layer call (``key``) or of the whole model (None)."""
        if key is None:
            outs = {f"output[{i}]": t for i, t in enumerate(self.model_outputs)}
            grads = {f"grad_input[{i}]": g for i, g in enumerate(self.input_grads)}
            return {k.removesuffix("[0]"): v for k, v in {**outs, **grads}.items()}
        out = {"output": self.outputs.get(key), "grad_input": self.grad_inputs.get(key)}
        if "#" not in key:  # parameter gradients sum over calls: reported with the first
            for pname in ("weight", "bias"):
                if f"{key}.{pname}" in self.params:
                    out[f"grad_{pname}"] = self.params[f"{key}.{pname}"]
        return out


def _run_model(
    model: nn.Module,
    inputs: Sequence[Any],
    layers: Sequence[str],
    seed: int,
    grad_outputs: list[torch.Tensor] | None,
) -> _Run:
    """Forward with hooks on ``layers``, then backward with ``grad_outputs`` (drawn here,
    seeded, if None). Captures layer outputs, each layer's gradient with respect to its
    own input, parameter gradients and the gradient of every floating model input."""
    run = _Run()
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    handles = []

    def pre_hook(name: str) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            run.order.append(key)
            x = args[0] if args else None
            if not isinstance(x, torch.Tensor) or not x.requires_grad:
                return None
            x = x.clone()  # used by this layer only: its gradient is this layer's grad_input

            def store(grad: torch.Tensor) -> None:
                run.grad_inputs[key] = grad.detach().clone()

            x.register_hook(store)
            return (x, *args[1:])

        return hook

    def post_hook(name: str) -> Callable[..., None]:
        def hook(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            key = run.order[-1]
            if isinstance(output, torch.Tensor):
                run.outputs[key] = output.detach().clone()  # later in-place ops must not touch it
                run.shapes[key] = (args[0].shape, output.shape)

        return hook

    for name in layers:
        if name not in modules:
            continue
        handles.append(modules[name].register_forward_pre_hook(pre_hook(name)))
        handles.append(modules[name].register_forward_hook(post_hook(name)))
    try:
        torch.manual_seed(seed)  # same dropout masks in the torch model and its twin
        out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
    outs = [t for t in flatten(out) if differentiable(t) and t.requires_grad]
    run.model_outputs = [t.detach() for t in outs]
    if grad_outputs is None:
        gen = seeded(seed, "grad_output")
        grad_outputs = [torch.randn(t.shape, generator=gen).to(t.dtype).to(t.device) for t in outs]
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    param_names = []
    params = []
    for name in layers:
        for pname in ("weight", "bias"):
            p = getattr(modules.get(name), pname, None)
            if isinstance(p, torch.Tensor) and p.requires_grad:
                param_names.append(f"{name}.{pname}")
                params.append(p)
    # an output of the wrong shape (a twin with a missed stride) is reported as such; the
    # backward pass then runs from the outputs that fit
    pairs = [
        (t, g.to(t.dtype)) for t, g in zip(outs, grad_outputs, strict=False) if t.shape == g.shape
    ]
    grads: Sequence[torch.Tensor | None] = (None,) * (len(leaves) + len(params))
    if pairs and len(outs) == len(grad_outputs):
        grads = torch.autograd.grad(
            [t for t, _ in pairs], [*leaves, *params], [g for _, g in pairs], allow_unused=True
        )
    run.input_grads = list(grads[: len(leaves)])
    run.params = dict(zip(param_names, grads[len(leaves) :], strict=True))
    return run


def model_inputs(
    example_input: Any, low: torch.dtype, dtype: torch.dtype, device: torch.device
) -> list[Any]:
    """The positional inputs in ``dtype``: floating tensors rounded to ``low`` first (so
    the low-precision and the float64 runs see the same numbers) and requiring grad."""
    items = list(example_input) if isinstance(example_input, (tuple, list)) else [example_input]
    out = []
    for x in items:
        if isinstance(x, torch.Tensor):
            x = x.detach().to(device)
            if differentiable(x):
                x = x.to(low).to(dtype).requires_grad_(True)
        out.append(x)
    return out


def _layer_lengths(
    module: nn.Module, shapes: tuple[torch.Size, torch.Size] | None
) -> dict[str, int]:
    if shapes is None:
        return {}
    m: Any = module
    channels = (m.in_channels, m.out_channels, m.groups)
    lengths = conv_lengths(
        m.transposed, m.kernel_size, channels, shapes[0], shapes[1], m.padding_mode
    )
    lengths["output"] = lengths.pop("forward")
    return lengths


def check_model(
    model: nn.Module,
    example_input: Any,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    seed: int = 0,
) -> Report:
    """Run ``model`` against its ``nfold.convert``-ed twin, layer by layer, in ``dtype``
    and in float64, and give each quantity a verdict (exact / round-off / MISMATCH).

    ``model`` is not modified: it is copied to ``dtype`` and the float64 copy is made from
    that one (same numbers), then each copy is converted. Rows per conv layer that
    ``convert`` swapped (in call order; a layer called twice appears as ``name#2``): its
    ``output``, ``grad_input`` (gradient with respect to the layer's own input),
    ``grad_weight`` and ``grad_bias``; then the model's ``output`` and the gradient of
    its floating inputs. A conv layer that did not run through nfold (a subclass that
    overrides ``forward``, a layer that already is nfold's) gets one ``not compared``
    row saying why, never a verdict; a model with no layer to compare gets no verdict
    at all and ``report.ok`` is False. The backward pass uses one seeded random gradient
    of the output. :attr:`Report.first_mismatch` names the first layer that disagrees:
    the first in forward order whose output disagrees, else the first reached by the
    backward pass (the deepest) whose gradients disagree.

    Args:
        model: an ``nn.Module`` with ``torch.nn`` conv / transposed conv layers.
        example_input: a tensor (or a tuple of positional inputs) the model accepts;
            floating tensors are rounded to ``dtype`` and copied to float64.
        dtype: the low precision: float32, float16 or bfloat16 (compared against
            float64; anything else is a ValueError).
        device: where to run (default: the device of the model's first parameter).
        seed: seeds the backward gradient and the RNG before each forward (dropout).

    Returns:
        A :class:`Report`; ``report.ok`` is False on any MISMATCH or if nothing was compared.

    >>> from torch import nn
    >>> net = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Conv2d(3, 1, 1))
    >>> check_model(net, torch.randn(1, 2, 6, 6)).ok
    True
    """
    import nfold

    start = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    dtype = low_precision(dtype)
    if device is None:
        first = next(iter(model.parameters()), None)
        device = first.device if first is not None else torch.device("cpu")
    device = torch.device(device)
    low = str(dtype).removeprefix("torch.")
    modules = dict(model.named_modules())
    name = type(model).__name__

    def report(rows: list[Row], title: str) -> Report:
        return Report(rows, title, low, str(device), seed, time.perf_counter() - start)

    torch_models = {dtype: copy.deepcopy(model).to(device=device, dtype=dtype)}
    torch_models[HIGH] = copy.deepcopy(torch_models[dtype]).to(HIGH)
    try:
        twins = {dt: nfold.convert(copy.deepcopy(m)) for dt, m in torch_models.items()}
    except Exception as exc:
        row = Row("(model)", "forward", name, verdict=ERROR)
        row.note = f"nfold.convert(model) raised {type(exc).__name__}: {exc}"
        result = report([row], f"nfold check --model: {name} ({versions()})")
        result.first_mismatch = "(model): nfold.convert raised"
        return result
    twin_modules = dict(twins[dtype].named_modules())
    layers, skipped = [], []
    for layer in conv_layers(model):
        swapped = type(twin_modules.get(layer)) is not type(modules[layer])
        if swapped and isinstance(twin_modules[layer], _NFOLD_CONVS):
            layers.append(layer)
        else:
            row = Row(layer, "-", type(modules[layer]).__name__, verdict=NOT_COMPARED)
            row.note = _why_not_compared(modules[layer])
            skipped.append(row)
    if not layers:
        title = f"nfold check --model: {name}, no conv layer run through nfold ({versions()})"
        result = report(skipped, title)
        result.nothing_compared = (
            "no conv layer of the model runs through nfold after nfold.convert"
            + (" (see the rows)" if skipped else "; it has no conv layer")
        )
        return result

    runs: dict[tuple[str, torch.dtype], _Run] = {}
    grad_outputs = None
    for dt in (dtype, HIGH):
        try:
            runs["torch", dt] = _run_model(
                torch_models[dt],
                model_inputs(example_input, dtype, dt, device),
                layers,
                seed,
                grad_outputs,
            )
        except Exception as exc:
            shapes = [tuple(t.shape) for t in flatten(example_input)]
            raise ModelError(
                f"the torch model failed on the example input {shapes} in {dt}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if grad_outputs is None:
            gen = seeded(seed, "grad_output")
            grad_outputs = [
                torch.randn(t.shape, generator=gen).to(dtype).to(device)
                for t in runs["torch", dt].model_outputs
            ]
        try:
            runs["nfold", dt] = _run_model(
                twins[dt],
                model_inputs(example_input, dtype, dt, device),
                layers,
                seed,
                grad_outputs,
            )
        except Exception as exc:
            row = Row("(model)", "forward", name, verdict=ERROR)
            row.note = f"the nfold twin raised {type(exc).__name__}: {exc}"
            result = report([row], f"nfold check --model: {name} ({versions()})")
            result.first_mismatch = "(model): the nfold twin raised"
            return result
    torch_runs = (runs["torch", dtype], runs["torch", HIGH])
    nfold_runs = (runs["nfold", dtype], runs["nfold", HIGH])
    order = torch_runs[0].order
    rows: list[Row] = []
    for key in [*order, None]:  # None: the whole model
        rows += skipped if key is None else []
        module = model if key is None else modules[key.split("#")[0]]
        lengths = _layer_lengths(module, torch_runs[0].shapes.get(key)) if key else {}
        for quantity, ref_low in torch_runs[0].quantities(key).items():
            ref_high = torch_runs[1].quantities(key).get(quantity)
            if ref_low is None or ref_high is None:
                continue  # the torch model has no such quantity (an input without grad)
            row = Row(key or "(model)", quantity, type(module).__name__)
            row.reduction_length = lengths.get(quantity, 1)
            nf = tuple(r.quantities(key).get(quantity) for r in nfold_runs)
            rows.append(judge(row, nf, (ref_low, ref_high), eps(dtype)))
            if None in nf:
                row.verdict, row.note = MISMATCH, "missing in the nfold twin"
    title = (
        f"nfold check --model: {name} against nfold.convert(model), "
        f"{len(order)} conv layer calls, {low} vs float64, device {device}, seed {seed} "
        f"({versions()})"
    )
    result = report(rows, title)
    result.first_mismatch = _culprit(rows, order)
    return result


def _culprit(rows: Sequence[Row], order: Sequence[str]) -> str | None:
    """The first layer in forward order whose output disagrees; else the deepest layer
    (the first one the backward pass reaches) whose gradients disagree."""
    failed = {(r.setting, r.quantity == "output") for r in rows if r.failed}
    for key in order:
        if (key, True) in failed:
            return f"{key} (output)"
    for key in reversed(order):
        if (key, False) in failed:
            return f"{key} (gradients)"
    if any(r.failed for r in rows):
        return "(model): no conv layer disagrees, the rest of the model does"
    return None
