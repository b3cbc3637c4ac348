"""The equivalence diagnostic behind ``nfold check``: is nfold equal to torch, or is
the difference round-off?

Protocol. Every comparison is made twice, from the same values: once in a low precision
(float32 by default) and once in float64 (inputs and weights are drawn once, rounded to
the low precision and then widened, so both runs see identical numbers). Round-off
shrinks with the machine epsilon -- by ``eps64 / eps32 = 2**-29 ~ 1.9e-9`` from float32 to
float64 -- while a bug (a missed stride, a transposed weight, a dropped bias) gives an
error of the same size in both precisions.

The verdict rule is :data:`RULE` (``nfold check --help`` and the README print it).
A layer or quantity that was not compared never gets a verdict.

The parts, one job each: ``_check_settings`` (accepted dtypes, the built-in table,
reduction lengths), ``_check_run`` (the built-in table through nfold and its
reference), ``_check_model`` (``check_model``), ``_check_compare`` (``compare``),
``_check_verdicts`` (errors and verdicts), ``_check_report`` (the table and JSON);
:mod:`nfold._reference` holds the naive reference ops (shared with the tests).
"""

from ._check_compare import compare
from ._check_model import ModelError, check_model, conv_layers
from ._check_report import Report
from ._check_run import check_builtin, run_setting
from ._check_settings import LOW_DTYPES, OPS, SETTINGS, Setting, low_precision
from ._check_verdicts import (
    ERROR,
    EXACT,
    MISMATCH,
    NOT_COMPARED,
    RATIO,
    ROUND_OFF,
    RULE,
    SKIPPED,
    TOL_FACTOR,
    Row,
    tolerance,
    verdict,
)

__all__ = [
    "ERROR",
    "EXACT",
    "LOW_DTYPES",
    "MISMATCH",
    "NOT_COMPARED",
    "OPS",
    "RATIO",
    "ROUND_OFF",
    "RULE",
    "SETTINGS",
    "SKIPPED",
    "TOL_FACTOR",
    "ModelError",
    "Report",
    "Row",
    "Setting",
    "check_builtin",
    "check_model",
    "compare",
    "conv_layers",
    "low_precision",
    "run_setting",
    "tolerance",
    "verdict",
]
