"""Pictures and HTML renderings of Integrated Gradients attributions.

This package is the optional ``viz`` extra. Everything that draws needs matplotlib, which is imported only when a
drawing function is called, so ``import integrad.viz`` works without it (and :func:`text_html` and
:func:`normalize_attribution` need no matplotlib at all)::

    pip install "integrad[viz]"

All functions accept ``torch.Tensor`` or ``numpy.ndarray`` inputs and never modify them. None of them calls
``plt.show``; figures are returned for the caller to display or to write with :func:`save_figure`.

Colour convention, shared by every picture: red is positive attribution (evidence for the target), blue is negative
(evidence against it).

Modules
-------
:mod:`.images`
    :func:`normalize_attribution` (the colour scale), :func:`image_heatmap`, :func:`image_side_by_side`.
:mod:`.text`
    :func:`text_html`, tokens highlighted in HTML.
:mod:`.features`
    :func:`feature_bars`, a bar chart of feature attributions.
:mod:`.integrand`
    :func:`integrand_profile` and :func:`path_integrand`, the integrand along the path with the quadrature points.
:mod:`.report`
    :func:`plot_attributions` (a batch in one picture), :class:`HtmlReport`, :func:`token_scores`.
``_figures`` and ``_checks``
    What the others share: matplotlib access and the backend, colours, figures closed on failure,
    :func:`save_figure`; the argument checks.

References
----------
.. [1] M. Sundararajan, A. Taly and Q. Yan, "Axiomatic Attribution for Deep
   Networks", ICML 2017. https://arxiv.org/abs/1703.01365
"""

from ._figures import save_figure
from .features import feature_bars
from .images import image_heatmap, image_side_by_side, normalize_attribution
from .integrand import integrand_profile, path_integrand
from .report import HtmlReport, plot_attributions, token_scores
from .text import text_html

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
