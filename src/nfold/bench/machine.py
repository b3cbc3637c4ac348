"""The machine a run measures on: versions, cores, load, and what makes ratios doubtful."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
from typing import Any

import torch

from .peers import OPTIONAL_PEERS


def load_average() -> tuple[float, float, float] | None:
    """``os.getloadavg()``, or None where the platform has none."""
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def busy_warning() -> str | None:
    """A warning when the 1-minute load average is above the usable core count: other
    processes then take turns with the timed code, and ratios become unreliable."""
    load, cores = load_average(), usable_cores()
    if load is None or load[0] <= cores:
        return None
    return (
        f"warning: the machine is busy (load average {load[0]:.1f} on {cores} usable cores); "
        "other processes share the cores, so the ratios are unreliable"
    )


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def missing_peers(info: dict[str, Any]) -> list[str]:
    """One line per optional peer that is not installed (its ratios are absent)."""
    return [
        f"{peer} is not installed: no '÷ {peer}' ratios (pip install {peer}, or "
        "pip install 'nfold[bench]')"
        for peer in OPTIONAL_PEERS
        if info.get(peer) is None
    ]


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "nfold": _version("nfold"),
        **{peer: _version(dist) for peer, dist in OPTIONAL_PEERS.items()},
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "loadavg_start": load_average(),
    }
