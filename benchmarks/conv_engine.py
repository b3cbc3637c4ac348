"""Issue 13: the conv engines (``method="auto"`` and ``"gemm"``) against their peers, as
ratios timed in one run (nfold time / peer time; below 1 nfold is faster).

    python benchmarks/conv_engine.py            # full sizes
    python benchmarks/conv_engine.py --quick    # small sizes, about a minute
    python benchmarks/conv_engine.py --target 1 # one target only

Targets (worst row per target):
1. N = 4, 5: "auto" vs ``torchnd.conv_nd``: forward+backward <= 0.8, forward <= 1.0,
   peak memory <= 1.25 (forward+backward).
2. N <= 3: "auto" vs torch's ``F.conv2d`` forward+backward on All-CNN-C <= 1.05.
3. "gemm" forward+backward vs a GEMM floor <= 1.3: the same three products (forward,
   input gradient, weight gradient), each timed as the fastest of one big
   ``torch.matmul`` and a batched matmul on operands built beforehand.
4. ``max_workspace_bytes=64 MB`` on a (1, 16, 64, 64, 64) 3-d and a (1, 8, 24, 24, 24, 24)
   4-d conv ("auto"): peak extra memory <= limit + input + output, speed >= 0.8x unbounded
   (ratio = bounded time / unbounded time <= 1.25).

Peak memory: each measurement runs in a fresh subprocess (glibc told to return every
allocation >= 64 KiB to the OS), the op runs once to warm up, the kernel's peak-RSS
counter is reset and the op runs again; the rise of ``VmHWM`` over the resting RSS is
its peak extra memory (output and gradients included). Linux only.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils import benchmark

import nfold
from nfold.bench import memory
from nfold.bench.suite import ALL_CNN_C

MB = 2**20


@dataclass
class Case:
    target: int
    name: str
    shape: tuple[int, ...]  # input (B, C, *S)
    c_out: int
    k: int
    stride: int = 1
    padding: int = 1
    groups: int = 1
    limit: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.shape) - 2


def cases(quick: bool) -> list[Case]:
    lf, s4 = ((1, 2, 12, 12, 12, 12), 12) if quick else ((2, 4, 16, 16, 16, 16), 16)
    wide = (1, 32, 8, 8, 8, 8) if quick else (1, 32, 12, 12, 12, 12)
    dw = (1, 16, s4 - 2, s4 - 2, s4 - 2, s4 - 2)
    five = (1, 2, 7, 7, 7, 7, 7) if quick else (1, 4, 9, 9, 9, 9, 9)
    out = [
        Case(1, f"4-d light field {lf} k3 p1 ->{2 * lf[1]}", lf, 2 * lf[1], 3),
        Case(1, f"4-d strided {lf} k3 s2 p1 ->{2 * lf[1]}", lf, 2 * lf[1], 3, stride=2),
        Case(1, f"4-d wide {wide} k3 p1 ->32", wide, 32, 3),
        Case(1, f"4-d depthwise {dw} k3 p1 groups=16", dw, 16, 3, groups=16),
        Case(1, f"5-d {five} k3 p1 ->{2 * five[1]}", five, 2 * five[1], 3),
    ]
    b = 4 if quick else 32
    layers = ("conv1", "conv2", "conv3", "conv7", "conv8") if quick else [r[0] for r in ALL_CNN_C]
    for name, c_in, c_out, size, k, s, p in ALL_CNN_C:
        if name in layers:
            shape = (b, c_in, size, size)
            out.append(Case(2, f"All-CNN-C {name} b{b}", shape, c_out, k, s, p))
    for name, c_in, c_out, size, k, s, p in ALL_CNN_C:
        if name in layers:
            shape = (b, c_in, size, size)
            out.append(Case(3, f"All-CNN-C {name} b{b}", shape, c_out, k, s, p))
    out.append(Case(3, f"3-d {lf[:2] + lf[3:]} k3 p1", lf[:2] + lf[3:], 2 * lf[1], 3))
    vol = (1, 16, 32, 32, 32) if quick else (1, 16, 64, 64, 64)
    lf4 = (1, 8, 16, 16, 16, 16) if quick else (1, 8, 24, 24, 24, 24)
    limit = 16 * MB if quick else 64 * MB
    out.append(Case(4, f"3-d {vol} k3 p1 ->16 limit {limit // MB} MB", vol, 16, 3, limit=limit))
    out.append(Case(4, f"4-d {lf4} k3 p1 ->8 limit {limit // MB} MB", lf4, 8, 3, limit=limit))
    return out


def operands(case: Case, grad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(case.shape, generator=gen).requires_grad_(grad)
    w_shape = (case.c_out, case.shape[1] // case.groups, *(case.k,) * case.n)
    w = (0.1 * torch.randn(w_shape, generator=gen)).requires_grad_(grad)
    return x, w


def conv_fn(case: Case, impl: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    kw = {"stride": case.stride, "padding": case.padding, "groups": case.groups}
    if impl == "torchnd":
        import torchnd

        dims = tuple(range(-case.n, 0))
        return lambda x, w: torchnd.conv_nd(x, w, dim=dims, **kw)
    if impl == "torch":
        native = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[case.n]
        return lambda x, w: native(x, w, **kw)
    if impl == "unbounded":
        return lambda x, w: nfold.conv(x, w, method="auto", **kw)
    limit = case.limit if impl == "auto" else None
    return lambda x, w: nfold.conv(x, w, method=impl, max_workspace_bytes=limit, **kw)


def step(case: Case, impl: str, backward: bool) -> Callable[[], Any]:
    x, w = operands(case, backward)
    fn = conv_fn(case, impl)
    if not backward:
        return lambda: fn(x, w)
    g = torch.randn_like(fn(x, w))
    return lambda: torch.autograd.grad(fn(x, w), (x, w), g)


def gemm_floor(case: Case) -> Callable[[], Any]:
    """The three GEMMs of a conv (forward, input grad, weight grad), each in the faster of
    one big matmul and a batched (per sample, per group) matmul, on prebuilt operands."""
    b, c = case.shape[:2]
    g, o = case.groups, case.c_out
    x, w = operands(case, False)
    with torch.no_grad():
        length = nfold.conv(x, w, stride=case.stride, padding=case.padding, groups=g)[0, 0].numel()
    rows = c // g * case.k**case.n
    gen = torch.Generator().manual_seed(1)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen)

    # big: batch merged into the columns; batched: one product per (sample, group)
    big = {
        "fwd": (r(g, o // g, rows), r(g, rows, b * length)),
        "dx": (r(g, rows, o // g), r(g, o // g, b * length)),
        "dw": (r(g, o // g, b * length), r(g, b * length, rows)),
    }
    batched = {
        "fwd": (r(1, g, o // g, rows).expand(b, -1, -1, -1), r(b, g, rows, length)),
        "dx": (r(1, g, rows, o // g).expand(b, -1, -1, -1), r(b, g, o // g, length)),
        "dw": (r(b, g, o // g, length), r(b, g, length, rows)),
    }
    best = []
    for key in ("fwd", "dx", "dw"):
        fns = [
            lambda a=big[key]: torch.matmul(*a),
            (lambda a=batched[key]: torch.matmul(*a).sum(0))
            if key == "dw"
            else (lambda a=batched[key]: torch.matmul(*a)),
        ]
        times = [median(f, 0.1) for f in fns]
        best.append(fns[times.index(min(times))])
    return lambda: [f() for f in best]


def median(fn: Callable[[], Any], min_run_time: float) -> float:
    fn()
    timer = benchmark.Timer(stmt="fn()", globals={"fn": fn})
    return timer.blocked_autorange(min_run_time=min_run_time).median


def best_of(fns: dict[str, Callable[[], Any]], min_run_time: float) -> dict[str, float]:
    """Round-robin thrice, keep each one's best median (load spikes hit every peer)."""
    best: dict[str, float] = {}
    for _ in range(3):
        for name, fn in fns.items():
            t = median(fn, min_run_time / 3)
            best[name] = min(best.get(name, t), t)
    return best


# --------------------------------------------------------------------------- memory


def peak_bytes(case: Case, impl: str, backward: bool, quick: bool) -> int | None:
    """Peak extra RSS of one call, measured in a fresh subprocess (None off Linux)."""
    if not os.path.exists("/proc/self/clear_refs"):
        return None
    spec = json.dumps({"quick": quick, "name": case.name, "impl": impl, "backward": backward})
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child"],
        input=spec,
        capture_output=True,
        text=True,
        check=True,
    )
    return int(done.stdout.strip())


def _memory_child() -> None:
    spec = json.load(sys.stdin)
    memory.return_freed_memory()
    torch.set_num_threads(1)
    case = next(c for c in cases(spec["quick"]) if c.name == spec["name"])
    fn = step(case, spec["impl"], spec["backward"])
    fn()
    tools = memory.hwm_tools()
    if tools is None:
        raise SystemExit("peak memory needs /proc/self/clear_refs (Linux)")
    reset, status = tools
    reset()
    rest = status("VmRSS")
    fn()
    print(status("VmHWM") - rest)


# --------------------------------------------------------------------------- targets


def run(quick: bool, targets: set[int], min_run_time: float) -> list[dict[str, Any]]:
    rows = []
    for case in cases(quick):
        if case.target not in targets:
            continue
        print(f"  {case.target}: {case.name}", file=sys.stderr, flush=True)
        row: dict[str, Any] = {"target": case.target, "case": case.name}
        if case.target == 1:
            t = best_of(
                {
                    "auto": step(case, "auto", False),
                    "torchnd": step(case, "torchnd", False),
                    "auto+bwd": step(case, "auto", True),
                    "torchnd+bwd": step(case, "torchnd", True),
                },
                min_run_time,
            )
            mem = [peak_bytes(case, impl, True, quick) for impl in ("auto", "torchnd")]
            row["fwd"] = t["auto"] / t["torchnd"]
            row["fwd+bwd"] = t["auto+bwd"] / t["torchnd+bwd"]
            row["memory"] = None if None in mem else mem[0] / max(mem[1], 1)  # type: ignore[operator]
            row["ms"] = 1e3 * t["auto+bwd"]
        elif case.target == 2:
            t = best_of(
                {"auto": step(case, "auto", True), "torch": step(case, "torch", True)},
                min_run_time,
            )
            row["fwd+bwd"] = t["auto"] / t["torch"]
            row["ms"] = 1e3 * t["auto"]
        elif case.target == 3:
            t = best_of({"gemm": step(case, "gemm", True), "floor": gemm_floor(case)}, min_run_time)
            row["fwd+bwd"] = t["gemm"] / t["floor"]
            row["ms"] = 1e3 * t["gemm"]
        else:
            t = best_of(
                {"auto": step(case, "auto", False), "unbounded": step(case, "unbounded", False)},
                min_run_time,
            )
            x, w = operands(case, False)
            in_out = x.numel() * 4 + x.numel() * 4 * case.c_out // case.shape[1]
            peak = peak_bytes(case, "auto", False, quick)
            row["fwd"] = t["auto"] / t["unbounded"]
            row["memory"] = None if peak is None else peak / (case.limit + in_out)  # type: ignore[operator]
            row["ms"] = 1e3 * t["auto"]
        rows.append(row)
    return rows


GOALS = {1: {"fwd": 1.0, "fwd+bwd": 0.8, "memory": 1.25}, 2: {"fwd+bwd": 1.05},
         3: {"fwd+bwd": 1.3}, 4: {"fwd": 1.25, "memory": 1.0}}  # fmt: skip
PEERS = {1: "torchnd", 2: "torch F.conv2d", 3: "GEMM floor", 4: "unbounded / limit+in+out"}


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| target | case | fwd | fwd+bwd | memory | nfold ms | goal |",
        "|---|---|---|---|---|---|---|",
    ]

    def cell(v: float | None) -> str:
        return "" if v is None else f"{v:.2f}"

    for r in rows:
        goal = ", ".join(f"{k} <= {v}" for k, v in GOALS[r["target"]].items())
        lines.append(
            f"| {r['target']} vs {PEERS[r['target']]} | {r['case']} | {cell(r.get('fwd'))} | "
            f"{cell(r.get('fwd+bwd'))} | {cell(r.get('memory'))} | {r['ms']:.2f} | {goal} |"
        )
    lines.append("")
    lines.append("| target | worst fwd | worst fwd+bwd | worst memory | met |")
    lines.append("|---|---|---|---|---|")
    for target in sorted({r["target"] for r in rows}):
        mine = [r for r in rows if r["target"] == target]
        worst = {
            k: max((r[k] for r in mine if r.get(k) is not None), default=None)
            for k in ("fwd", "fwd+bwd", "memory")
        }
        met = all(
            worst[k] is None or worst[k] <= goal  # type: ignore[operator]
            for k, goal in GOALS[target].items()
        )
        lines.append(
            f"| {target} | {cell(worst['fwd'])} | {cell(worst['fwd+bwd'])} | "
            f"{cell(worst['memory'])} | {'yes' if met else 'NO'} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes")
    parser.add_argument("--target", type=int, action="append", help="1-4 (repeatable)")
    parser.add_argument("--min-run-time", type=float, default=None)
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child()
        return 0
    min_run_time = args.min_run_time or (0.15 if args.quick else 0.6)
    rows = run(args.quick, set(args.target or (1, 2, 3, 4)), min_run_time)
    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, timed on 1 thread (Timer's default), "
        f"load {os.getloadavg()[0]:.1f}; ratio = nfold / peer (memory: peak extra RSS ratio)\n"
    )
    print(render(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
