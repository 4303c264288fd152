"""Important Direction Gradient Integration (Yang, Wang, Bilgic 2023) over integrated-gradients methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .. import arguments
from ..engine import PathIntegral, Reduction, Rows
from ..engine.evaluate import accumulation_dtype
from ..paths import Path
from .base import convergence_delta, keeps_model_state, restore_structure
from .blur import BlurIntegratedGradients
from .guided import GuidedIntegratedGradients
from .integrated_gradients import IntegratedGradients

TensorOrTuple = Tensor | tuple[Tensor, ...]


class ImportantDirectionSum(Reduction):
    r"""IDGI's sum over the points ``x_0 … x_N`` of a path, from rows that arrive step-major (row ``j·B + b`` is
    example ``b`` at ``x_j``) in chunks of any size:
    ``A_b = Σ_{j<N} g_j² (f_{j+1} − f_j) / Σ g_j²``, with ``g_j`` the gradient (not multiplied by a velocity) and
    ``f_j`` the output at ``x_j``.

    Step ``j``'s share cannot be added before ``f_{j+1}`` is known, which may come in the next chunk: each example
    keeps its last step's normalised squares and output (one step of lag), never every step's gradients. The
    normaliser ``Σ g_j²`` runs over every element of the example, all path tensors together; a step whose gradient
    is all zero adds nothing. The last point's gradient is not used.

    Parameters
    ----------
    rows : Rows or None
        The engine's rows (unused: the layout is fixed).
    path : Path
        The path (its batch, shapes, device and accumulation dtype).
    """

    def __init__(self, rows: Rows | None, path: Path):
        self.batch = path.batch
        self.like = path.like
        self.dtype = accumulation_dtype(path)
        sizes = [x[0].numel() for x in path.like]
        width = sum(sizes)
        self.sizes = sizes
        self.sums = torch.zeros((self.batch, width), dtype=self.dtype, device=path.device)
        self.shares = torch.zeros_like(self.sums)  # g_j² / Σ g_j² of each example's last step
        self.values = torch.zeros(self.batch, dtype=torch.float64, device=path.device)  # f_j of that step
        #: ``f_0`` and ``f_N`` of every example (float64): the path's ends, for the convergence delta.
        self.first_values = torch.zeros_like(self.values)
        self.last_values = torch.zeros_like(self.values)
        self.received = 0

    def add(self, grads: list[Tensor], values: Tensor, first: int, count: int, tiled: bool) -> None:
        if first != self.received:
            raise RuntimeError(f"rows must arrive in order: expected row {self.received}, got {first}")
        flat = torch.cat([g.reshape(count, -1) for g in grads], 1).to(self.dtype)
        outputs = values.to(device=self.values.device, dtype=torch.float64)
        done = 0
        while done < count:
            step, example = divmod(first + done, self.batch)
            n = min(self.batch - example, count - done)
            self._step(step, slice(example, example + n), flat[done : done + n], outputs[done : done + n])
            done += n
        self.received = first + count

    def _step(self, step: int, examples: slice, gradient: Tensor, outputs: Tensor) -> None:
        """Examples ``examples`` at point ``step``: settle the previous step's share, keep this one's."""
        if step == 0:
            self.first_values[examples] = outputs
        else:
            change = (outputs - self.values[examples]).to(self.dtype)
            self.sums[examples] += self.shares[examples] * change.unsqueeze(1)
        # Squares of the gradient scaled by its largest element: neither they nor their sum over- or underflow.
        largest = gradient.abs().amax(1, keepdim=True)
        unit = gradient / torch.where(largest > 0, largest, 1.0)
        squares = unit * unit
        # The largest square is 1, so the sum is at least 1 unless the gradient is all zero: its shares are then 0.
        self.shares[examples] = squares / squares.sum(1, keepdim=True).clamp(min=1.0)
        self.values[examples] = outputs
        self.last_values[examples] = outputs

    def attributions(self) -> list[Tensor]:
        """The sums, one tensor per path tensor, shaped like it."""
        return [part.reshape(x.shape) for part, x in zip(self.sums.split(self.sizes, 1), self.like)]


#: What IDGI can wrap, and the arguments of each that place its points.
WRAPPABLE = (IntegratedGradients, BlurIntegratedGradients, GuidedIntegratedGradients)


class IDGI:
    r"""Important Direction Gradient Integration: integrated gradients with each step's change of the output
    credited along its gradient only.

    On the points ``x_0 … x_N`` of the wrapped method's path (baseline to input), with gradients ``g_j`` and outputs
    ``f_j``: ``A = Σ_{j<N} g_j² (f_{j+1} − f_j) / Σ_i g_{j,i}²``. Step ``j`` moves the output by
    ``f_{j+1} − f_j``; only the component of the move along ``g_j`` does so to first order, so that change is
    split among the features in proportion to ``g_j²`` (the normaliser sums over every element of an example, all
    inputs of a tuple together). The attributions add up to ``f_N − f_0`` exactly (to rounding) whenever no step's
    gradient is all zero, however few the points; a step of zero gradient adds nothing.

    The points are those of the wrapped method:

    * :class:`IntegratedGradients`: ``x_j = x′ + (j/N)(x − x′)``, ``j = 0 … N`` for ``n_steps = N``;
    * :class:`BlurIntegratedGradients`: the blur levels ``σ_N … σ_0 = 0`` of its default sum;
    * :class:`GuidedIntegratedGradients`: the guided path's points, the end point included.

    Parameters
    ----------
    method : IntegratedGradients, BlurIntegratedGradients or GuidedIntegratedGradients

    References
    ----------
    Yang, Wang, Bilgic. IDGI: A Framework to Eliminate Explanation Noise from Integrated Gradients. CVPR 2023.
    https://arxiv.org/abs/2303.14242
    """

    def __init__(self, method: Any):
        if not isinstance(method, WRAPPABLE):
            raise TypeError(
                "method must be an integrad IntegratedGradients, BlurIntegratedGradients or GuidedIntegratedGradients; "
                f"got {type(method).__name__}"
            )
        self.method = method
        self.last_report = None

    @property
    def forward_func(self) -> Callable:
        return self.method.forward_func

    def has_convergence_delta(self) -> bool:
        return True

    @keeps_model_state
    def attribute(self, inputs: TensorOrTuple, **kwargs: Any):
        """IDGI attributions on the wrapped method's points.

        Parameters
        ----------
        inputs : Tensor or tuple of Tensor
            As the wrapped method takes them.
        **kwargs
            The wrapped method's arguments that place its points, by name: ``baselines``, ``target``,
            ``additional_forward_args``, ``n_steps``, ``internal_batch_size``, ``memory_budget`` for integrated
            gradients; ``target``, ``additional_forward_args``, ``max_sigma``, ``n_steps``, ``sqrt``,
            ``internal_batch_size``, ``memory_budget`` for Blur IG; those of Guided IG's ``attribute``. A quadrature
            ``method`` (or ``"auto"``), ``grad_step`` and ``tolerance`` do not apply: the sum runs over the points.
            ``return_convergence_delta=True`` also returns ``Σ attributions − (f_N − f_0)`` per example.

        Returns
        -------
        attributions : Tensor or tuple of Tensor
            Same structure, shapes and dtypes as ``inputs``.
        delta : Tensor
            Only with ``return_convergence_delta=True``.
        """
        want_delta = arguments.check_bool("return_convergence_delta", kwargs.pop("return_convergence_delta", False))
        reduce_points = _points_of(self.method)
        accepted = [name for name in inspect.signature(reduce_points).parameters if name not in ("reduction", "inputs")]
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            raise TypeError(
                f"{', '.join(unknown)} {'is not an argument' if len(unknown) == 1 else 'are not arguments'} of IDGI "
                f"over {type(self.method).__name__}, which sums over the method's points; accepted: "
                f"{', '.join(accepted)}, return_convergence_delta"
            )
        integral, was_tuple = reduce_points(ImportantDirectionSum, inputs, **kwargs)
        total = integral.reduction
        attributions = tuple(a.to(dt) for a, dt in zip(total.attributions(), integral.path.dtypes))
        report = integral.report
        report.delta = convergence_delta(attributions, total.first_values.cpu(), total.last_values.cpu())
        self.last_report = report
        if want_delta:
            return restore_structure(attributions, was_tuple), report.delta
        return restore_structure(attributions, was_tuple)


def _points_of(method: Any) -> Callable[..., tuple[PathIntegral, bool]]:
    """The wrapped method's function that hands its points' gradients and outputs to a reduction."""
    return method._reduce_points
