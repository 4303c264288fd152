"""Pictures and a static HTML report for attributions.

:func:`plot_attributions` draws a batch of attributions in the form that suits
the input (image heatmaps over the inputs, feature bars, token bars) with
:mod:`integrad.visualize`; :class:`HtmlReport` collects headings, paragraphs,
tables, pictures and HTML fragments and writes one self-contained
``index.html`` that refers to the pictures next to it.
"""

from __future__ import annotations

import datetime as _dt
import html
import math
import os
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .app.files import atomic_write_bytes

__all__ = ["HtmlReport", "plot_attributions", "token_scores", "fmt"]


def _use_agg():
    """pyplot, with the file backend Agg unless the user chose a backend (``MPLBACKEND``, pyplot imported).

    The pictures here are only written to files, never shown; the rule is the one of
    :func:`integrad.visualize._pyplot`.
    """
    from .visualize import _pyplot

    return _pyplot(files_only=True)


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
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(v):
        return "n/a"
    if v != 0 and (abs(v) < 1e-3 or abs(v) >= 1e5):
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}"


def token_scores(attributions: torch.Tensor) -> torch.Tensor:
    """One score per token: layer attributions ``(N, L, E)`` summed over the embedding axis."""
    a = attributions.detach().float()
    while a.dim() > 2:
        a = a.sum(dim=-1)
    return a


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
        ``"image"`` (heatmap over the input image, one row per example),
        ``"features"`` (bar chart per example), ``"text"`` (bar chart of token
        scores) or anything else (bar chart of the largest entries).
    inputs : torch.Tensor, optional
        The inputs, for image overlays (drawn for ``(N, C, H, W)`` inputs with
        1, 3 or 4 channels and the attributions' spatial size).
    attributions : torch.Tensor
        ``(N, ...)`` with ``N >= 1``, finite.
    titles : iterable of str, optional
        One title per example (at least one per example drawn).
    feature_names, tokens
        Bar labels for features and tokens. Labels and titles are shown
        literally (``$`` does not start mathematics).
    masks : torch.Tensor, optional
        ``(N, L)`` attention masks: padding tokens are left out of the bars.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    ValueError
        For attributions without examples or with NaN or infinite values, or
        fewer ``titles`` than examples drawn. No figure is left open when an
        error is raised.
    """
    plt = _use_agg()
    from . import visualize

    if not isinstance(attributions, torch.Tensor):
        raise TypeError(f"attributions must be a torch.Tensor; got {type(attributions).__name__}")
    attr = attributions.detach().float().cpu()
    if attr.dim() == 0 or attr.shape[0] == 0 or attr.numel() == 0:
        raise ValueError(f"attributions must hold at least one example; got shape {tuple(attr.shape)}")
    if not bool(torch.isfinite(attr).all()):
        raise ValueError("attributions contains NaN or infinite values; there is nothing to draw for them")
    n = min(int(attr.shape[0]), max_examples)
    if titles is None:
        titles = [f"example {i}" for i in range(n)]
    else:
        titles = [str(t) for t in visualize._as_list(titles, "titles", "strings, one per example")]
        if len(titles) < n:
            raise ValueError(f"titles must have one entry per example drawn ({n}); got {len(titles)}: {titles!r}")
    if feature_names is not None:
        feature_names = [str(name) for name in visualize._as_list(feature_names, "feature_names", "strings")]
    if kind == "image" and attr.dim() == 4:
        same_size = (
            inputs is not None
            and inputs.dim() == 4
            and inputs.shape[1] in (1, 3, 4)
            and tuple(inputs.shape[-2:]) == tuple(attr.shape[-2:])
        )
        cols = 2 if same_size else 1
        fig, axes = plt.subplots(n, cols, figsize=(3.6 * cols + 0.6, 3.2 * n), squeeze=False)
        try:
            _draw_images(visualize, axes, inputs, attr, titles, n, same_size)
            fig.tight_layout()
        except BaseException:
            plt.close(fig)
            raise
        return visualize.save_figure(fig, path)
    if kind == "text" or (tokens is not None):
        scores = token_scores(attr)
    else:
        scores = attr.reshape(attr.shape[0], -1)
    width = scores.shape[1]
    shown_k = min(top_k, width)
    cols = 2 if n > 1 else 1
    rows = (n + cols - 1) // cols
    fig, grid = plt.subplots(rows, cols, figsize=(7.0 * cols, 0.9 + (0.28 * shown_k + 0.6) * rows), squeeze=False)
    try:
        _draw_bars(visualize, grid, scores, attr, titles, feature_names, tokens, masks, n, width, shown_k)
        fig.tight_layout()
    except BaseException:
        plt.close(fig)
        raise
    return visualize.save_figure(fig, path)


def _draw_bars(visualize, grid, scores, attr, titles, feature_names, tokens, masks, n, width, shown_k) -> None:
    """One bar chart per example, in the axes of ``grid``; the axes left over are hidden."""
    axes = [[ax] for ax in grid.reshape(-1)]
    for ax in grid.reshape(-1)[n:]:
        ax.set_visible(False)
    for i in range(n):
        row = scores[i]
        if tokens is not None:
            names = [f"{j}:{t}" for j, t in enumerate(tokens[i])][:width]
            if masks is not None:
                keep = masks[i].bool().tolist()[:width]
                names = [nm for nm, k in zip(names, keep) if k]
                row = row[: len(keep)][torch.tensor(keep)]
        elif feature_names is not None and len(feature_names) == width:
            names = list(feature_names)
        elif attr.dim() > 2:
            names = [str(tuple(int(v) for v in np.unravel_index(j, tuple(attr.shape[1:])))) for j in range(width)]
        else:
            names = None
        visualize.feature_bars(row, names, top_k=shown_k, ax=axes[i][0], title=titles[i])


def _draw_images(visualize, axes, inputs, attr, titles, n, same_size) -> None:
    """One row per example: the input (when ``same_size``) and the heatmap of the channel sum."""
    for i in range(n):
        if same_size:
            img = inputs[i].detach().float().cpu()
            ax = axes[i][0]
            shown = img[0] if img.shape[0] == 1 else img.permute(1, 2, 0)
            lo, hi = float(shown.min()), float(shown.max())
            if lo < 0 or hi > 1:
                shown = (shown - lo) / (hi - lo) if hi > lo else shown * 0
            ax.imshow(shown.numpy(), cmap="gray" if shown.dim() == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{titles[i]}: input", parse_math=False)
            visualize.image_heatmap(attr[i].sum(dim=0), img, ax=axes[i][1], title="attribution")
        else:
            visualize.image_heatmap(attr[i].sum(dim=0), ax=axes[i][0], title=f"{titles[i]}: attribution")


@dataclass
class HtmlReport:
    """A static HTML page built from parts, written atomically.

    Examples
    --------
    >>> r = HtmlReport("Attributions")
    >>> r.heading("Digits"); r.paragraph("A small CNN.")
    >>> r.table(["example", "delta"], [[0, 1e-4]])
    >>> r.write("out/index.html")  # doctest: +SKIP
    """

    title: str
    parts: list = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str, raw: bool = False) -> None:
        self.parts.append(f"<p>{text if raw else html.escape(text)}</p>")

    def image(self, src: str | os.PathLike, caption: str = "", width: int | None = None) -> None:
        """A picture; ``src`` is its path relative to the page (any file name: it is percent-encoded here)."""
        style = f' style="max-width:{width}px"' if width else ""
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        self.parts.append(
            f'<figure><img src="{_href(src, "src")}" alt="{html.escape(caption or os.fspath(src))}"{style}>{cap}'
            "</figure>"
        )

    def raw(self, fragment: str) -> None:
        self.parts.append(fragment)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "") -> None:
        head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
        cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
        self.parts.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")

    def links(self, items: Sequence[tuple[str, str | os.PathLike]]) -> None:
        """A list of ``(text, path)`` links; each path is relative to the page and percent-encoded here."""
        lis = "".join(f'<li><a href="{_href(h, "items")}">{html.escape(t)}</a></li>' for t, h in items)
        self.parts.append(f"<ul>{lis}</ul>")

    def render(self) -> str:
        now = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        try:
            from importlib.metadata import version

            ver = version("integrad")
        except Exception:
            ver = "unknown"
        body = "\n".join(self.parts)
        return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(self.title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }} td:first-child, th:first-child {{ text-align: left; }}
caption {{ caption-side: top; text-align: left; font-weight: 600; padding-bottom: 0.3em; }}
figure {{ display: inline-block; margin: 0.5em 1em 0.5em 0; vertical-align: top; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-size: 0.85em; color: #555; }}
code {{ background: #f5f5f5; padding: 0 0.2em; }}
.tokens {{ line-height: 2; margin: 0.5em 0 1em 0; }}
footer {{ margin-top: 3em; font-size: 0.8em; color: #777; }}
</style></head>
<body>
<h1>{html.escape(self.title)}</h1>
{body}
<footer>Written by integrad {html.escape(ver)} on {now}. Red is evidence for the target, blue against it.</footer>
</body></html>
"""

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page to ``path`` (created with its missing parent folders, or replaced whole)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, self.render().encode("utf-8"))
        return path


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
