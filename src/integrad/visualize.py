"""Plots and HTML renderings of attributions: the public name of :mod:`integrad.viz`, whose functions it re-exports.

See :mod:`integrad.viz` for what each function draws and where it lives. The names are listed here rather than
star-imported, so that documentation tools and type checkers read them without running the package.
"""

from .viz import (
    HtmlReport,
    feature_bars,
    image_heatmap,
    image_side_by_side,
    integrand_profile,
    normalize_attribution,
    path_integrand,
    plot_attributions,
    save_figure,
    text_html,
    token_scores,
)

__all__ = [
    "normalize_attribution",
    "image_heatmap",
    "image_side_by_side",
    "text_html",
    "feature_bars",
    "integrand_profile",
    "path_integrand",
    "save_figure",
    "plot_attributions",
    "token_scores",
    "HtmlReport",
]
