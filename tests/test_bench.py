"""The benchmark suite runs end to end on toy sizes (no timing assertions anywhere)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from nfold import bench
from nfold.bench import machine, memory, peers, render, suite, timing

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path = out / "quick.json", out / "quick.md"
    code = bench.run(
        _args("--quick", "--tiny", "--json", str(json_path), "--markdown", str(md_path))
    )
    return {"code": code, "json": json.loads(json_path.read_text()), "md": md_path.read_text()}


@pytest.fixture(scope="module")
def full_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    path = tmp_path_factory.mktemp("bench") / "full.json"
    code = bench.run(_args("--tiny", "--no-memory", "--json", str(path)))
    return {"code": code, "json": json.loads(path.read_text())}


def _ids(quick: bool) -> list[str]:
    return [row.id for row in suite.suite(quick=quick, tiny=True)]


def test_quick_json_has_every_row_of_the_quick_suite(quick_run: dict) -> None:
    assert quick_run["code"] == 0
    assert [rec["id"] for rec in quick_run["json"]["rows"]] == _ids(quick=True)


def test_full_json_has_every_row_of_the_full_suite(full_run: dict) -> None:
    assert full_run["code"] == 0
    ids = [rec["id"] for rec in full_run["json"]["rows"]]
    assert ids == _ids(quick=False)
    ops = {rec["op"] for rec in full_run["json"]["rows"]}
    assert ops == {
        *suite.DATA_OPS,
        *suite.FIXED_COST_OPS,
        "unfold scaling",
        "conv",
        "conv+bwd",
        "conv workspace",
    }


def test_suite_covers_the_issue_settings() -> None:
    full = suite.suite()
    configs = {row.config for row in full}
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "conv8"):
        assert f"All-CNN-C {layer} b32" in configs
    assert {row.padding_mode for row in full} == {"zeros", "reflect", "replicate", "circular"}
    assert {row.n for row in full} == {1, 2, 3, 4}
    scaling = [row for row in full if row.op == "unfold scaling"]
    assert [row.config.split(" output")[0] for row in scaling][::5] == ["1.12 MB", "1 GB"]


def test_every_row_is_timed_and_checked(quick_run: dict) -> None:
    for rec in quick_run["json"]["rows"]:
        assert rec["times"]["nfold"]["median_s"] > 0, rec["id"]
        assert set(rec["check"].values()) <= {"ok"}, (rec["id"], rec["check"])
        assert not rec["errors"], (rec["id"], rec["errors"])
        for peer, ratio in rec["ratios"].items():
            assert math.isfinite(ratio) and ratio > 0, (rec["id"], peer)


def test_peers_present_where_they_apply(full_run: dict) -> None:
    rows = {rec["id"]: rec for rec in full_run["json"]["rows"]}
    conv2 = "All-CNN-C conv2 b1"
    assert {"torch", "copy floor"} <= set(rows[f"unfold | {conv2}"]["ratios"])
    assert "naive" in rows[f"unfold+bwd | {conv2}"]["ratios"]
    assert "torch" in rows[f"conv+bwd | {conv2}"]["ratios"]
    assert "unchunked" in next(r for r in rows.values() if r["op"] == "conv workspace")["ratios"]
    assert "GEMM floor" in rows[f"conv+bwd | {conv2}"]["ratios"]
    patchify = [r for r in rows.values() if r["config"].startswith("patchify")]
    assert patchify and all("reshape+matmul" in r["ratios"] for r in patchify)
    fixed = [r for r in rows.values() if r["op"] in suite.FIXED_COST_OPS]
    assert fixed and all(set(r["ratios"]) == {"torch"} for r in fixed)
    if peers.optional("unfoldNd") is not None:
        assert "unfoldNd" in rows[f"fold | {conv2}"]["ratios"]
    if peers.optional("torchnd") is not None:
        four_d = [r for r in rows.values() if r["op"] == "conv+bwd" and r["n"] == 4]
        assert four_d and all("torchnd" in r["ratios"] for r in four_d)


def test_memory_is_measured(quick_run: dict) -> None:
    if memory.hwm_tools() is None:
        pytest.skip("no /proc/self/clear_refs: peak memory is not measured here")
    rows = [r for r in quick_run["json"]["rows"] if r["op"] not in suite.FIXED_COST_OPS]
    assert rows and all("nfold" in rec["memory"] for rec in rows)


def test_chunked_conv_holds_about_two_outputs() -> None:
    """max_workspace_bytes bounds the intermediates; input slabs are copied one at a time
    and the bias is added slab by slab, so the peak is about two outputs (the slabs and
    their concatenation), not five."""
    if memory.hwm_tools() is None:
        pytest.skip("no /proc/self/clear_refs: peak memory is not measured here")
    shape = (1, 8, 48, 48, 48)
    row = suite.make_row(
        "conv workspace", "t", shape, 3, 1, 1, out_channels=8, max_workspace_bytes=1 << 18
    )
    peak = memory.measure_memory([row])[row.id]["nfold"]
    assert peak <= 2.5 * 4 * math.prod(shape)


def test_markdown_names_machine_and_ops(quick_run: dict) -> None:
    md = quick_run["md"]
    meta = quick_run["json"]["meta"]
    assert f"torch {meta['torch']}" in md and f"{meta['cores']} cores" in md
    for op in ("unfold", "unfold+bwd", "fold", "fold+bwd", "unfold_transpose", "conv+bwd"):
        assert f"### {op}\n" in md
    for op in suite.FIXED_COST_OPS:
        assert f"### {op}\n" in md


def test_plot_writes_a_png(quick_run: dict, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    from nfold.bench.plot import plot

    path = tmp_path / "bench.png"
    plot(quick_run["json"], str(path))
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_plot_option_writes_a_png(tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "cli.png"
    code = bench.run(
        _args("--quick", "--tiny", "--no-memory", "--filter", "unfold | 3-d", "--plot", str(path))
    )
    assert code == 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE


def test_filter_selects_rows(tmp_path) -> None:
    path = tmp_path / "f.json"
    bench.run(
        _args("--quick", "--tiny", "--no-memory", "--filter", "FOLD+BWD | 1-d", "--json", str(path))
    )
    assert [r["id"] for r in json.loads(path.read_text())["rows"]] == [
        "unfold+bwd | 1-d (1,4,256)k5 p2",
        "fold+bwd | 1-d (1,4,256)k5 p2",
    ]


# ------------------------------------------------------------- one module per job (issue 12)


def test_bench_help_imports_neither_matplotlib_nor_the_memory_machinery() -> None:
    """`nfold bench --help` (and importing nfold) loads the suite, not the plot or the
    memory subprocess code."""
    code = (
        "import sys, nfold\n"
        "from nfold.__main__ import main\n"
        "try:\n"
        "    main(['bench', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('matplotlib', 'nfold.bench'))))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = proc.stdout.strip().splitlines()[-1]
    assert "nfold.bench.cli" in loaded  # the help did come from the bench package
    assert "matplotlib" not in loaded
    assert "nfold.bench.memory" not in loaded and "nfold.bench.plot" not in loaded


def test_no_memory_does_not_load_the_memory_module(tmp_path) -> None:
    code = (
        "import sys\n"
        "from nfold import bench\n"
        "bench.main(['--tiny', '--no-memory', '--filter', 'fold | 1-d'])\n"
        "print('nfold.bench.memory' in sys.modules, 'matplotlib' in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300
    )
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_python_m_nfold_bench_runs(tmp_path) -> None:
    path = tmp_path / "m.json"
    argv = ["--tiny", "--no-memory", "--filter", "unfold | 1-d", "--json", str(path)]
    subprocess.run([sys.executable, "-m", "nfold.bench", *argv], check=True, timeout=300)
    assert [r["id"] for r in json.loads(path.read_text())["rows"]] == [
        "unfold | 1-d (1,4,256)k5 p2"
    ]


# ------------------------------------------------------------- fixed cost (issue 12 targets)


def test_fixed_cost_rows_cover_every_call_with_and_without_grad() -> None:
    rows = suite.fixed_cost_rows()
    assert {(r.op, r.call) for r in rows} == {
        (op, call)
        for op in suite.FIXED_COST_OPS
        for call in ("unfold", "Unfold", "fold", "Fold", "conv", "Conv2d")
    }
    assert all(r.shape == (1, 1, 4, 4) and r.threads == 1 for r in rows)
    for quick in (False, True):
        assert set(rows) <= set(suite.suite(quick=quick))


@pytest.mark.parametrize("row", suite.fixed_cost_rows(), ids=lambda r: r.id)
def test_fixed_cost_row_runs_nfold_and_torch_on_the_same_call(row: suite.Row) -> None:
    built = peers.build(row)
    assert set(built.impls) == {"nfold", "torch"}
    ours, theirs = built.impls["nfold"](), built.impls["torch"]()
    if row.op.endswith("+bwd"):  # (output, grad of the input, grads of any parameters)
        assert isinstance(ours, tuple) and len(ours) == len(theirs) >= 2
        assert len(ours) == (4 if row.call in ("conv", "Conv2d") else 2)
    else:
        # requires_grad rows record the graph; plain rows do not (parameters included)
        assert ours.requires_grad == theirs.requires_grad == (row.op != "fixed cost")
    assert timing.check_results({"nfold": ours, "torch": theirs}, built) == {"torch": "ok"}


def test_fixed_cost_rows_run_on_one_thread_by_the_cpu_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen = []

    def fake_time_fn(fn, min_run_time, cpu_time=False):  # type: ignore[no-untyped-def]
        seen.append((torch.get_num_threads(), cpu_time))
        return {"median_s": 1.0, "iqr_s": 0.0, "runs": 1}

    monkeypatch.setattr(timing, "time_fn", fake_time_fn)
    threads = torch.get_num_threads()
    timing.bench_row(suite.fixed_cost_rows()[0], 0.0)
    assert seen == [(1, True), (1, True)] and torch.get_num_threads() == threads
    seen.clear()
    row = suite.make_row("unfold", "t", (1, 2, 8, 8), 3)
    timing.bench_row(row, 0.0, peers=("torch",))
    assert seen == [(threads, False), (threads, False)]


def test_fixed_cost_script_prints_every_target(capsys: pytest.CaptureFixture[str]) -> None:
    script = _script("fixed_cost")
    assert script.main(["--tiny", "--min-run-time", "0"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split(" | ")[0].lstrip("| "): ln for ln in out.splitlines() if ln.startswith("| ")}
    for row in suite.fixed_cost_rows():
        assert "| torch | <= 2.5 |" in out
        assert row.config in lines
    for layer in ("conv6", "conv7", "conv8"):
        assert f"| All-CNN-C {layer} b1 |" in out
    assert "| copy floor | <= 2 |" in out and "<= 1 |" in out
    assert "ratios meet their target" in out


def test_fixed_cost_script_threads_option(capsys: pytest.CaptureFixture[str]) -> None:
    script = _script("fixed_cost")
    threads = torch.get_num_threads()
    assert script.main(["--tiny", "--min-run-time", "0", "--only", "layers", "--threads", "1"]) == 0
    assert "1 torch threads (fixed cost: 1)" in capsys.readouterr().out
    assert torch.get_num_threads() == threads


def test_fixed_cost_script_rows() -> None:
    script = _script("fixed_cost")
    rows = script.target_rows()
    unfold = [r.config for r, against in rows if r.op == "unfold"]
    assert unfold == [
        "All-CNN-C conv6 b32",
        "All-CNN-C conv7 b32",
        "All-CNN-C conv8 b32",
        "unfoldNd README (64,3,32,32)k3 s2 p1",
    ]
    assert all(against == "copy floor" for r, against in rows if r.op == "unfold")
    fold = [r for r, against in rows if r.op == "fold"]
    assert len(fold) == 12 and all(
        against == "fastest peer" for r, against in rows if r.op == "fold"
    )
    assert {r.op for r, _ in rows} == {*suite.FIXED_COST_OPS, "unfold", "fold"}


def test_fold_target_is_taken_against_the_fastest_peer() -> None:
    script = _script("fixed_cost")
    record = {"ratios": {"copy floor": 9.0, "torch": 0.5, "unfoldNd": 1.2}}
    assert script.ratio_against(record, "fastest peer") == (1.2, "unfoldNd")
    assert script.ratio_against({"ratios": {"copy floor": 3.0}}, "fastest peer") == (
        None,
        "no peer",
    )
    assert script.ratio_against(record, "copy floor") == (9.0, "copy floor")


# ------------------------------------------------------------- what the run says (issue 11 §5)


def test_quick_suite_is_trimmed(quick_run: dict) -> None:
    """--quick took 1.5-2 minutes with 64 rows (issue 11): conv rows on the three quick
    layers only, no strided volume, padding modes for the forward only, one round."""
    quick = [r for r in suite.suite(quick=True) if r.op not in suite.FIXED_COST_OPS]
    assert len(quick) == 49
    layers = {r.config.split()[1] for r in quick if r.config.startswith("All-CNN-C")}
    assert layers == set(suite.QUICK_LAYERS)
    assert all(r.padding_mode == "zeros" for r in quick if r.op != "unfold")
    assert all(r.stride[0] == 1 for r in quick if r.n == 3)
    assert quick_run["json"]["meta"]["rounds"] == 1
    assert f"takes {bench.cli.QUICK_PROMISE}" in " ".join(_help().split())


def _help() -> str:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.format_help()


def test_memory_phase_reports_progress_row_by_row() -> None:
    rows = [r for r in suite.suite(quick=True, tiny=True) if r.op == "fold"][:2]
    lines: list[str] = []
    result = memory.measure_memory(rows, progress=lines.append)
    assert set(result) == {r.id for r in rows}
    assert [ln.split(" memory ")[0] for ln in lines] == ["[1/2]", "[2/2]"]
    assert rows[0].id in lines[0] and rows[1].id in lines[1]


def test_run_shows_memory_progress(capsys: pytest.CaptureFixture[str]) -> None:
    bench.run(_args("--tiny", "--quick", "--filter", "fold+bwd | 1-d"))
    err = capsys.readouterr().err
    assert "[1/2] memory unfold+bwd | 1-d" in err and "[2/2] memory fold+bwd | 1-d" in err


def test_missing_peer_is_named_not_none(quick_run: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    result = json.loads(json.dumps(quick_run["json"]))
    result["meta"].update(torchnd=None, unfoldNd=None)
    md = render.render_markdown(result)
    assert "None" not in md
    assert "torchnd not installed" in md and "unfoldNd not installed" in md
    monkeypatch.setattr(machine, "_version", lambda dist: None)
    assert [line.split(" ")[0] for line in machine.missing_peers(machine.machine_info())] == [
        "unfoldNd",
        "torchnd",
    ]


def test_run_says_which_peer_is_missing(capsys, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    real = machine._version
    monkeypatch.setattr(machine, "_version", lambda d: None if d == "torchnd" else real(d))
    bench.run(_args("--tiny", "--no-memory", "--filter", "unfold | 1-d"))
    err = capsys.readouterr().err
    assert "torchnd is not installed" in err and "unfoldNd is not installed" not in err


def test_busy_machine_is_warned(capsys, monkeypatch, tmp_path) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(os, "getloadavg", lambda: (64.0, 64.0, 64.0), raising=False)
    md = tmp_path / "busy.md"
    bench.run(_args("--tiny", "--no-memory", "--filter", "unfold | 1-d", "--markdown", str(md)))
    err = capsys.readouterr().err
    assert err.count("the machine is busy (load average 64.0") == 1
    assert "ratios are unreliable" in md.read_text()


def test_quiet_machine_is_not_warned(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0), raising=False)
    assert machine.busy_warning() is None
    monkeypatch.delattr(os, "getloadavg", raising=False)  # Windows has none
    assert machine.busy_warning() is None and machine.load_average() is None


def test_filter_matching_no_row_is_an_error(capsys) -> None:
    """As ``nfold check --only``: a filter that selects nothing exits 2 and says so."""
    assert bench.run(_args("--tiny", "--no-memory", "--filter", "no such row")) == 2
    assert "no benchmark row matches --filter 'no such row'" in capsys.readouterr().err
