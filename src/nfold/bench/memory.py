"""Peak memory of every implementation of some rows, measured in one fresh subprocess.

The timing process's heap does not matter: in the child, glibc is told to return every
allocation >= 64 KiB to the OS on free (``mallopt``), inputs are built, the op is run
once to load its code, the kernel's peak-RSS counter is reset (``/proc/self/clear_refs``),
the op is run again and the rise of ``VmHWM`` over the resting RSS is the op's peak extra
memory (output included). The kernel batches RSS updates per thread, so values are good
to ~0.25 MB. Linux only; elsewhere nothing is measured.

The child reads the rows as JSON on stdin and writes one tagged JSON line per row on
stdout as soon as that row is measured, so the parent can show progress.
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict

import torch

from .peers import build
from .suite import Row, fmt_bytes

_TAG = "nfold.bench.memory "  # starts every result line the child writes


def return_freed_memory() -> None:
    """Make every allocation >= 64 KiB its own mmap, returned to the OS on free (glibc),
    so that peak RSS measures what an op holds, not what the allocator keeps."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 1 << 16)  # M_TRIM_THRESHOLD
    except OSError:
        pass


def hwm_tools() -> tuple[Callable[[], None], Callable[[str], int]] | None:
    """(reset the peak-RSS counter, read a /proc/self/status field in bytes), or None
    where the kernel does not offer them."""
    if not (os.path.exists("/proc/self/clear_refs") and os.path.exists("/proc/self/status")):
        return None

    def reset() -> None:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS

    def status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    try:
        reset()
    except OSError:
        return None
    return reset, status


def measure_memory(
    rows: list[Row], progress: Callable[[str], None] | None = None
) -> dict[str, dict[str, int]]:
    """Peak extra bytes of every impl of ``rows``: ``{row id: {impl: bytes}}``.

    ``progress`` is called with one line per row as the subprocess finishes it.
    """
    spec = {"rows": [asdict(r) for r in rows], "threads": torch.get_num_threads()}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from nfold.bench.memory import child_main; child_main()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    out: dict[str, dict[str, int]] = {}
    for line in proc.stdout:
        if not line.startswith(_TAG):  # something the child's libraries printed
            continue
        item = json.loads(line.removeprefix(_TAG))
        out[item["id"]] = item["memory"]
        if progress is not None:
            sizes = ", ".join(f"{k} {fmt_bytes(v)}" for k, v in item["memory"].items())
            progress(f"[{len(out)}/{len(rows)}] memory {item['id']}: {sizes or 'not measured'}")
    if proc.wait() != 0:
        if progress is not None:
            progress(f"memory subprocess failed (exit {proc.returncode}); no memory column")
        return {}
    return out


def child_main() -> None:
    """Entry point of the memory subprocess: spec JSON on stdin, JSON lines on stdout."""
    spec = json.load(sys.stdin)
    return_freed_memory()
    tools = hwm_tools()
    gc.collect()
    gc.freeze()  # the import graph is large: keep the collector off it while measuring
    torch.set_num_threads(spec["threads"])
    for item in spec["rows"]:
        row = Row.from_dict(item)
        memory = {} if tools is None else _peaks(row, *tools)
        print(_TAG + json.dumps({"id": row.id, "memory": memory}), flush=True)


def _peaks(row: Row, reset: Callable[[], None], status: Callable[[str], int]) -> dict[str, int]:
    built = build(row)
    peaks: dict[str, int] = {}
    for name, fn in built.impls.items():
        try:
            fn()  # load code pages, size thread-local buffers (tensors die by refcount)
            base = status("VmRSS")
            reset()
            fn()
            peaks[name] = max(0, status("VmHWM") - base)
        except Exception:
            continue
    return peaks
