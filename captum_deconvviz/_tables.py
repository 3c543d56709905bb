"""The one table renderer: Markdown and HTML from a header and rows of strings.

Every table the package prints or writes (receptive fields, diagnoses, comparisons,
randomization tests, the report's channel statistics) goes through here, so every HTML
cell is escaped in one place and no table's HTML is parsed back from its Markdown.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

__all__ = ["to_html", "to_markdown"]


def _markdown_cell(text: str) -> str:
    # A "|" inside a cell (a layer name may hold one) would split it into two columns.
    return text.replace("|", "\\|")


def to_markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table: a header line, a ``|---|`` rule, then one line per row.

    Example:
        >>> print(to_markdown(["layer", "size"], [["conv1", "3x3"]]))
        | layer | size |
        |---|---|
        | conv1 | 3x3 |
    """
    lines = ["| " + " | ".join(map(_markdown_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_markdown_cell, row)) + " |" for row in rows]
    return "\n".join(lines)


def to_html(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    row_classes: Sequence[str] | None = None,
    column_classes: Sequence[str] | None = None,
) -> str:
    """An HTML ``<table>`` with every header and body cell escaped.

    Args:
        header: the column titles.
        rows: the cells, as text.
        row_classes: a CSS class per row (``<tr class="...">``), e.g. ``"dead"``.
        column_classes: a CSS class per column for body cells (``""``: none), e.g. ``"num"``.

    Example:
        >>> to_html(["name"], [["<b>"]])
        '<table><thead><tr><th>name</th></tr></thead><tbody><tr><td>&lt;b&gt;</td></tr></tbody></table>'
    """
    classes = [f' class="{html.escape(c)}"' if c else "" for c in column_classes or [""] * len(header)]
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        opening = f'<tr class="{html.escape(row_classes[i])}">' if row_classes is not None else "<tr>"
        cells = "".join(f"<td{cls}>{html.escape(cell)}</td>" for cls, cell in zip(classes, row, strict=True))
        body.append(f"{opening}{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
