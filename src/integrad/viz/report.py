"""A batch of attributions in one picture, and a static HTML report around such pictures.

:func:`plot_attributions` draws a batch in the form that suits the input (image heatmaps over the inputs, feature
bars, token bars) with the functions of :mod:`integrad.viz`; :class:`HtmlReport` collects headings, paragraphs,
tables, pictures and HTML fragments and writes one self-contained ``index.html`` that refers to the pictures next
to it: one column of a fixed width with every picture scaled to it, and a table of contents at the top. The
pictures here are only written to files, never shown.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import re
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..app.files import atomic_write_bytes
from ._checks import check_int, check_labels
from ._figures import new_figure, pyplot, save_figure
from .features import feature_bars
from .images import draw_image, image_heatmap, prepare_image

__all__ = ["HtmlReport", "plot_attributions", "token_scores", "fmt"]


def _use_agg() -> Any:
    """pyplot, with the file backend Agg unless the user chose a backend (``MPLBACKEND``, pyplot imported).

    The pictures here are only written to files, never shown, so no display asks for another backend.
    """
    return pyplot(files_only=True)


def fmt(value: Any, digits: int = 4) -> str:
    """Format a number for a table: short, with exponent for very small or large values."""
    if value is None:
        return "n/a"
    if isinstance(value, torch.Tensor):
        value = value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(number):
        return "n/a"
    if number != 0 and (abs(number) < 1e-3 or abs(number) >= 1e5):
        return f"{number:.{max(1, digits - 2)}e}"
    return f"{number:.{digits}g}"


def token_scores(attributions: torch.Tensor) -> torch.Tensor:
    """One score per token: layer attributions ``(N, L, E)`` summed over the embedding axis."""
    scores = attributions.detach().float()
    while scores.dim() > 2:
        scores = scores.sum(dim=-1)
    return scores


def plot_attributions(
    path: str | os.PathLike,
    kind: str,
    inputs: torch.Tensor | None,
    attributions: torch.Tensor,
    *,
    titles: Sequence[str] | None = None,
    feature_names: Sequence[str] | None = None,
    tokens: Sequence[Sequence[str]] | None = None,
    masks: torch.Tensor | None = None,
    max_examples: int = 8,
    top_k: int = 15,
) -> Path:
    """Draw up to ``max_examples`` attributions into one PNG.

    Parameters
    ----------
    path : path
        PNG to write.
    kind : str
        ``"image"`` (heatmap over the input image, one row per example), ``"features"`` (bar chart per example),
        ``"text"`` (bar chart of token scores) or anything else (bar chart of the largest entries).
    inputs : torch.Tensor, optional
        The inputs, for image overlays (drawn for ``(N, C, H, W)`` inputs with 1, 3 or 4 channels and the
        attributions' spatial size).
    attributions : torch.Tensor
        ``(N, ...)`` with ``N >= 1``, finite.
    titles : iterable of str, optional
        One title per example (at least one per example drawn).
    feature_names, tokens
        Bar labels for features and tokens, shown literally like the titles (``$`` does not start mathematics).
    masks : torch.Tensor, optional
        ``(N, L)`` attention masks: padding tokens are left out of the bars.
    max_examples, top_k : int
        How many examples to draw, from the first (default 8), and how many of the largest entries each bar chart
        shows (default 15); each at least 1.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        For attributions without examples or with NaN or infinite values, fewer ``titles`` than examples drawn, or
        ``max_examples`` or ``top_k`` below 1. No figure is left open when an error is raised.
    """
    attr = _checked_attributions(attributions)
    n_shown = min(int(attr.shape[0]), check_int(max_examples, "max_examples", 1))
    top_k = check_int(top_k, "top_k", 1)
    titles = check_labels(titles, "titles", "strings, one per example", n_shown, at_least=True)
    if titles is None:
        titles = [f"example {i}" for i in range(n_shown)]
    feature_names = check_labels(feature_names, "feature_names", "strings")
    if kind == "image" and attr.dim() == 4:
        fig = _image_figure(inputs, attr[:n_shown], titles)
    else:
        bars = _Bars(attr, feature_names, tokens, masks, by_token=kind == "text" or tokens is not None)
        fig = _bar_figure(bars, n_shown, titles, top_k)
    return save_figure(fig, path)


def _checked_attributions(attributions: Any) -> torch.Tensor:
    """The attributions as a float32 CPU tensor with at least one example, all finite."""
    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor; got {type(attributions).__name__}")
    attr = attributions.detach().float().cpu()
    if attr.dim() == 0 or attr.shape[0] == 0 or attr.numel() == 0:
        raise ValueError(f"attributions must hold at least one example; got shape {tuple(attr.shape)}")
    if not bool(torch.isfinite(attr).all()):
        raise ValueError("attributions contains NaN or infinite values; there is nothing to draw for them")
    return attr


def _image_figure(inputs: torch.Tensor | None, attr: torch.Tensor, titles: list[str]) -> Any:
    """One row per example: the input, when it can be drawn, and the heatmap of the channel sum over it."""
    drawable = (
        inputs is not None
        and inputs.dim() == 4
        and inputs.shape[1] in (1, 3, 4)
        and tuple(inputs.shape[-2:]) == tuple(attr.shape[-2:])
    )
    n_rows, n_cols = attr.shape[0], 2 if drawable else 1
    with new_figure(_use_agg(), n_rows, n_cols, (3.6 * n_cols + 0.6, 3.2 * n_rows)) as (fig, axes):
        for i in range(n_rows):
            heat = attr[i].sum(dim=0)
            if not drawable:
                image_heatmap(heat, ax=axes[i, 0], title=f"{titles[i]}: attribution")
                continue
            # As floats, integer pixels are stretched for display the same way here as in image_heatmap below.
            image = inputs[i].detach().float().cpu()
            pixels = prepare_image(image, tuple(heat.shape), integer_input=False)
            draw_image(axes[i, 0], pixels, f"{titles[i]}: input")
            image_heatmap(heat, image, ax=axes[i, 1], title="attribution")
        fig.tight_layout()
    return fig


def _bar_figure(bars: _Bars, n_shown: int, titles: list[str], top_k: int) -> Any:
    """One bar chart for each of the first ``n_shown`` examples, two to a row; the axes left over are hidden."""
    scores = bars.scores()
    width = scores.shape[1]
    shown_k = min(top_k, width)
    n_cols = 2 if n_shown > 1 else 1
    n_rows = (n_shown + n_cols - 1) // n_cols
    figsize = (7.0 * n_cols, 0.9 + (0.28 * shown_k + 0.6) * n_rows)
    with new_figure(_use_agg(), n_rows, n_cols, figsize) as (fig, grid):
        axes = grid.reshape(-1)
        for ax in axes[n_shown:]:
            ax.set_visible(False)
        for i in range(n_shown):
            names, row = bars.labelled_row(i, scores[i])
            feature_bars(row, names, top_k=shown_k, ax=axes[i], title=titles[i])
        fig.tight_layout()
    return fig


@dataclass(frozen=True)
class _Bars:
    """What one bar chart per example shows: the scores, and labels from tokens, feature names or positions."""

    attr: torch.Tensor
    feature_names: list[str] | None
    tokens: Sequence[Sequence[str]] | None
    masks: torch.Tensor | None
    by_token: bool

    def scores(self) -> torch.Tensor:
        """``(N, width)``: token attributions summed over the embedding axis, anything else entry by entry."""
        return token_scores(self.attr) if self.by_token else self.attr.reshape(self.attr.shape[0], -1)

    def labelled_row(self, example: int, row: torch.Tensor) -> tuple[list[str] | None, torch.Tensor]:
        """The labels of one example's bars, and its scores with the padding tokens left out."""
        width = row.shape[0]
        if self.tokens is not None:
            names = [f"{j}:{t}" for j, t in enumerate(self.tokens[example])][:width]
            if self.masks is None:
                return names, row
            keep = self.masks[example].bool().tolist()[:width]
            return [nm for nm, k in zip(names, keep) if k], row[: len(keep)][torch.tensor(keep)]
        # Names that do not fit the width are left out rather than refused: one list serves several kinds.
        if self.feature_names is not None and len(self.feature_names) == width:
            return list(self.feature_names), row
        if self.attr.dim() > 2:
            shape = tuple(self.attr.shape[1:])
            return [str(tuple(int(v) for v in np.unravel_index(j, shape))) for j in range(width)], row
        return None, row


@dataclass
class HtmlReport:
    """A static HTML page built from parts, written atomically.

    The page is laid out for reading in a browser: its text, tables and figures share one column of at most
    ``page_width`` CSS pixels, every picture is scaled to that column's width (so that figures drawn at different
    sizes line up), wide tables scroll inside the column instead of widening the page, and a table of contents at
    the top links to every section heading (levels 2 and 3).

    Parameters
    ----------
    title : str
        The page's title and top heading.
    page_width : int, default 960
        Width in CSS pixels of the column of text, tables and pictures (at least 320).
    contents : bool, default True
        Put a table of contents, linking to every section heading, before the first one.

    Examples
    --------
    >>> r = HtmlReport("Attributions")
    >>> r.heading("Digits"); r.paragraph("A small CNN.")
    'digits'
    >>> r.table(["example", "delta"], [[0, 1e-4]])
    >>> r.write("out/index.html")  # doctest: +SKIP
    """

    title: str
    parts: list = field(default_factory=list)
    page_width: int = 960
    contents: bool = True
    sections: list = field(default_factory=list, init=False, repr=False)
    #: Where the table of contents goes: before the part that is the first section heading, after the introduction.
    contents_at: int | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.title, str):
            raise TypeError(f"title must be a str; got {type(self.title).__name__}")
        self.page_width = check_int(self.page_width, "page_width", 320)
        if not isinstance(self.contents, (bool, np.bool_)):
            raise TypeError(f"contents must be True or False; got {self.contents!r}")

    def heading(self, text: str, level: int = 2) -> str:
        """A section heading (``level`` 2 to 6; the title is the only level 1); returns its anchor, ``#anchor``
        links to it. Levels 2 and 3 are listed in the table of contents."""
        level = check_int(level, "level", 2, below=7)
        anchor = self._new_anchor(str(text))
        if self.contents_at is None:
            self.contents_at = len(self.parts)
        self.sections.append((level, anchor, str(text)))
        self.parts.append(f'<h{level} id="{anchor}">{html.escape(str(text))}</h{level}>')
        return anchor

    def _new_anchor(self, text: str) -> str:
        """A fragment identifier made from the heading's words, unique in the page."""
        base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "section"
        taken = {anchor for _, anchor, _ in self.sections} | {"contents"}
        anchor, n = base, 2
        while anchor in taken:
            anchor, n = f"{base}-{n}", n + 1
        return anchor

    def paragraph(self, text: str, raw: bool = False) -> None:
        self.parts.append(f"<p>{text if raw else html.escape(text)}</p>")

    def image(self, src: str | os.PathLike, caption: str = "", width: int | None = None) -> None:
        """A picture, scaled to the page's column (or to at most ``width`` CSS pixels when given); ``src`` is its path
        relative to the page (any file name: it is percent-encoded here)."""
        style = f' style="max-width:{check_int(width, "width", 1)}px"' if width is not None else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img src="{_href(src, "src")}" alt="{html.escape(caption or os.fspath(src))}"{style}>{cap}'
            "</figure>"
        )

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> None:
        """A table; numbers are formatted with :func:`fmt` and aligned right, text aligned left. A table wider than
        the page scrolls sideways on its own."""
        text_columns = {j for row in rows for j, c in enumerate(row) if not _is_number(c)}
        head = "".join(
            ('<th class="text">' if j in text_columns else "<th>") + f"{html.escape(str(h))}</th>"
            for j, h in enumerate(header)
        )
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(
            f'<div class="table-scroll"><table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
        )

    def links(self, items: Sequence[tuple[str, str | os.PathLike]]) -> None:
        """A list of ``(text, path)`` links; each path is relative to the page and percent-encoded here."""
        lis = "".join(f'<li><a href="{_href(h, "items")}">{html.escape(t)}</a></li>' for t, h in items)
        self.parts.append(f"<ul>{lis}</ul>")

    def table_of_contents(self) -> str:
        """The ``<nav>`` listing the level-2 sections with their level-3 subsections ("" without sections).

        A plain list: section headings usually carry their own numbers."""
        if not self.contents or not any(level == 2 for level, _, _ in self.sections):
            return ""
        groups: list[tuple[str, list[str]]] = []
        for level, anchor, text in self.sections:
            link = f'<a href="#{anchor}">{html.escape(text)}</a>'
            if level == 2:
                groups.append((link, []))
            elif level == 3 and groups:
                groups[-1][1].append(f"<li>{link}</li>")
        items = "".join(
            f"<li>{link}" + (f"<ul>{''.join(subsections)}</ul>" if subsections else "") + "</li>"
            for link, subsections in groups
        )
        return f'<nav id="contents" aria-label="Contents"><p>Contents</p><ul>{items}</ul></nav>'

    def render(self) -> str:
        """The whole page: the title, the parts in the order they were added, with the table of contents before the
        first section heading, and a footer naming the version."""
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        version = html.escape(_version())
        parts = list(self.parts)
        parts.insert(len(parts) if self.contents_at is None else self.contents_at, self.table_of_contents())
        body = "\n".join(part for part in parts if part)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(self.title)}</title>
<style>
:root {{ --page-width: {self.page_width}px; }}
{_STYLE}
</style></head>
<body>
<h1>{html.escape(self.title)}</h1>
{body}
<footer>Written by integrad {version} on {now}. Red is evidence for the target, blue against it.</footer>
</body></html>
"""

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` (created with its missing parent folders, or replaced whole)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path


def _is_number(value: Any) -> bool:
    """Numbers, and None (a missing number, shown as "n/a")."""
    if value is None:
        return True
    return isinstance(value, (int, float, np.integer, np.floating, torch.Tensor)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    """One ``<td>``: numbers right-aligned (the default), text left-aligned."""
    text = html.escape(fmt(value))
    return f"<td>{text}</td>" if _is_number(value) else f'<td class="text">{text}</td>'


# One column of at most --page-width for everything; pictures are scaled to it, so that figures drawn at different
# sizes line up and none is wider than the page; tables too wide for it scroll inside their own box.
_STYLE = """\
body { font: 16px/1.5 system-ui, sans-serif; max-width: var(--page-width); margin: 2em auto; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.7em; line-height: 1.25; }
h2 { margin-top: 2.2em; padding-bottom: 0.2em; border-bottom: 1px solid #ddd; }
h3 { margin-top: 1.6em; }
nav#contents { background: #f6f7f9; border: 1px solid #e1e4e8; border-radius: 4px; padding: 0.5em 1.2em;
               margin: 1em 0 2em 0; }
nav#contents p { margin: 0.2em 0; font-weight: 600; }
nav#contents ul { margin: 0.2em 0; padding-left: 0; list-style: none; }
nav#contents ul ul { padding-left: 1.5em; }
a { color: #0b5cad; }
.table-scroll { max-width: 100%; overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d4d9; padding: 0.3em 0.6em; text-align: right; }
td { white-space: nowrap; }
th { background: #eef1f4; vertical-align: bottom; }
td.text, th.text, th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8f9fa; }
caption { caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }
figure { margin: 1.2em 0; }
figure img { display: block; box-sizing: border-box; width: 100%; max-width: var(--page-width); height: auto;
             border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; margin-top: 0.3em; }
code { background: #f5f5f5; padding: 0 0.2em; }
.tokens { line-height: 2; margin: 0.5em 0 1em 0; }
footer { margin-top: 3em; font-size: 0.8em; color: #777; }"""


def _version() -> str:
    """The installed version of integrad, or ``"unknown"`` when it runs from a source tree."""
    try:
        from importlib.metadata import version

        return version("integrad")
    except Exception:
        return "unknown"


def _href(path: str | os.PathLike, name: str) -> str:
    """A relative file path as the value of a ``src``/``href`` attribute.

    Percent-encoded, so that ``#``, ``?``, ``%``, spaces and other characters that mean something
    in a URL stay part of the file name; ``/`` still separates folders.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must give paths as str or os.PathLike; got {type(path).__name__}")
    text = os.fspath(path)
    if isinstance(text, bytes):
        raise TypeError(f"{name} must give paths as str, not bytes")
    if os.sep != "/":
        text = text.replace(os.sep, "/")
    return html.escape(urllib.parse.quote(text, safe="/"))
