"""The benchmark suite runs end to end on toy sizes (no timing assertions anywhere)."""

from __future__ import annotations

import argparse
import json
import math

import pytest

from nfold import bench

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(list(argv))


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
    return [row.id for row in bench.suite(quick=quick, tiny=True)]


def test_quick_json_has_every_row_of_the_quick_suite(quick_run: dict) -> None:
    assert quick_run["code"] == 0
    assert [rec["id"] for rec in quick_run["json"]["rows"]] == _ids(quick=True)


def test_full_json_has_every_row_of_the_full_suite(full_run: dict) -> None:
    assert full_run["code"] == 0
    ids = [rec["id"] for rec in full_run["json"]["rows"]]
    assert ids == _ids(quick=False)
    ops = {rec["op"] for rec in full_run["json"]["rows"]}
    assert ops == {*bench.DATA_OPS, "unfold scaling", "conv", "conv+bwd", "conv workspace"}


def test_suite_covers_the_issue_settings() -> None:
    full = bench.suite()
    configs = {row.config for row in full}
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "conv6", "conv7", "conv8"):
        assert f"All-CNN-C {layer} b32" in configs
    assert {row.padding_mode for row in full} == set(bench.PADDING_MODES)
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
    if bench._optional("unfoldNd") is not None:
        assert "unfoldNd" in rows[f"fold | {conv2}"]["ratios"]
    if bench._optional("torchnd") is not None:
        four_d = [r for r in rows.values() if r["op"] == "conv+bwd" and r["n"] == 4]
        assert four_d and all("torchnd" in r["ratios"] for r in four_d)


def test_memory_is_measured(quick_run: dict) -> None:
    if bench._hwm_tools() is None:
        pytest.skip("no /proc/self/clear_refs: peak memory is not measured here")
    rows = quick_run["json"]["rows"]
    assert all("nfold" in rec["memory"] for rec in rows)


def test_chunked_conv_holds_about_two_outputs() -> None:
    """max_workspace_bytes bounds the intermediates; input slabs are copied one at a time
    and the bias is added slab by slab, so the peak is about two outputs (the slabs and
    their concatenation), not five."""
    if bench._hwm_tools() is None:
        pytest.skip("no /proc/self/clear_refs: peak memory is not measured here")
    shape = (1, 8, 48, 48, 48)
    row = bench._row(
        "conv workspace", "t", shape, 3, 1, 1, out_channels=8, max_workspace_bytes=1 << 18
    )
    peak = bench.measure_memory([row], progress=False)[row.id]["nfold"]
    assert peak <= 2.5 * 4 * math.prod(shape)


def test_markdown_names_machine_and_ops(quick_run: dict) -> None:
    md = quick_run["md"]
    meta = quick_run["json"]["meta"]
    assert f"torch {meta['torch']}" in md and f"{meta['cores']} cores" in md
    for op in ("unfold", "unfold+bwd", "fold", "fold+bwd", "unfold_transpose", "conv+bwd"):
        assert f"### {op}\n" in md


def test_plot_writes_a_png(quick_run: dict, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "bench.png"
    bench.plot(quick_run["json"], str(path))
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
