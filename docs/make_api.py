"""Write docs/api.md from the docstrings and signatures of everything in ``nfold.__all__``.

Run from the repository root: ``python docs/make_api.py`` (``make docs``). The docstrings
are the single source: edit them, then regenerate; tests/test_doctests.py runs their
``>>>`` examples.
"""

from __future__ import annotations

import inspect
import re
import sys
from pathlib import Path

import nfold

OUT = Path(__file__).with_name("api.md")

SECTIONS: list[tuple[str, str, list[str]]] = [
    (
        "Data movement",
        "Pure data movement (no multiplications; `fold` sums overlapping blocks in a fixed "
        "order). Any N >= 1, any dtype. With N = 2 the results equal "
        "`torch.nn.functional.unfold` / `fold` bitwise.",
        [
            "unfold",
            "fold",
            "unfold_transpose",
            "sliding_window_view",
            "Unfold",
            "Fold",
            "UnfoldTranspose",
        ],
    ),
    (
        "Convolution as matrix multiplication",
        "Same results as `torch.nn.functional.conv{N}d` / `conv_transpose{N}d` (to round-off) "
        "for N <= 3, and the same for any N. Modules have torch's parameter names, shapes, "
        "state_dict keys and default initialisation.",
        [
            "conv",
            "conv_transpose",
            "ConvNd",
            "ConvTransposeNd",
            "Conv1d",
            "Conv2d",
            "Conv3d",
            "ConvTranspose1d",
            "ConvTranspose2d",
            "ConvTranspose3d",
            "convert",
        ],
    ),
    (
        "Curvature (KFAC) factors",
        "KFAC input factors of conv layers, streamed: the unfolded input is never built. "
        "See [kfac.md](kfac.md).",
        ["patch_covariance", "kfac_input_factors"],
    ),
    (
        "Diagnostics",
        "Tell a bug from round-off when comparing a model built on nfold with torch.",
        ["check_model", "compare"],
    ),
    (
        "unfoldNd compatibility",
        "Aliases with unfoldNd's names and (a superset of) its signatures, so that "
        "`import nfold as unfoldNd` works. For libraries that `import unfoldNd` themselves "
        "(BackPACK), `nfold.compat.install()` makes `unfoldNd` and its submodules resolve "
        "to nfold in the running process (`nfold.compat.uninstall()` undoes it). "
        "See [migrating-from-unfoldnd.md](migrating-from-unfoldnd.md).",
        ["unfoldNd", "foldNd", "unfold_transposeNd", "UnfoldNd", "FoldNd", "UnfoldTransposeNd"],
    ),
]


def _signature(name: str, obj: object) -> str:
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return f"nfold.{name}"
    params = []
    for p in sig.parameters.values():
        if p.name == "self":
            continue
        text = p.name if p.kind is not p.VAR_POSITIONAL else f"*{p.name}"
        if p.annotation is not p.empty:
            ann = p.annotation
            text += f": {ann if isinstance(ann, str) else inspect.formatannotation(ann)}"
        if p.default is not p.empty:
            text += f" = {p.default!r}"
        params.append(text)
    return f"nfold.{name}({', '.join(params)})"


_SECTION = re.compile(r"^(Args|Arguments|Returns|Raises|Shapes|Shape|Note|Notes):\s*(.*)$")
_ITEM = re.compile(r"^    ([\w*][\w, *]*): (.*)$")


def _markdown(doc: str) -> list[str]:
    """A Google-style docstring as Markdown: sections bold, arguments as a list,
    ``>>>`` examples as code blocks, ``double`` backticks as single ones."""
    out: list[str] = []
    section = None
    in_example = False
    for raw in doc.splitlines():
        line = raw.replace("``", "`")
        is_example = line.startswith(">>>") or (in_example and line.strip() != "")
        if is_example != in_example:
            out.append("```python" if is_example else "```")
            in_example = is_example
        if is_example:
            out.append(raw)
            continue
        head = _SECTION.match(line)
        if head:
            section = head.group(1)
            out += ["", f"**{section}:** {head.group(2)}".rstrip(), ""]
            continue
        item = _ITEM.match(line) if section in ("Args", "Arguments", "Raises") else None
        if item:
            out.append(f"- `{item.group(1)}`: {item.group(2)}")
        elif section and line.startswith("    ") and out and out[-1]:
            out[-1] += " " + line.strip()  # continuation of an item or of the section text
        else:
            if not line.strip():
                section = None
            out.append(line.strip() if section else line)
    if in_example:
        out.append("```")
    return out


def _entry(name: str) -> str:
    obj = getattr(nfold, name)
    kind = "class" if inspect.isclass(obj) else "function"
    target = getattr(obj, "__name__", name)
    lines = [f"### `{name}`", ""]
    if target != name:
        lines += [f"Alias of [`{target}`](#{target.lower()}).", ""]
        return "\n".join(lines)
    lines += ["```python", f"{kind} {_signature(name, obj)}", "```", ""]
    if inspect.isclass(obj):
        bases = [b for b in obj.__mro__[1:] if b.__module__.startswith("torch.nn.modules")]
        if bases and bases[0].__name__ not in ("Module",):
            lines += [f"Subclass of `torch.nn.{bases[0].__name__}`.", ""]
    body = _markdown(inspect.getdoc(obj) or "(no docstring)")
    lines += body + [""]
    return "\n".join(lines)


def render() -> str:
    listed = [name for _, _, names in SECTIONS for name in names]
    missing = sorted(set(nfold.__all__) - set(listed))
    extra = sorted(set(listed) - set(nfold.__all__))
    if missing or extra:
        raise SystemExit(f"update SECTIONS in {__file__}: missing {missing}, not public {extra}")
    parts = [
        "# nfold API reference",
        "",
        f"nfold {nfold.__version__}. Generated from the docstrings by `docs/make_api.py` "
        "(`make docs`); do not edit by hand.",
        "",
        "Conventions shared by every function: `N` is the number of spatial dims (any N >= 1), "
        "the length of any tuple among the size arguments, else `input.dim() - 2`. Size "
        "arguments take an int or an N-tuple, like torch's conv layers. A tensor of dim N + 1 "
        "is an unbatched input (pass N-tuples then) and gives an unbatched output. Bad "
        "arguments raise `ValueError` / `TypeError` naming the argument, before any work.",
        "",
        "## Contents",
        "",
    ]
    for title, _, names in SECTIONS:
        anchor = title.lower().replace(" ", "-")
        parts.append(f"- [{title}](#{anchor}): " + ", ".join(f"`{n}`" for n in names))
    parts.append("")
    for title, intro, names in SECTIONS:
        parts += [f"## {title}", "", intro, ""]
        parts += [_entry(name) for name in names]
    return "\n".join(parts).rstrip() + "\n"


def main() -> int:
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
