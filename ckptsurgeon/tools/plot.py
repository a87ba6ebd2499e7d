"""A picture of a diff: where in the model did the weights change, and how much?

:func:`diff_grid` (pure, no plotting library) lays the tensors of a :class:`DiffResult` out as
a grid: one row per layer of the model's block stack (plus ``embeddings`` and ``other``; with
several stacks, as T5 and CLIP have, one group of rows per stack, labelled by it), one
column per module kind (query, key, value, attention output, intermediate, output, LayerNorm,
embeddings, head, other), and a ``total`` row and column. Each cell holds the largest relative
change ``||a-b|| / ||a||`` among its tensors. :func:`write_plot` draws it as a heatmap (log
colour scale) to ``.png``, ``.svg`` or ``.html``: cells whose tensors are all identical are grey
and marked ``=``, unlike small changes; dtype or shape mismatches and one-sided tensors are
marked with a symbol. matplotlib is an optional extra: ``pip install 'ckptsurgeon[plot]'``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import CkptSurgeonError
from ..plan.selection import find_layer_stacks

KINDS = (
    "query",
    "key",
    "value",
    "attn out",
    "intermediate",
    "output",
    "LayerNorm",
    "embeddings",
    "head",
    "other",
)
_KIND_RULES = (
    ("LayerNorm", r"norm|(^|\.)ln_|layer_norm"),
    ("embeddings", r"embed|(^|\.)wte\.|(^|\.)wpe\.|(^|\.)shared\."),
    ("query", r"query|q_proj|\.q\.|q_lin"),
    ("key", r"(^|\.)key|k_proj|\.k\.|k_lin"),
    ("value", r"value|v_proj|\.v\.|v_lin"),
    ("attn out", r"attention\.output|o_proj|out_proj|attn\.c_proj|\.o\.|out_lin|self_attn\.dense"),
    ("intermediate", r"intermediate|up_proj|gate_proj|fc1|c_fc|lin1|\.wi(_\d)?\.|dense_h_to_4h"),
    ("output", r"output\.dense|down_proj|fc2|mlp\.c_proj|lin2|\.wo\.|dense_4h_to_h"),
    ("head", r"^(cls|lm_head|classifier|qa_outputs|pooler|score)\.|pooler|vocab_|generator_lm"),
)
MARKS = {
    "dtype_mismatch": "dtype",
    "shape_mismatch": "shape",
    "only_in_a": "-",
    "only_in_b": "+",
}


class PlotError(CkptSurgeonError, RuntimeError):
    """The picture cannot be drawn (no matplotlib, unknown file type)."""


def kind_of(name: str) -> str:
    for kind, pattern in _KIND_RULES:
        if re.search(pattern, name, re.IGNORECASE):
            return kind
    return "other"


@dataclass(frozen=True)
class Cell:
    value: float | None  # largest relative change; None when nothing was compared by value
    mark: str  # "=" all identical, "dtype", "shape", "+", "-", or ""
    tensors: int


@dataclass(frozen=True)
class Grid:
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    cells: dict[tuple[str, str], Cell]

    def get(self, row: str, column: str) -> Cell | None:
        return self.cells.get((row, column))


def diff_grid(result: Any) -> Grid:
    """Lay a diff's tensors out by layer and module kind (see the module docstring)."""
    names = [t.name for t in result.tensors]
    stacks = find_layer_stacks(names)
    # one group of rows per stack (T5's encoder and decoder, CLIP's two towers), in the order
    # the checkpoint lists them; with a single stack the rows are simply "layer N"
    first_seen = {p: min(i for i, n in enumerate(names) if n.startswith(p + ".")) for p in stacks}
    order = sorted(stacks, key=lambda p: (first_seen[p], p))
    matchers = [(p, re.compile(re.escape(p) + r"\.(\d+)\.")) for p in order]
    labelled = len(order) > 1
    groups: dict[tuple[str, str], list[Any]] = {}
    layer_rows: list[str] = []
    for prefix in order:
        for i in stacks[prefix]:
            layer_rows.append(f"{prefix} {i}" if labelled else f"layer {i}")
    for t in result.tensors:
        kind = kind_of(t.name)
        row = None
        for prefix, layer_re in matchers:
            m = layer_re.match(t.name)
            if m is not None:
                i = int(m.group(1))
                row = f"{prefix} {i}" if labelled else f"layer {i}"
                break
        if row is None:
            embedding = kind == "embeddings" or ".embeddings." in f".{t.name}"
            row = "embeddings" if embedding else "other"
        groups.setdefault((row, kind), []).append(t)
    rows = ["embeddings", *layer_rows, "other"]
    rows = [r for r in rows if any(k[0] == r for k in groups)]
    columns = [k for k in KINDS if any(g[1] == k for g in groups)]
    cells = {key: _cell(ts) for key, ts in groups.items()}
    for row in rows:
        cells[(row, "total")] = _cell([t for (r, _), ts in groups.items() if r == row for t in ts])
    for column in columns:
        cells[("total", column)] = _cell(
            [t for (_, c), ts in groups.items() if c == column for t in ts]
        )
    cells[("total", "total")] = _cell(list(result.tensors))
    return Grid((*rows, "total"), (*columns, "total"), cells)


def _cell(tensors: list[Any]) -> Cell:
    values = [t.rel_l2 for t in tensors if t.rel_l2 is not None and math.isfinite(t.rel_l2)]
    marks = [MARKS[t.status] for t in tensors if t.status in MARKS]
    if any(t.nonfinite_mismatch for t in tensors):
        marks.append("nan")
    if marks:
        mark = marks[0]
    elif all(t.status in ("identical", "same_header") for t in tensors):
        mark = "="
    else:
        mark = ""
    return Cell(max(values) if values else None, mark, len(tensors))


def write_plot(
    result: Any, path: str | os.PathLike[str], title: str = ""
) -> dict[tuple[str, str], tuple[float, float]]:
    """Draw the diff's grid to ``path`` (.png, .svg or .html by suffix). Returns each cell's
    centre in pixels from the top left (for a PNG), so tests can look at the picture."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".png", ".svg", ".html", ".htm"):
        raise PlotError(
            f"cannot tell the picture format from {p.name!r}",
            str(p),
            "end FILE in .png, .svg or .html",
        )
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.colors import LogNorm
    except ImportError:
        raise PlotError(
            "diff --plot needs matplotlib, which is not installed",
            str(p),
            "pip install 'ckptsurgeon[plot]'",
        ) from None
    import numpy as np

    grid = diff_grid(result)
    values = np.full((len(grid.rows), len(grid.columns)), np.nan)
    for i, row in enumerate(grid.rows):
        for j, column in enumerate(grid.columns):
            cell = grid.get(row, column)
            if cell is not None and cell.value is not None and cell.value > 0:
                values[i, j] = cell.value
    # a fixed scale: fine-tuning-sized changes (1e-3) stay pale, a re-initialisation (~1.4) is hot
    finite = values[np.isfinite(values)]
    low = min(1e-4, float(finite.min()) if finite.size else 1e-4)
    high = max(2.0, float(finite.max()) if finite.size else 2.0)
    with plt.rc_context({"svg.fonttype": "none", "font.size": 8}):
        fig, ax = plt.subplots(
            figsize=(1.0 + 0.75 * len(grid.columns), 0.9 + 0.3 * len(grid.rows)), dpi=100
        )
        # no value: identical (marked '=') or nothing there
        cmap = plt.get_cmap("YlOrRd").with_extremes(bad="#e8e8e8")
        image = ax.imshow(
            np.ma.masked_invalid(values),
            cmap=cmap,
            norm=LogNorm(vmin=low, vmax=high),
            aspect="auto",
        )
        ax.set_xticks(range(len(grid.columns)), grid.columns, rotation=35, ha="right")
        ax.set_yticks(range(len(grid.rows)), grid.rows)
        ax.axhline(len(grid.rows) - 1.5, color="black", linewidth=1)
        ax.axvline(len(grid.columns) - 1.5, color="black", linewidth=1)
        for i, row in enumerate(grid.rows):
            for j, column in enumerate(grid.columns):
                cell = grid.get(row, column)
                if cell is None:
                    ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, color="white"))
                    continue
                text = cell.mark if cell.mark else f"{cell.value:.2g}" if cell.value else ""
                if cell.mark and cell.mark != "=" and cell.value:
                    text = f"{cell.mark} {cell.value:.2g}"
                dark = cell.value is not None and cell.value > 0.2
                ax.text(j, i, text, ha="center", va="center", color="white" if dark else "black")
        fig.colorbar(image, ax=ax, label="||a - b|| / ||a||  (largest in the cell)")
        ax.set_title(title or "relative change by layer and module; '=' identical", fontsize=9)
        fig.tight_layout()
        fig.canvas.draw()
        height = fig.get_size_inches()[1] * fig.dpi
        centres = {}
        for i, row in enumerate(grid.rows):
            for j, column in enumerate(grid.columns):
                x, y = ax.transData.transform((j, i))
                centres[(row, column)] = (float(x), float(height - y))
        if suffix == ".png":
            fig.savefig(p, format="png", dpi=fig.dpi)
        else:
            import io

            buffer = io.StringIO()
            fig.savefig(buffer, format="svg")
            svg = buffer.getvalue()
            if suffix == ".svg":
                p.write_text(svg, encoding="utf-8")
            else:
                body = svg[svg.index("<svg") :]
                p.write_text(
                    '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>ckptsurgeon diff'
                    f"</title></head><body>\n{body}\n</body></html>\n",
                    encoding="utf-8",
                )
        plt.close(fig)
    return centres
