"""Small deterministic models and independent references for the tests of the library's mathematics and behaviour.

Every factory builds the same weights every time from a private seed (the global random state is left alone), in the
dtype asked for. Models whose path integrand is known in closed form let tests compare against exact integrals. The
references never call integrad: they integrate with an explicit loop over Gauss–Legendre nodes and
``torch.autograd.grad``, so agreement with the library is evidence, not a tautology.

Also the helpers several test modules share (see conftest.py): the engine tests' sizes, the references of
``n_steps="auto"``, curved paths, random polynomials, and running ``python -m integrad``.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

METHODS = ("riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre")


def seeded(build, seed: int = 0, dtype: torch.dtype = torch.float64) -> nn.Module:
    """``build()`` under a private seed, cast to ``dtype``, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build()
    return model.to(dtype).eval()


def randn(*shape: int, seed: int = 0, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def assert_close_scaled(actual, expected, rtol: float = 1e-7, what: str = "") -> None:
    """``max |actual − expected| ≤ rtol · max |expected|`` for each pair of tensors (tuples and lists pair up).

    The scale is the largest magnitude of the expected tensor, so entries near zero (cancellation in the integral)
    do not demand more than the precision of the whole attribution map.
    """
    if isinstance(expected, (tuple, list)):
        assert isinstance(actual, type(expected)), (
            f"{what}: got {type(actual).__name__}, expected {type(expected).__name__}"
        )
        assert len(actual) == len(expected), f"{what}: lengths {len(actual)} != {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            assert_close_scaled(a, e, rtol, f"{what}[{i}]")
        return
    assert isinstance(actual, torch.Tensor), f"{what}: got {type(actual).__name__}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    scale = float(e.abs().max()) if e.numel() else 0.0
    err = float((a - e).abs().max()) if e.numel() else 0.0
    assert err <= rtol * scale + 1e-300, f"{what}: max abs error {err:.3e} > {rtol:.1e} x scale {scale:.3e}"


class PolynomialPath(nn.Module):
    r"""``F(z) = Σ_k a_k z^{k+1} / (k+1)`` summed over features, so that ``F'(z) = p(z) = Σ_k a_k z^k``.

    On the path ``z = α · x`` from the zero baseline with ``x = 1`` the integrand ``d/dα F(αx) = x · p(αx)`` is the
    polynomial ``p(α)`` itself, and the integral is ``F(1) − F(0) = Σ_k a_k / (k+1)``.
    """

    def __init__(self, coefficients) -> None:
        super().__init__()
        self.register_buffer("a", torch.as_tensor(np.asarray(coefficients, dtype=np.float64)))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        powers = torch.arange(1, self.a.numel() + 1, dtype=z.dtype, device=z.device)
        terms = z.unsqueeze(-1) ** powers * (self.a.to(z.dtype) / powers)
        return terms.sum(-1).reshape(z.shape[0], -1).sum(1)


class SmallCNN(nn.Module):
    """``(N, 2, 6, 6) -> (N, 4)``: convolution, ReLU, average pooling, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 3, 3, padding=1)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv1(x))
        h = torch.tanh(self.conv2(h))
        return self.fc(self.pool(h).flatten(1))


class ThreeInputs(nn.Module):
    """``(x1 (N, 4), x2 (N, 2, 3), x3 (N, 5)) -> (N, 3)`` with interactions between the inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 6)
        self.b = nn.Linear(6, 6)
        self.c = nn.Linear(5, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x1, x2, x3):
        h = torch.tanh(self.a(x1)) * torch.sigmoid(self.b(x2.flatten(1))) + torch.tanh(self.c(x3))
        return self.head(h)


class GridOutput(nn.Module):
    """``(N, 6) -> (N, 3, 4)``: an output with two dimensions after the batch, for tuple targets."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 12))

    def forward(self, x):
        return self.body(x).view(-1, 3, 4)


class WithExtras(nn.Module):
    """``forward(x, mask, mode)``: a per-example tensor mask and a non-tensor option, neither attributed."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))

    def forward(self, x, mask, mode):
        out = self.body(x * mask)
        return out * 2.0 if mode == "double" else out


class TextModel(nn.Module):
    """Token ids and an attention mask -> 3 classes (embedding, masked mean, tanh, linear)."""

    def __init__(self, vocab: int = 20, dim: int = 6) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim, padding_idx=0)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids, attention_mask):
        e = self.embed(ids)
        m = attention_mask.unsqueeze(-1).to(e.dtype)
        pooled = (torch.tanh(self.mix(e)) * m).sum(1) / m.sum(1).clamp_min(1.0)
        return self.head(pooled)


class TwoBranches(nn.Module):
    """Two inputs through independent layers ``left`` and ``right``, joined by a nonlinear head."""

    def __init__(self) -> None:
        super().__init__()
        self.left = nn.Linear(4, 5)
        self.right = nn.Linear(3, 5)
        self.head = nn.Linear(5, 2)

    def forward(self, x1, x2):
        left = torch.tanh(self.left(x1))
        return self.head(left * torch.tanh(self.right(x2)) + left)


def mlp(
    n_in: int = 6,
    hidden: int = 16,
    n_out: int = 4,
    seed: int = 0,
    act: type[nn.Module] = nn.Tanh,
    dtype: torch.dtype = torch.float32,
) -> nn.Sequential:
    """``Linear → act → Linear``, in eval mode; indices 0, 1, 2 name the layers."""
    return seeded(lambda: nn.Sequential(nn.Linear(n_in, hidden), act(), nn.Linear(hidden, n_out)), seed, dtype)


def deep_mlp(in_dim: int = 6, hidden: int = 16, out: int = 4, seed: int = 0) -> nn.Sequential:
    """``Linear → Tanh → Linear → Tanh → Linear``: layers 0 and 2 feed each other's path."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, out)
        )


@functools.lru_cache(maxsize=8)
def gl_rule(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss–Legendre nodes and weights on [0, 1], independent of integrad.rules.

    NumPy's ``leggauss`` for small ``n``; for large ``n`` (where its O(n³) eigenvalue solve is slow) Newton's method
    on the Legendre three-term recurrence from Tricomi's initial guesses, converged to rounding.
    """
    if n <= 128:
        nodes, weights = np.polynomial.legendre.leggauss(n)
    else:
        k = np.arange(1, n + 1)
        x = np.cos(np.pi * (k - 0.25) / (n + 0.5))
        for _ in range(100):
            p_prev, p = np.ones_like(x), x.copy()
            for j in range(2, n + 1):
                p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
            dp = n * (x * p - p_prev) / (x * x - 1)
            step = p / dp
            x = x - step
            if np.max(np.abs(step)) < 1e-15:
                break
        p_prev, p = np.ones_like(x), x.copy()
        for j in range(2, n + 1):
            p_prev, p = p, ((2 * j - 1) * x * p - (j - 1) * p_prev) / j
        dp = n * (x * p - p_prev) / (x * x - 1)
        nodes, weights = x[::-1].copy(), (2 / ((1 - x * x) * dp * dp))[::-1].copy()
    return (nodes + 1) / 2, weights / 2


class Counting(nn.Module):
    """Wraps a model; counts calls and records the batch size of each call."""

    def __init__(self, inner: Callable):
        super().__init__()
        self.inner = inner
        self.calls = 0
        self.sizes: list[int] = []

    def forward(self, *args):
        self.calls += 1
        self.sizes.append(args[0].shape[0])
        return self.inner(*args)


class RowLimited(nn.Module):
    """Raises ``make_error()`` whenever asked for more than ``limit`` rows, like a device that is out of memory."""

    def __init__(self, inner: nn.Module, limit: int, make_error: Callable[[], BaseException]):
        super().__init__()
        self.inner = inner
        self.limit = limit
        self.make_error = make_error
        self.calls = 0
        self.failures = 0

    def forward(self, x, *rest):
        self.calls += 1
        if x.shape[0] > self.limit:
            self.failures += 1
            raise self.make_error()
        return self.inner(x, *rest)


class FailsOnCall(nn.Module):
    """A model that raises ``error`` on its ``when``-th call (1-based) and counts every call."""

    def __init__(self, inner: nn.Module, error: BaseException, when: int = 1):
        super().__init__()
        self.inner = inner
        self.error = error
        self.when = when
        self.calls = 0

    def forward(self, x, *rest):
        self.calls += 1
        if self.calls >= self.when:
            raise self.error
        return self.inner(x, *rest)


class TextClassifier(nn.Module):
    """Token ids and an attention mask → 3 logits, through an embedding, masked mean pooling and an MLP."""

    def __init__(self, vocab: int = 20, dim: int = 8, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.embed = nn.Embedding(vocab, dim, padding_idx=0)
            self.hidden = nn.Linear(dim, 16)
            self.head = nn.Linear(16, 3)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        e = self.embed(ids) * mask.unsqueeze(-1).to(torch.float32)
        pooled = e.sum(1) / mask.sum(1, keepdim=True).clamp_min(1).to(torch.float32)
        return self.head(torch.tanh(self.hidden(pooled)))


class Split(nn.Module):
    """Returns a tuple: two different nonlinear views of its input."""

    def __init__(self, dim: int):
        super().__init__()
        self.a = nn.Linear(dim, dim)
        self.b = nn.Linear(dim, dim)

    def forward(self, x):
        return torch.tanh(self.a(x)), torch.sin(self.b(x))


class TupleLayerModel(nn.Module):
    """``x → pre → Split (tuple output) → head(u * v + u)``."""

    def __init__(self, dim: int = 5, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.pre = nn.Linear(dim, dim)
            self.split = Split(dim)
            self.head = nn.Linear(dim, 3)

    def forward(self, x):
        u, v = self.split(torch.tanh(self.pre(x)))
        return self.head(u * v + u)


class TwoBranch(nn.Module):
    """Two parallel branches combined multiplicatively: neither branch feeds the other."""

    def __init__(self, dim: int = 5, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.left = nn.Linear(dim, 4)
            self.right = nn.Linear(dim, 4)
            self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(torch.tanh(self.left(x)) * torch.tanh(self.right(x)) + torch.tanh(self.left(x)))


class TwoInputs(nn.Module):
    """Two input tensors of different shapes, an extra per-example scale argument, 3 outputs."""

    def __init__(self, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.a = nn.Linear(4, 8)
            self.b = nn.Linear(6, 8)
            self.head = nn.Linear(8, 3)

    def forward(self, x1, x2, scale=None):
        h = torch.tanh(self.a(x1) + self.b(x2.flatten(1)))
        if scale is not None:
            h = h * scale.view(-1, 1)
        return self.head(h)


class Tail(nn.Module):
    """Counts its calls; raises when ``armed`` so that a test can prove it never runs."""

    def __init__(self, inner: nn.Module, armed: bool):
        super().__init__()
        self.inner = inner
        self.armed = armed
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.armed:
            raise AssertionError("the layers after the neuron's layer must not run")
        return self.inner(x)


class Body(nn.Module):
    """``Linear → Tanh → Linear(=mid) → Tanh → tail``; ``mid`` is the neuron layer used by the neuron tests."""

    def __init__(self, armed: bool, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.first = nn.Linear(5, 7)
            self.mid = nn.Linear(7, 6)
            self.tail = Tail(nn.Linear(6, 2), armed)

    def forward(self, x):
        return self.tail(torch.tanh(self.mid(torch.tanh(self.first(x)))))


def manual_ig(f: Callable[[Tensor], Tensor], x: Tensor, baseline: Tensor, n: int = 64) -> Tensor:
    """IG of ``f`` (one scalar per row) by an explicit loop over Gauss–Legendre nodes, in float64."""
    x64, b64 = x.detach().double(), baseline.detach().double().expand_as(x)
    total = torch.zeros_like(x64)
    alphas, weights = gl_rule(n)
    for a, w in zip(alphas, weights):
        z = (b64 + float(a) * (x64 - b64)).requires_grad_()
        (g,) = torch.autograd.grad(f(z).sum(), z)
        total += float(w) * g
    return total * (x64 - b64)


@contextlib.contextmanager
def _hooks(layers: Sequence[nn.Module], fn_for: Callable[[int], Callable], use_input: bool):
    handles = []
    try:
        for i, layer in enumerate(layers):
            if use_input:
                handles.append(layer.register_forward_pre_hook(fn_for(i)))
            else:
                handles.append(layer.register_forward_hook(fn_for(i)))
        yield
    finally:
        for h in handles:
            h.remove()


def layer_values(model: Callable, layers: Sequence[nn.Module], args: tuple, use_input: bool = False) -> list:
    """Each layer's output (or its single input) for a full forward of ``model(*args)``."""
    values: list = [None] * len(layers)

    def fn_for(i):
        if use_input:

            def pre(module, a):
                values[i] = a[0]

            return pre

        def post(module, a, out):
            values[i] = out

        return post

    with torch.no_grad(), _hooks(layers, fn_for, use_input):
        model(*args)
    return values


def manual_layer_ig(
    model: Callable,
    layers: Sequence[nn.Module],
    args: tuple,
    base_args: tuple,
    target: Tensor,
    n: int = 64,
    use_input: bool = False,
) -> list:
    """Joint layer IG of ``model(*args)[i, target[i]]``: every listed layer's value replaced at once by its point on
    the straight path between its values at ``base_args`` and at ``args``. Values may be tensors or tuples."""
    ends = layer_values(model, layers, args, use_input)
    starts = layer_values(model, layers, base_args, use_input)
    as_tuple = [isinstance(v, tuple) for v in ends]
    ends = [v if isinstance(v, tuple) else (v,) for v in ends]
    starts = [v if isinstance(v, tuple) else (v,) for v in starts]
    sums = [[torch.zeros_like(p, dtype=torch.float64) for p in parts] for parts in ends]
    alphas, weights = gl_rule(n)
    for a, w in zip(alphas, weights):
        points = [
            [(s.double() + float(a) * (e.double() - s.double())).float().requires_grad_() for s, e in zip(ss, es)]
            for ss, es in zip(starts, ends)
        ]

        def fn_for(i, points=points):
            value = tuple(points[i]) if as_tuple[i] else points[i][0]
            if use_input:
                return lambda module, inp: (value,)
            return lambda module, inp, out: value

        with torch.enable_grad(), _hooks(layers, fn_for, use_input):
            out = model(*args)
        picked = out.gather(1, target.view(-1, 1)).sum()
        flat = [p for parts in points for p in parts]
        grads = torch.autograd.grad(picked, flat, allow_unused=True)
        pos = 0
        for i, parts in enumerate(points):
            for j in range(len(parts)):
                g = grads[pos]
                if g is not None:
                    sums[i][j] += float(w) * g.double()
                pos += 1
    result = []
    for i in range(len(layers)):
        parts = tuple(s * (e.double() - b.double()) for s, e, b in zip(sums[i], ends[i], starts[i]))
        result.append(parts if as_tuple[i] else parts[0])
    return result


def row_activation_bytes(model: Callable, x: Tensor) -> float:
    """Bytes autograd saves per row for a forward of ``model`` on ``x`` (input included, parameters excluded),
    measured with ``saved_tensors_hooks`` and counted once per storage."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()} if isinstance(model, nn.Module) else set()
    seen: set[int] = set()
    total = 0

    def pack(t):
        nonlocal total
        storage = t.untyped_storage()
        key = storage.data_ptr()
        if key not in seen and key not in params:
            seen.add(key)
            total += storage.nbytes()
        return t

    z = x.detach().clone().requires_grad_()
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(z)
    del out
    return total / x.shape[0]


def no_hooks_left(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules())


def saved_tensor_hooks_left() -> bool:
    return torch._C._autograd._top_saved_tensors_default_hooks(False) is not None


@contextlib.contextmanager
def deadline(seconds: int, what: str):
    """Turn a hang into a test failure: raise TimeoutError in the main thread after ``seconds``."""
    import signal

    def expire(*_):
        raise TimeoutError(f"{what} did not finish within {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ---------------------------------------------------------------------------------------------------- the engine's data
#: The batch of the engine's tests (``data`` in conftest.py): B examples of 6 features, STEPS rule points each (40 path
#: rows per call); WIDE: the hidden width of ``wide``'s model, whose activations dominate a row's memory.
B, STEPS = 4, 10
WIDE = 512


# ------------------------------------------------------------------------------------------- n_steps="auto": references
def reference_ig(f, x: torch.Tensor, baseline: torch.Tensor, n: int = 4096) -> torch.Tensor:
    """IG by an n-point Gauss–Legendre rule, all nodes of one example in one batched autograd call."""
    alphas, weights = (torch.from_numpy(v) for v in gl_rule(n))
    out = torch.empty_like(x, dtype=torch.float64)
    for i in range(x.shape[0]):
        xi, bi = x[i].to(torch.float64), baseline[i].to(torch.float64)
        z = (bi + alphas.view(-1, *([1] * xi.dim())) * (xi - bi)).requires_grad_()
        (g,) = torch.autograd.grad(f(z).sum(), z)
        out[i] = (weights.view(-1, *([1] * xi.dim())) * g).sum(0) * (xi - bi)
    return out


def relative_l1(a: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """``|A − A*|₁ / |A*|₁`` per example, in float64."""
    return (a.to(torch.float64) - exact).reshape(len(a), -1).abs().sum(1) / exact.reshape(len(a), -1).abs().sum(1)


#: ``kinked``'s thresholds ``c_i`` and slopes ``s_i``.
KINK_C = torch.tensor([0.3, 0.5, 0.7, 0.9, 1.1, 0.2], dtype=torch.float64)
KINK_SLOPE = torch.tensor([0.5, -1.0, 0.25, 2.0, -0.5, 1.0], dtype=torch.float64)


def kinked(z):
    """F(x) = Σ_i relu(x_i − c_i) + Σ_i s_i x_i, with c_i > 0."""
    return torch.relu(z - KINK_C).sum(1) + z @ KINK_SLOPE


def kinked_ig(x):
    """Closed form for a zero baseline and x_i > 0: on the path αx, ∂F/∂x_i = 1[α x_i > c_i] + s_i, so
    A_i = x_i (max(0, 1 − c_i / x_i) + s_i) = relu(x_i − c_i) + s_i x_i."""
    return torch.relu(x - KINK_C) + KINK_SLOPE * x


KINK_X = torch.tensor(
    [
        [1.0, 2.0, 0.8, 3.0, 1.5, 0.15],  # five kinks inside the path
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.1],
    ],  # no kink: F is linear along this path
    dtype=torch.float64,
)


# ---------------------------------------------------------------------------------------------------------- polynomials
def random_polynomial(rng: np.random.Generator, degree: int) -> np.ndarray:
    """Coefficients ``a_0 .. a_degree`` (ascending) with a leading coefficient of magnitude at least 1/2."""
    a = rng.uniform(-1.0, 1.0, degree + 1)
    a[-1] = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0)
    return a


# ---------------------------------------------------------------------------------------------------------------- paths
def curved_path(x, base, v):
    """γ(α) = x′ + α (x − x′) + sin(πα) v, from x′ to x."""

    def fn(alphas):
        a = alphas.view(-1, 1, 1)
        points = base + a * (x - base) + torch.sin(math.pi * a) * v
        velocities = (x - base).expand_as(points) + math.pi * torch.cos(math.pi * a) * v
        return points, velocities

    return fn


def loop_path_integral(f, gamma, gamma_dot, n: int) -> torch.Tensor:
    """Σ_k w_k ∇f(γ(α_k)) ⊙ γ′(α_k) over n Gauss–Legendre nodes, one autograd call per node."""
    alphas, weights = gl_rule(n)
    total = 0
    for a, w in zip(alphas, weights):
        z = gamma(float(a)).detach().requires_grad_()
        (g,) = torch.autograd.grad(f(z).sum(), z)
        total = total + w * g * gamma_dot(float(a))
    return total


def relative_max_error(a, b) -> float:
    """``max |a − b| / max |b|``."""
    return float((a - b).abs().max() / b.abs().max())


# ----------------------------------------------------------------------------------------------------- the command line
TESTS = Path(__file__).resolve().parent


def integrad_env() -> dict:
    """The environment of an ``integrad`` child process: this folder on ``PYTHONPATH`` (for ``cli_factories``)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


def run_integrad(*args, cwd=None, timeout=120):
    """``python -m integrad *args`` in a child process, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "integrad", *args],
        env=integrad_env(),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
