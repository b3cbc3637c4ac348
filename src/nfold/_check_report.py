"""Rendering of ``nfold check``: the :class:`Report` (a table, a summary, JSON)."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from typing import Any

from ._check_verdicts import (
    COMPARED,
    ERROR,
    EXACT,
    MISMATCH,
    NEAR_ZERO_LEGEND,
    NOT_COMPARED,
    RATIO,
    ROUND_OFF,
    SKIPPED,
    TOL_FACTOR,
    Row,
)


def _fmt(value: float) -> str:
    if math.isnan(value):
        return "-"
    return "0" if value == 0 else f"{value:.2e}"


@dataclass
class Report:
    """What a check found: one :class:`Row` per setting (or layer) and quantity.

    ``ok`` is True only when something was compared and nothing failed; ``str(report)``
    is the table. ``nothing_compared`` says why, when no row got a verdict.
    """

    rows: list[Row]
    title: str
    dtype: str = "float32"
    device: str = "cpu"
    seed: int = 0
    seconds: float = 0.0
    first_mismatch: str | None = None
    nothing_compared: str = "no setting was run"

    @property
    def compared(self) -> bool:
        """At least one row got a verdict from a comparison."""
        return any(row.verdict in COMPARED for row in self.rows)

    @property
    def ok(self) -> bool:
        """Something was compared, and there is no MISMATCH and no ERROR."""
        return self.compared and not any(row.failed for row in self.rows)

    def counts(self) -> dict[str, int]:
        out = {v: 0 for v in (EXACT, ROUND_OFF, MISMATCH, ERROR, SKIPPED, NOT_COMPARED)}
        for row in self.rows:
            out[row.verdict] += 1
        return out

    def summary(self) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in self.counts().items() if n or v == MISMATCH)
        text = f"{len(self.rows)} rows: {counts} ({self.seconds:.1f} s)"
        if not self.compared and not any(row.failed for row in self.rows):
            text += f"\nnothing was compared: {self.nothing_compared}"
        if self.first_mismatch:
            text += f"\nfirst layer that disagrees: {self.first_mismatch}"
        return text

    def format(self) -> str:
        """The table: one line per row, a legend for marks, then the summary."""
        lo = self.dtype
        head = (
            "setting",
            "quantity",
            "reference",
            f"abs {lo}",
            f"rel {lo}",
            "abs float64",
            "rel float64",
            "verdict",
        )
        lines = [
            (
                r.setting,
                r.quantity,
                r.reference,
                _fmt(r.abs_low),
                _fmt(r.rel_low) + (" ~0" if r.near_zero else ""),
                _fmt(r.abs_high),
                _fmt(r.rel_high),
                r.verdict + (f"  ({r.note})" if r.note else ""),
            )
            for r in self.rows
        ]
        widths = [max(len(line[i]) for line in [head, *lines]) for i in range(len(head) - 1)]
        out = [self.title]
        for line in [head, *lines]:
            cells = "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True))
            out.append(f"{cells}  {line[-1]}")
        if any(r.near_zero for r in self.rows):
            out.append(NEAR_ZERO_LEGEND)
        out.append(self.summary())
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()

    def to_dict(self) -> dict[str, Any]:
        def clean(v: Any) -> Any:  # JSON has no inf/nan
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {
            "title": self.title,
            "dtype": self.dtype,
            "device": self.device,
            "seed": self.seed,
            "seconds": round(self.seconds, 3),
            "ok": self.ok,
            "compared": self.compared,
            "counts": self.counts(),
            "first_mismatch": self.first_mismatch,
            "thresholds": {"ratio": RATIO, "tol_factor": TOL_FACTOR},
            "rows": [{k: clean(v) for k, v in dataclasses.asdict(r).items()} for r in self.rows],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)
