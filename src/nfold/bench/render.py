"""Markdown tables of a run's records (ratios, peak memory) and the results page."""

from __future__ import annotations

from typing import Any

from .peers import FLOORS, OPTIONAL_PEERS, PEER_ORDER

MEMORY_MIN_BYTES = 1 << 20  # RSS counters are per-thread batched: ~0.25 MB slack


def fmt_ms(t: float | None) -> str:
    if t is None:
        return ""
    return f"{1e3 * t:.0f}" if t >= 0.1 else f"{1e3 * t:.3g}"


def peers_of(records: list[dict[str, Any]]) -> list[str]:
    """The peers that appear in ``records``, in table order."""
    seen = {name for rec in records for name in (*rec["ratios"], *rec["check"], *rec["errors"])}
    seen.discard("nfold")
    return [p for p in PEER_ORDER if p in seen]


def _cell(rec: dict[str, Any], peer: str) -> str:
    if peer in rec["ratios"]:
        return f"{rec['ratios'][peer]:.2f}"
    if rec["check"].get(peer, "ok") != "ok":
        return "MISMATCH"
    return "error" if peer in rec["errors"] else "–"


def render_table(result: dict[str, Any]) -> str:
    """Markdown: one table per op; ratio columns are nfold time / peer time."""
    lines: list[str] = []
    by_op: dict[str, list[dict[str, Any]]] = {}
    for rec in result["rows"]:
        by_op.setdefault(rec["op"], []).append(rec)
    for op, records in by_op.items():
        peers = peers_of(records)
        mem_names = ["nfold", *[p for p in peers if p not in FLOORS]]
        has_mem = any(rec.get("memory") for rec in records)
        head = ["config", "nfold ms"] + [f"÷ {p}" for p in peers]
        if op == "unfold scaling":
            head.append("nfold GB/s")
        if has_mem:
            head += [f"mem/out {p}" for p in mem_names]
        lines += [
            f"### {op}",
            "",
            "| " + " | ".join(head) + " |",
            "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|",
        ]
        for rec in records:
            t = rec["times"].get("nfold", {}).get("median_s")
            cells = [rec["config"], fmt_ms(t)] + [_cell(rec, p) for p in peers]
            if op == "unfold scaling":
                cells.append("" if t is None else f"{rec['out_bytes'] / t / 1e9:.2f}")
            if has_mem:
                mem = rec.get("memory") or {}
                for p in mem_names:
                    v = mem.get(p)
                    small = v is None or rec["out_bytes"] < MEMORY_MIN_BYTES
                    cells.append("" if small else f"{v / rec['out_bytes']:.2f}")
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    problems = [
        (rec["id"], name, msg)
        for rec in result["rows"]
        for name, msg in (*rec["errors"].items(), *rec["check"].items())
        if msg != "ok"
    ]
    if problems:
        lines += ["### peers that failed or disagreed (no ratio reported)", ""]
        lines += [f"- `{rid}` — {name}: {msg}" for rid, name, msg in problems]
        lines.append("")
    return "\n".join(lines)


def render_markdown(result: dict[str, Any]) -> str:
    """The results page: the run's machine, versions and method, then the tables."""
    m = result["meta"]
    versions = ", ".join(
        f"{peer} {m[peer]}" if m.get(peer) else f"{peer} not installed (no ÷ {peer} ratios)"
        for peer in OPTIONAL_PEERS
    )
    head = [
        "# nfold benchmark results",
        "",
        f"- date: {m['date']}; preset: {m['preset']}; All-CNN-C batch: {m['batch_size']}",
        f"- machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"torch threads {m['torch_threads']}; load average at start "
        f"{_fmt_load(m.get('loadavg_start'))}, at end {_fmt_load(m.get('loadavg_end'))}",
        f"- torch {m['torch']}, nfold {m['nfold']}, {versions}, Python {m['python']}, "
        f"{m['platform']}",
        f"- timing: torch.utils.benchmark.Timer.blocked_autorange(min_run_time={m['min_run_time']})"
        f", median (the best of {m['rounds']} round-robin rounds); all peers timed in the same run",
        *(f"- **{w}**" for w in m.get("warnings", [])),
        "",
        "Ratio columns `÷ peer` are nfold time / peer time: below 1 nfold is faster. The copy "
        "floor is `clone()` of the column matrix (once per pass). `mem/out` is the peak "
        "extra memory of the op (output included) over its output size, measured in a fresh "
        "subprocess (blank for outputs under 1 MB: RSS counters are good to ~0.25 MB). "
        "Every peer's result was checked against nfold's before timing.",
        "",
        "",
    ]
    return "\n".join(head) + render_table(result)


def _fmt_load(load: Any) -> str:
    return "n/a" if not load else "/".join(f"{v:.1f}" for v in load)
