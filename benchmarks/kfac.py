"""Issue 14: nfold.patch_covariance (KFAC input factors) against unfold + matmul, as
ratios timed in the same run (below 1: patch_covariance is faster).

    python benchmarks/kfac.py                  # every config, time and peak memory
    python benchmarks/kfac.py --quick          # smaller inputs, seconds
    python benchmarks/kfac.py --filter conv2d  # configs whose name contains a string

Peers, both built on nfold's own unfold (the whole unfolded matrix U, (B, C*prod(k), L)):
- "expand": ``A = U.transpose(1, 2).reshape(-1, D)`` per group, then ``A.mT @ A``
  (targets: time ratio <= 0.7; peak memory <= result + workspace + 1 MiB);
- "reduce": ``m = U.mean(-1)`` per group, then ``m.mT @ m`` (target: time ratio <= 0.2).
Each result is checked against its peer (float32, relative error of the largest entry)
before it is timed.

Peak memory: in a fresh subprocess per (config, implementation), with glibc told to serve
every allocation of 64 KiB or more by its own mmap (returned to the OS on free), the op
runs once to warm up, the peak-RSS counter is reset (``/proc/self/clear_refs``), the op
runs again and the rise of ``VmHWM`` over the resting RSS is its peak extra memory
(result included); as ``nfold bench`` does. Linux only; skipped elsewhere.

The machine these numbers come from may be shared: ratios are noisy, run it twice.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from typing import Any, NamedTuple

import torch
from torch.utils.benchmark import Timer

import nfold
from nfold import kfac
from nfold.bench import memory
from nfold.bench.suite import ALL_CNN_C, QUICK_LAYERS


class Config(NamedTuple):
    name: str
    shape: tuple[int, ...]
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    padding_mode: str = "zeros"


def configs(quick: bool) -> list[Config]:
    """The issue's layer, All-CNN-C's layers (as in ``nfold bench``), then other shapes."""
    b = 4 if quick else 32
    s = 16 if quick else 32
    out = [Config(f"conv2d 64-64 k3 p1 ({b},64,{s},{s})", (b, 64, s, s), 3, padding=1)]
    for name, c_in, _, size, k, stride, pad in ALL_CNN_C:
        if quick and name not in QUICK_LAYERS:
            continue
        shape = (b, c_in, size, size)
        label = f"All-CNN-C {name} k{k} s{stride} p{pad} ({','.join(map(str, shape))})"
        out.append(Config(label, shape, k, stride, pad))
    small = b // 16 or 1
    out += [
        Config(
            f"conv2d 64 k3 p1 reflect ({b},64,{s},{s})",
            (b, 64, s, s),
            3,
            padding=1,
            padding_mode="reflect",
        ),  # fmt: skip
        Config(f"conv2d 64 k3 p1 g4 ({b},64,{s},{s})", (b, 64, s, s), 3, 1, 1, groups=4),
        Config(f"depthwise 64 k3 p1 ({b},64,{s},{s})", (b, 64, s, s), 3, 1, 1, groups=64),
        Config(f"conv1d 64 k5 p2 ({b},64,{s * 32})", (b, 64, s * 32), 5, padding=2),
        Config(f"conv3d 16 k3 p1 ({small},16,{s},{s},{s})", (small, 16, s, s, s), 3, padding=1),
        Config(
            f"conv4d 4 k3 p1 ({small},4,12,12,12,12)", (small, 4, 12, 12, 12, 12), 3, padding=1
        ),  # fmt: skip
    ]
    return out


def _input(cfg: Config) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(cfg.shape)


def _unfolded(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """``(G, B, D, L)`` view of nfold's unfold."""
    u = nfold.unfold(x, cfg.kernel, padding=cfg.padding, stride=cfg.stride,
                     padding_mode=cfg.padding_mode)  # fmt: skip
    b, rows, positions = u.shape
    return u.view(b, cfg.groups, rows // cfg.groups, positions).transpose(0, 1)


def implementations(cfg: Config, reduction: str) -> dict[str, Any]:
    x = _input(cfg)

    def ours() -> torch.Tensor:
        return nfold.patch_covariance(
            x, cfg.kernel, padding=cfg.padding, stride=cfg.stride, groups=cfg.groups,
            padding_mode=cfg.padding_mode, reduction=reduction,
        )  # fmt: skip

    def peer() -> torch.Tensor:
        u = _unfolded(x, cfg)
        if reduction == "expand":
            a = u.transpose(2, 3).reshape(cfg.groups, -1, u.shape[2])  # (G, B*L, D)
        else:
            a = u.mean(-1)  # (G, B, D)
        out = a.mT @ a
        return out if cfg.groups > 1 else out[0]

    return {"patch_covariance": ours, "unfold+matmul": peer}


def _check(impls: dict[str, Any]) -> float:
    ours, ref = (fn() for fn in impls.values())
    return float((ours - ref).abs().max() / ref.abs().max())


def _time(fn: Any, min_run_time: float) -> float:
    timer = Timer("fn()", globals={"fn": fn})
    return float(timer.blocked_autorange(min_run_time=min_run_time).median)


# --------------------------------------------------------------------------- memory


def _memory_child() -> None:
    spec = json.loads(sys.argv[2])
    memory.return_freed_memory()
    cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in spec["cfg"].items()})
    fn = implementations(cfg, spec["reduction"])[spec["impl"]]
    fn()
    tools = memory.hwm_tools()
    if tools is None:
        raise SystemExit("peak memory needs /proc/self/clear_refs (Linux)")
    reset, status = tools
    base = status("VmRSS")
    reset()
    fn()
    print(max(0, status("VmHWM") - base))


def peak_memory(cfg: Config, reduction: str, impl: str) -> int | None:
    spec = json.dumps({"cfg": cfg._asdict(), "reduction": reduction, "impl": impl})
    proc = subprocess.run(
        [sys.executable, __file__, "--memory-child", spec], capture_output=True, text=True
    )
    return int(proc.stdout) if proc.returncode == 0 and proc.stdout.strip() else None


# --------------------------------------------------------------------------- main


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small inputs")
    parser.add_argument("--filter", default=None, help="only configs containing this")
    parser.add_argument("--reduction", choices=("expand", "reduce", "both"), default="both")
    parser.add_argument("--min-run-time", type=float, default=None)
    parser.add_argument("--no-memory", action="store_true", help="skip peak memory")
    args = parser.parse_args(argv)
    min_run_time = args.min_run_time or (0.1 if args.quick else 1.0)
    reductions = ("expand", "reduce") if args.reduction == "both" else (args.reduction,)
    cfgs = [c for c in configs(args.quick) if not args.filter or args.filter in c.name]

    print(
        f"torch {torch.__version__}, {os.cpu_count()} cores, timed on 1 thread (Timer's default), "
        f"load {os.getloadavg()[0]:.1f}; default workspace {_mib(kfac._AUTO_WORKSPACE)} MiB; "
        "ratio = patch_covariance time / unfold+matmul time (noisy on a shared machine)\n"
    )
    head = f"{'config':40} {'reduction':9} {'ours ms':>9} {'peer ms':>9} {'ratio':>6} {'err':>8}"
    if not args.no_memory:
        head += f" {'result':>7} {'ours MiB':>8} {'peer MiB':>8} {'bound':>6}"
    print(head)
    worst = 0.0
    for cfg in cfgs:
        for reduction in reductions:
            impls = implementations(cfg, reduction)
            err = _check(impls)
            worst = max(worst, err)
            ours, peer = (_time(fn, min_run_time) for fn in impls.values())
            line = (
                f"{cfg.name:40} {reduction:9} {ours * 1e3:9.2f} {peer * 1e3:9.2f} "
                f"{ours / peer:6.2f} {err:8.1e}"
            )
            if not args.no_memory:
                result = impls["patch_covariance"]().numel() * 4
                mem = {name: peak_memory(cfg, reduction, name) for name in impls}
                bound = result + kfac._AUTO_WORKSPACE + 2**20
                ok = mem["patch_covariance"] is not None and mem["patch_covariance"] <= bound
                line += (
                    f" {_mib(result):>7} {_mib(mem['patch_covariance']):>8} "
                    f"{_mib(mem['unfold+matmul']):>8} {'ok' if ok else 'over':>6}"
                )
            print(line, flush=True)
    print(
        "\nerr: max |ours - peer| / max |peer| in float32. bound: peak extra memory of "
        "patch_covariance <= result + default workspace + 1 MiB."
    )
    return 0 if worst < 1e-4 else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--memory-child":
        _memory_child()
    else:
        sys.exit(main())
