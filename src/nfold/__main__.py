"""Command line: ``nfold check`` and ``nfold bench`` (also ``python -m nfold ...``).

Exit codes: 0 all good, 1 a check found a MISMATCH (or nfold raised), 2 a usage error
(bad option, unknown device, a ``--model`` that does not import), as argparse does.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import __version__
from .check import LOW_DTYPES, RULE, conv_layers, low_precision

CHECK_HELP = (
    "compare nfold with torch (or a naive reference where torch has no op) in float32 and "
    "float64, forward and gradients: exact, round-off or MISMATCH per row"
)
BENCH_HELP = (
    "time nfold (forward, forward+backward) against torch, unfoldNd and copy/GEMM "
    "floors, and measure its peak memory; print ratio tables (a chart only with --plot)"
)

CHECK_EPILOG = f"""\
verdicts, per setting (or layer) and quantity; the rule (README states the same):
{RULE}

--model MODULE:ATTR
  MODULE is imported (the current directory is on the path) and ATTR (dotted) is
  either an nn.Module, or a zero-argument callable returning an nn.Module or a
  tuple (model, example_input); the RNG is seeded with --seed first. The example
  input is, in order: --input-shape (random normal; repeat it for several inputs),
  the one ATTR returned, or (2, C_in, 16, ..., 16) from the model's first conv
  layer. The model runs against nfold.convert(model) with hooks on every conv
  layer convert swapped; the others are listed as "not compared", and a model with
  none is an error (exit 1); the report names the first layer that disagrees.

--fn MODULE:ATTR --reference MODULE:ATTR --input-shape SHAPE [--input-shape ...]
  your own function (or nn.Module) against a reference, e.g. the torch op it
  replaces, on random normal inputs: nfold.compare(fn, reference, *inputs).

exit status: 0 no MISMATCH, 1 some MISMATCH or ERROR or nothing compared, 2 usage error.
examples:
  nfold check                              # built-in table, N = 1..4
  nfold check --only conv4d --json         # a subset, machine-readable
  nfold check --model torchvision.models:resnet18 --input-shape 1,3,64,64
  nfold check --fn mynet:my_conv --reference torch.nn.functional:conv2d \\
      --input-shape 2,3,8,8 --input-shape 4,3,3,3
"""


class UsageError(Exception):
    """A problem with what the user asked for: exit 2 with the message."""


def _device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {text!r} is not a device: {exc}") from None
    try:
        torch.empty(1, device=device)
    except Exception:  # AssertionError ("not compiled with CUDA"), NotImplementedError (mps)
        raise UsageError(f"--device {text!r} is not available on this machine") from None
    return device


def _dtype(text: str) -> torch.dtype:
    try:
        return low_precision(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        shape = ()
    if not shape or any(v < 0 for v in shape):
        raise argparse.ArgumentTypeError(f"expected sizes like 2,3,32,32, got {text!r}")
    return shape


def _resolve(spec: str, option: str) -> Any:
    """``MODULE:ATTR`` -> the object ATTR (dotted) of the imported MODULE."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{option} must be MODULE:ATTR (e.g. mypkg.nets:build), got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        raise UsageError(
            f"{option} {spec!r}: cannot import module {module_name!r}: {type(exc).__name__}: {exc}"
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UsageError(f"{option} {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return obj


def load_model(spec: str) -> tuple[nn.Module, Any]:
    """``MODULE:ATTR`` -> (model, example input or None). See ``nfold check --help``."""
    obj = _resolve(spec, "--model")
    attr = spec.partition(":")[2]
    if isinstance(obj, nn.Module):
        return obj, None
    if not callable(obj):
        raise UsageError(
            f"--model {spec!r}: {attr} is a {type(obj).__name__}; expected an nn.Module or a "
            "zero-argument callable returning one or (model, example_input)"
        )
    try:
        result = obj()
    except Exception as exc:
        raise UsageError(
            f"--model {spec!r}: calling {attr}() raised {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(result, nn.Module):
        return result, None
    if isinstance(result, tuple) and len(result) == 2 and isinstance(result[0], nn.Module):
        return result[0], result[1]
    raise UsageError(
        f"--model {spec!r}: {attr}() returned a {type(result).__name__}; expected an nn.Module "
        "or a tuple (model, example_input)"
    )


def _random(shapes: list[tuple[int, ...]], seed: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(shape, generator=gen) for shape in shapes)


def _example_input(
    model: nn.Module, given: Any, shapes: list[tuple[int, ...]] | None, seed: int
) -> Any:
    if shapes:
        inputs = _random(shapes, seed)
        return inputs[0] if len(inputs) == 1 else inputs
    if given is not None:
        return given
    layers = conv_layers(model)
    if not layers:
        raise UsageError("the model has no conv layer to infer an input from: pass --input-shape")
    first: Any = model.get_submodule(layers[0])
    return _random([(2, first.in_channels, *(16,) * len(first.kernel_size))], seed)[0]


def _callable(spec: str, option: str) -> Any:
    obj = _resolve(spec, option)
    if not callable(obj):
        raise UsageError(f"{option} {spec!r}: a {type(obj).__name__} is not callable")
    return obj


def run_check(args: argparse.Namespace) -> int:
    from . import check

    device = _device(args.device)
    torch.manual_seed(args.seed)  # before any builder runs: the same model every time
    modes = [o for o, v in (("--model", args.model), ("--fn", args.fn)) if v is not None]
    if len(modes) > 1:
        raise UsageError("--model and --fn are two different checks: give one")
    if (args.fn is None) != (args.reference is None):
        raise UsageError("--fn and --reference go together")
    if modes and args.only is not None:
        raise UsageError(f"--only selects built-in settings; it does not apply to {modes[0]}")
    if not modes and args.input_shape is not None:
        raise UsageError("--input-shape needs --model or --fn")
    try:
        if args.fn is not None:
            if not args.input_shape:
                raise UsageError("--fn needs --input-shape (once per input)")
            fn, ref = _callable(args.fn, "--fn"), _callable(args.reference, "--reference")
            inputs = _random(args.input_shape, args.seed)
            report = check.compare(
                fn, ref, *inputs, dtype=args.dtype, device=device, seed=args.seed
            )
        elif args.model is not None:
            model, given = load_model(args.model)
            example = _example_input(model, given, args.input_shape, args.seed)
            report = check.check_model(
                model, example, dtype=args.dtype, device=device, seed=args.seed
            )
        else:
            report = check.check_builtin(
                dtype=args.dtype, device=device, seed=args.seed, only=args.only
            )
            if not report.rows:
                raise UsageError(f"--only {args.only!r} matches no built-in setting")
    except check.ModelError as exc:
        raise UsageError(str(exc)) from None
    print(report.to_json() if args.json else report.format())
    return 0 if report.ok else 1


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="MODULE:ATTR",
        help="check a model against its nfold.convert-ed twin, layer by layer, instead of "
        "the built-in table (see below)",
    )
    p.add_argument(
        "--fn",
        metavar="MODULE:ATTR",
        help="check your own function (or nn.Module) against --reference (see below)",
    )
    p.add_argument(
        "--reference",
        metavar="MODULE:ATTR",
        help="with --fn: what it should equal, e.g. torch.nn.functional:conv2d",
    )
    p.add_argument(
        "--input-shape",
        type=_shape,
        action="append",
        metavar="SHAPE",
        help="with --model or --fn: shape of a random normal input, e.g. 2,3,32,32; "
        "once per positional input",
    )
    p.add_argument(
        "--dtype",
        type=_dtype,
        default=torch.float32,
        metavar="{" + ",".join(LOW_DTYPES) + "}",
        help="the low precision compared against float64 (default: float32)",
    )
    p.add_argument(
        "--device",
        default="cpu",
        help="device to run on, e.g. cpu, cuda, cuda:1, mps (default: cpu)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seed for inputs, weights and gradients (default: 0)"
    )
    p.add_argument(
        "--json", action="store_true", help="print the report as JSON instead of a table"
    )
    p.add_argument(
        "--only",
        metavar="SUBSTRING",
        help="run only the built-in settings whose id contains SUBSTRING",
    )


def _add_bench(sub: Any, wanted: bool) -> None:
    p = sub.add_parser("bench", help=BENCH_HELP, description=BENCH_HELP)
    if not wanted:  # nfold.bench (and what it imports) loads only when `bench` is asked for
        return
    from . import bench

    bench.add_arguments(p)
    p.set_defaults(func=bench.run)


def build_parser(with_bench: bool = True) -> argparse.ArgumentParser:
    """The ``nfold`` parser. ``with_bench=False`` leaves ``bench``'s options out (and so
    does not import :mod:`nfold.bench`)."""
    parser = argparse.ArgumentParser(
        prog="nfold",
        description="nfold: N-dimensional unfold / fold (im2col / col2im) and convolution as "
        "matrix multiplication for PyTorch.",
    )
    parser.add_argument("--version", action="version", version=f"nfold {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{check,bench}", required=True)
    check_p = sub.add_parser(
        "check",
        help=CHECK_HELP,
        description=textwrap.fill(
            CHECK_HELP + ". Without --model: a built-in table of unfold, fold, unfold_transpose, "
            "conv and conv_transpose settings for N = 1..4 (groups, stride, dilation, every "
            "padding form and mode, output_padding).",
            80,
        ),
        epilog=CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_check_arguments(check_p)
    check_p.set_defaults(func=run_check)
    _add_bench(sub, with_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``nfold`` and ``python -m nfold``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(with_bench="bench" in argv)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except UsageError as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    return 2  # not reached: parser.exit raises SystemExit


if __name__ == "__main__":
    sys.exit(main())
