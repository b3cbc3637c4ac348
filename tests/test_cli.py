"""The ``nfold`` command line: ``nfold check`` passes on the real package, fails on a
deliberately wrong op (exactly on the affected rows), usage errors exit 2."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

import nfold
from nfold import check
from nfold.__main__ import main


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors and --help
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def _mismatch_rows(table: str) -> set[tuple[str, str]]:
    """(setting, quantity) of every table row whose verdict column says MISMATCH."""
    rows = [line.split() for line in table.splitlines()[2:-1]]
    return {(r[0], r[1]) for r in rows if len(r) >= 8 and r[7] == "MISMATCH"}


# ----------------------------------------------------------------------------- passes


def test_check_passes_in_process(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check")
    lines = out.splitlines()
    assert code == 0, "\n".join(line for line in lines if "MISMATCH" in line or "ERROR" in line)
    assert lines[0].startswith("nfold check: ") and lines[1].split()[:3] == [
        "setting",
        "quantity",
        "reference",
    ]
    assert " 0 MISMATCH" in lines[-1]
    verdicts = [line.split()[7] for line in lines[2:-1]]
    assert set(verdicts) == {"exact", "round-off"} and verdicts.count("round-off") > 50
    assert len(lines) == 3 + sum(len(s.quantities()) for s in check.SETTINGS)


def test_python_dash_m_nfold_check_passes() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "nfold", "check"], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 MISMATCH" in proc.stdout.splitlines()[-1]


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "check", "--only", "fold2d", "--json", "--seed", "3")
    data = json.loads(out)
    assert code == 0 and data["ok"] is True and data["seed"] == 3 and data["dtype"] == "float32"
    assert {r["setting"] for r in data["rows"]} == {
        s.id for s in check.SETTINGS if "fold2d" in s.id
    }
    assert data["counts"]["MISMATCH"] == 0


def test_dtype_option(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(
        capsys, "check", "--only", "conv2d-k3x3-p1", "--dtype", "bfloat16", "--json"
    )
    data = json.loads(out)
    assert code == 0 and data["dtype"] == "bfloat16" and data["rows"]


# ----------------------------------------------------------------------------- can fail


def _settings(pred) -> list[check.Setting]:  # type: ignore[no-untyped-def]
    return [s for s in check.SETTINGS if pred(s)]


def test_dropped_bias_fails_exactly_forward_and_grad_bias(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nfold.conv
    monkeypatch.setattr(nfold, "conv", lambda x, w, b=None, **kw: real(x, w, None, **kw))
    code, out, _ = _run(capsys, "check", "--only", "conv2d")  # conv_transpose2d: not matched
    expected = {
        (s.id, q)
        for s in _settings(lambda s: s.op == "conv" and s.n == 2 and len(s.shapes) == 3)
        for q in ("forward", "grad_bias")
    }
    assert code == 1 and len(expected) == 2 * 10
    assert _mismatch_rows(out) == expected  # grad_input, grad_weight and the nobias rows pass


def test_missing_stride_fails_exactly_the_strided_unfold_rows(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nfold.unfold
    monkeypatch.setattr(
        nfold,
        "unfold",
        lambda x, kernel_size, dilation=1, padding=0, stride=1, padding_mode="zeros": real(
            x, kernel_size, dilation, padding, 1, padding_mode
        ),
    )

    def strided(s: check.Setting) -> bool:
        stride = s.kwargs.get("stride", 1)
        return stride != 1 if isinstance(stride, int) else any(v != 1 for v in stride)

    code, out, _ = _run(capsys, "check", "--only", "unfold")  # also runs unfold_transpose
    expected = {
        (s.id, q)
        for s in _settings(lambda s: s.op == "unfold" and strided(s))
        for q in ("forward", "grad_input")
    }
    assert code == 1 and len(expected) >= 8
    assert _mismatch_rows(out) == expected


def test_flipped_transposed_weight_fails_all_but_grad_bias(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = nfold.conv_transpose
    monkeypatch.setattr(
        nfold, "conv_transpose", lambda x, w, b=None, **kw: real(x, w.flip(-1), b, **kw)
    )
    code, out, _ = _run(capsys, "check", "--only", "conv_transpose")
    # (auto rows run against nfold's own gemm path, flipped alike: they stay equal)
    affected = _settings(
        lambda s: s.op == "conv_transpose" and s.shapes[1][-1] > 1 and s.method != "auto"
    )
    expected = {(s.id, q) for s in affected for q in ("forward", "grad_input", "grad_weight")}
    gemm_rows = _settings(lambda s: s.op == "conv_transpose" and s.method != "auto")
    assert code == 1 and len(affected) == len(gemm_rows)
    assert _mismatch_rows(out) == expected
    assert all(
        "round-off" in line or "exact" in line for line in out.splitlines() if " grad_bias " in line
    )


def test_an_op_that_raises_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(nfold, "fold", boom)
    code, out, _ = _run(capsys, "check", "--only", "fold1d")
    assert code == 1 and "ERROR" in out and "boom" in out


# ----------------------------------------------------------------------------- --model


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, source: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return name


NET = """
    import torch
    from torch import nn

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3, stride=2, groups=2))

    model = net()

    def with_input():
        return net(), torch.randn(1, 3, 9, 9)

    not_a_model = 3

    def returns_junk():
        return "junk"
"""


@pytest.mark.parametrize(
    "attr, extra",
    [("model", []), ("net", ["--input-shape", "2,3,10,10"]), ("with_input", []), ("net", [])],
    ids=["module-attr", "factory+input-shape", "factory-returns-input", "inferred-input"],
)
def test_model_forms(capsys, monkeypatch, tmp_path, attr, extra) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, f"cli_net_{attr}_{len(extra)}", NET)
    code, out, err = _run(capsys, "check", "--model", f"{name}:{attr}", *extra)
    assert code == 0, out + err
    assert out.startswith("nfold check --model: Sequential") and " 0 MISMATCH" in out
    settings = {line.split()[0] for line in out.splitlines()[2:-1]}
    assert settings == {"0", "2", "(model)"}


def test_model_mismatch_names_the_layer(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, "cli_net_tampered", NET)
    real = nfold.convert

    def convert(model, inplace=False):  # type: ignore[no-untyped-def]
        twin = real(model, inplace=inplace)
        twin[2].stride = (1, 1)  # a missed stride
        return twin

    monkeypatch.setattr(nfold, "convert", convert)
    code, out, _ = _run(capsys, "check", "--model", f"{name}:net", "--json")
    data = json.loads(out)
    assert code == 1 and data["ok"] is False
    assert data["first_mismatch"] == "2 (output)"


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_xyz:model", "cannot import module 'no_such_module_xyz'"),
        ("MOD:missing", "has no attribute 'missing'"),
        ("MOD:not_a_model", "expected an nn.Module"),
        ("MOD:returns_junk", "returned a str"),
        ("MOD", "must be MODULE:ATTR"),
    ],
    ids=["no-module", "no-attr", "not-a-model", "factory-junk", "no-colon"],
)
def test_bad_model_exits_2(capsys, monkeypatch, tmp_path, spec, message) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, "cli_net_bad", NET)
    code, _, err = _run(capsys, "check", "--model", spec.replace("MOD", name))
    assert code == 2 and message in err and err.startswith("nfold check: error:")


def test_model_failing_on_its_input_exits_2(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, "cli_net_shape", NET)
    code, _, err = _run(capsys, "check", "--model", f"{name}:net", "--input-shape", "1,5,9,9")
    assert code == 2 and "torch model failed" in err


# ----------------------------------------------------------------------------- usage


@pytest.mark.parametrize(
    "argv, message",
    [
        (["check", "--device", "nonsense"], "is not a device"),
        (
            ["check", "--device", "cuda:7" if not torch.cuda.is_available() else "meta:3"],
            "--device",
        ),
        (["check", "--dtype", "int8"], "dtype must be one of float32, float16, bfloat16"),
        (["check", "--dtype", "float64"], "dtype must be one of float32, float16, bfloat16"),
        (["check", "--fn", "m:f"], "--fn and --reference go together"),
        (["check", "--model", "m:f", "--fn", "m:f"], "give one"),
        (["check", "--only", "no-such-setting"], "matches no built-in setting"),
        (["check", "--input-shape", "1,2"], "needs --model"),
        (["check", "--input-shape", "a,b"], "expected sizes like"),
        ([], "required"),
        (["frobnicate"], "invalid choice"),
    ],
    ids=[
        "device-unknown",
        "device-unavailable",
        "dtype",
        "dtype-float64",
        "fn-without-reference",
        "model-and-fn",
        "only",
        "shape-without-model",
        "bad-shape",
        "no-command",
        "bad-command",
    ],
)
def test_usage_errors_exit_2(capsys, argv, message) -> None:  # type: ignore[no-untyped-def]
    code, out, err = _run(capsys, *argv)
    assert code == 2 and message in err, err
    assert out == ""


def test_help_explains_each_subcommand_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "check" in out and "bench" in out
    from nfold.__main__ import BENCH_HELP, CHECK_HELP

    flat = " ".join(out.split())
    assert CHECK_HELP in flat and BENCH_HELP in flat
    code, out, _ = _run(capsys, "check", "--help")
    for option in ("--model", "--input-shape", "--dtype", "--device", "--seed", "--json", "--only"):
        assert option in out
    assert "round-off" in out and "MODULE:ATTR" in out
    assert " ".join(check.RULE.split()) in " ".join(out.split())  # the rule README states


def test_dtype_message_is_the_librarys(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError) as caught:
        nfold.check_model(torch.nn.Conv1d(1, 1, 1), torch.randn(1, 1, 3), dtype=torch.float64)
    code, _, err = _run(capsys, "check", "--dtype", "float64")
    assert code == 2 and err.splitlines()[-1].endswith(str(caught.value))


def test_unavailable_device_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    device = next(d for d in ("mps", "cuda", "xpu") if not _available(d))
    code, out, err = _run(capsys, "check", "--device", device)
    assert code == 2 and out == ""
    assert err == f"nfold check: error: --device {device!r} is not available on this machine\n"


def _available(device: str) -> bool:
    try:
        torch.empty(1, device=device)
    except Exception:
        return False
    return True


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"nfold {nfold.__version__}"


# ----------------------------------------------------------------------------- bench wiring


def test_check_does_not_import_bench(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delitem(sys.modules, "nfold.bench", raising=False)
    monkeypatch.delattr(nfold, "bench", raising=False)
    code, _, _ = _run(capsys, "check", "--only", "unfold1d-k3")
    assert code == 0 and "nfold.bench" not in sys.modules


def test_bench_dispatches_to_the_bench_module(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    seen = {}
    fake = types.ModuleType("nfold.bench")
    fake.add_arguments = lambda p: p.add_argument("--quick", action="store_true")  # type: ignore[attr-defined]

    def run(args):  # type: ignore[no-untyped-def]
        seen["quick"] = args.quick
        return 7

    fake.run = run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "nfold.bench", fake)
    monkeypatch.setattr(nfold, "bench", fake, raising=False)
    code, _, _ = _run(capsys, "bench", "--quick")
    assert (code, seen) == (7, {"quick": True})


def test_bench_help_is_the_bench_modules(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "bench", "--help")
    assert code == 0 and out.startswith("usage: nfold bench")


def test_bench_help_promises_a_plot_only_with_plot(capsys: pytest.CaptureFixture[str]) -> None:
    """bench writes no file unless asked: its one-line help must not promise a plot."""
    from nfold.__main__ import BENCH_HELP

    assert "write a plot" not in BENCH_HELP and "--plot" in BENCH_HELP
    code, out, _ = _run(capsys, "bench", "--help")
    flat = " ".join(out.split())
    assert "--plot FILE.png write a bar chart" in flat


# ----------------------------------------------------------------------------- issue 11


UNSEEDED = """
    from torch import nn

    def build():  # draws its weights from the global RNG, unseeded
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3))

    def linear():
        return nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
"""


@pytest.mark.parametrize("seed", [[], ["--seed", "5"]], ids=["default-seed", "seed-5"])
def test_model_check_is_reproducible(capsys, monkeypatch, tmp_path, seed) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, f"cli_unseeded_{len(seed)}", UNSEEDED)
    argv = ["check", "--model", f"{name}:build", "--input-shape", "2,3,8,8", "--json", *seed]
    runs = []
    for i in range(2):
        torch.manual_seed(100 + i)  # whatever ran before must not matter
        code, out, _ = _run(capsys, *argv)
        assert code == 0
        runs.append(json.loads(out)["rows"])
    assert runs[0] == runs[1]


def test_model_without_conv_layer_exits_1(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, "cli_linear", UNSEEDED)
    code, out, _ = _run(capsys, "check", "--model", f"{name}:linear", "--input-shape", "2,3,4")
    assert code == 1 and "nothing was compared" in out and "round-off" not in out.split("\n", 2)[2]


FNS = """
    import torch.nn.functional as F

    def unfold_conv(x, w):
        cols = F.unfold(x, w.shape[2:])
        size = [s - k + 1 for s, k in zip(x.shape[2:], w.shape[2:])]
        return (w.flatten(1) @ cols).reshape(x.shape[0], w.shape[0], *size)

    def flipped_conv(x, w):
        return unfold_conv(x, w.flip(-1))

    not_callable = 3
"""


@pytest.mark.parametrize(
    "fn, code", [("unfold_conv", 0), ("flipped_conv", 1)], ids=["right", "wrong"]
)
def test_fn_against_a_reference(capsys, monkeypatch, tmp_path, fn, code) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, f"cli_fns_{fn}", FNS)
    shapes = ["--input-shape", "2,3,7,6", "--input-shape", "4,3,3,2"]
    got, out, _ = _run(
        capsys,
        "check",
        "--fn",
        f"{name}:{fn}",
        "--reference",
        "torch.nn.functional:conv2d",
        *shapes,
    )
    assert got == code and out.startswith(f"nfold.compare: {fn} against conv2d")
    verdicts = {line.split()[1]: line.split()[-1] for line in out.splitlines()[2:-1]}
    assert set(verdicts) == {"output", "grad_input[0]", "grad_input[1]"}
    assert set(verdicts.values()) == ({"round-off"} if code == 0 else {"MISMATCH"})


@pytest.mark.parametrize(
    "extra, message",
    [
        ([], "--fn needs --input-shape"),
        (["--input-shape", "2,3,4,4", "--only", "x"], "does not apply to --fn"),
        (["--input-shape", "2,3,4,4", "--fn-attr", "not_callable"], "is not callable"),
        (["--input-shape", "2,3,4,4"], "reference unfold_conv failed on the inputs"),
    ],
    ids=["no-shape", "only", "not-callable", "reference-fails"],
)
def test_fn_usage_errors_exit_2(capsys, monkeypatch, tmp_path, extra, message) -> None:  # type: ignore[no-untyped-def]
    name = _module(tmp_path, monkeypatch, "cli_fns_usage", FNS)
    attr = "unfold_conv"
    if "--fn-attr" in extra:
        attr = extra[-1]
        extra = extra[:-2]
    argv = ["check", "--fn", f"{name}:{attr}", "--reference", f"{name}:unfold_conv", *extra]
    code, _, err = _run(capsys, *argv)
    assert code == 2 and message in err, err


def test_first_run_without_numpy_prints_no_warning() -> None:
    # torch warns "Failed to initialize NumPy" when it is imported without numpy
    script = (
        "import sys; sys.modules['numpy'] = None; import runpy; "
        "sys.argv = ['nfold', 'check', '--only', 'unfold1d-k3']; "
        "runpy.run_module('nfold', run_name='__main__')"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
