"""integrad.tune.optimize: samplers, search-space handling, pruning, state restoration, and that tuning helps."""

import itertools
import math
import sys

import optuna
import pytest
import torch

from integrad import metrics
from integrad.explainers import IntegratedGradients
from integrad.explainers.baselines import get_baseline_fn
from integrad.tune import OptimizationResult, grid_values, optimize

SMALL_SPACE = {
    "n_steps": (int, {"low": 4, "high": 12, "step": 4}),
    "method": (str, {"choices": ["riemann_left", "gausslegendre"]}),
    "baseline_fn": (str, {"choices": ["zeros", "mean"]}),
}


@pytest.fixture(scope="module")
def tuning_batch(trained):
    return trained.test_x[:8], trained.test_y[:8]


def _completeness(model, inputs, attributions, targets, **options):
    """|Σ attributions − (F(x) − F(0))| per example, computed here independently of the library."""
    with torch.no_grad():
        rows = torch.arange(len(targets))
        gap = model(inputs)[rows, targets] - model(torch.zeros_like(inputs))[rows, targets]
    return (attributions.sum(dim=(1, 2, 3)) - gap).abs()


_completeness.higher_is_better = False


def test_random_sampler_returns_the_best_trial(trained, tuning_batch):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model)
    result = optimize(explainer, x, y, _completeness, n_trials=6, sampler="random", seed=0, tunables=SMALL_SPACE)
    assert isinstance(result, OptimizationResult)
    assert result.study.direction == optuna.study.StudyDirection.MINIMIZE
    values = [t.value for t in result.study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(result.study.trials) == 6 and result.value == min(values)
    # The explainer's own configuration is tried first.
    # The explainer's own configuration is tried first, where it lies in the space (n_steps=20 does not).
    first = result.study.trials[0].params
    assert (first["method"], first["baseline_fn"]) == ("gausslegendre", "zeros")
    # The returned explainer is configured at the best point and reproduces its value; the input is unchanged.
    tuned = result.explainer
    assert tuned.n_steps == result.params["n_steps"] and tuned.core_kwargs["method"] == result.params["method"]
    assert tuned.model is explainer.model and explainer.n_steps == 20 and explainer.core_kwargs == {}
    again = _completeness(trained.model, x, tuned.attribute(x, y), y).mean().item()
    assert math.isclose(again, result.value, rel_tol=1e-6, abs_tol=1e-9)


def test_grid_sampler_visits_the_whole_finite_grid(trained, tuning_batch):
    x, y = tuning_batch
    result = optimize(
        IntegratedGradients(trained.model),
        x,
        y,
        _completeness,
        n_trials=100,
        sampler="grid",
        seed=0,
        tunables=SMALL_SPACE,
    )
    visited = {(t.params["n_steps"], t.params["method"], t.params["baseline_fn"]) for t in result.study.trials}
    assert len(result.study.trials) == 12
    assert visited == set(itertools.product([4, 8, 12], ["riemann_left", "gausslegendre"], ["zeros", "mean"]))
    # The completeness gap of Gauss-Legendre at 12 points is the smallest of this grid for the zero baseline.
    zero_trials = {
        (t.params["n_steps"], t.params["method"]): t.value
        for t in result.study.trials
        if t.params["baseline_fn"] == "zeros"
    }
    assert zero_trials[(12, "gausslegendre")] < zero_trials[(4, "riemann_left")]


def test_grid_values_of_each_tunable_kind():
    assert grid_values(int, {"low": 10, "high": 100, "step": 10}) == list(range(10, 101, 10))
    assert grid_values(float, {"low": 0.0, "high": 0.3, "step": 0.1}) == [0.0, 0.1, 0.2, 0.3]
    assert grid_values(float, {"low": 0.01, "high": 1.0, "log": True}, points=3) == [0.01, 0.1, 1.0]
    assert grid_values(int, {"low": 1, "high": 3}) == [1, 2, 3]
    assert grid_values(str, {"choices": ["a", "b"]}) == ["a", "b"]


def test_grid_over_the_default_space_leaves_dependent_entries_at_defaults(trained, tuning_batch):
    x, y = tuning_batch
    result = optimize(
        IntegratedGradients(trained.model, n_steps=4), x, y, _completeness, n_trials=3, sampler="grid", seed=1
    )
    assert len(result.study.trials) == 3
    for trial in result.study.trials:
        # The rule and the noise tunnel exist only without IDGI.
        ruled = {"method", "noise_level"} if not trial.params["idgi"] else set()
        assert set(trial.params) == {"n_steps", "baseline_fn", "idgi"} | ruled


def test_non_finite_trials_fail_and_the_search_goes_on(trained, tuning_batch):
    x, y = tuning_batch

    def broken_for_mean(model, inputs, attributions, targets, *, explainer=None):
        # A metric that breaks down (NaN at two examples) for one of the baselines.
        score = attributions.abs().sum(dim=(1, 2, 3))
        if explainer.baseline_fn.name == "mean":
            score[[2, 5]] = float("nan")
        return score

    broken_for_mean.higher_is_better = True
    result = optimize(
        IntegratedGradients(trained.model), x, y, broken_for_mean, n_trials=12, sampler="grid", tunables=SMALL_SPACE
    )
    states = [(t.params["baseline_fn"], t.state) for t in result.study.trials]
    assert len(states) == 12
    assert all(state == optuna.trial.TrialState.FAIL for name, state in states if name == "mean")
    assert all(state == optuna.trial.TrialState.COMPLETE for name, state in states if name == "zeros")
    assert result.params["baseline_fn"] == "zeros" and math.isfinite(result.value)
    failed = [t for t in result.study.trials if t.state == optuna.trial.TrialState.FAIL]
    reason = failed[0].user_attrs["failed_because"]
    assert reason.startswith("metric broken_for_mean is nan for 2 of 8 example(s) (indices 2, 5) with {")
    assert "'baseline_fn': 'mean'" in reason


def test_all_trials_failing_is_an_error_that_says_why(trained, tuning_batch):
    x, y = tuning_batch

    def always_inf(model, inputs, attributions, targets, **options):
        return torch.full((len(targets),), float("inf"))

    always_inf.higher_is_better = False
    with pytest.raises(RuntimeError, match=r"all 2 trial\(s\) failed .*; the first: metric always_inf is infinite"):
        optimize(
            IntegratedGradients(trained.model),
            x,
            y,
            always_inf,
            n_trials=2,
            sampler="random",
            seed=0,
            tunables=SMALL_SPACE,
        )


class _NaNAt(torch.nn.Module):
    """The digits model, with a NaN output for one example (recognised by its first pixel)."""

    def __init__(self, model, marker):
        super().__init__()
        self.model = model
        self.marker = marker

    def forward(self, x):
        out = self.model(x)
        hit = x[:, 0, 0, 0] == self.marker
        return torch.where(hit[:, None], torch.full_like(out, float("nan")), out)


def test_a_nan_model_output_fails_every_trial_with_a_clear_message(trained, tuning_batch):
    # A library metric on a model whose output is NaN at example 3: no configuration can be ranked.
    x, y = tuning_batch
    x = x.clone()
    x[3, 0, 0, 0] = 7.0
    model = _NaNAt(trained.model, 7.0)
    with pytest.raises(RuntimeError, match=r"metric abpc is nan for 1 of 8 example\(s\) \(indices 3\)"):
        optimize(
            IntegratedGradients(model, n_steps=4),
            x,
            y,
            "abpc",
            n_trials=2,
            sampler="random",
            seed=0,
            tunables={"n_steps": SMALL_SPACE["n_steps"]},
            metric_kwargs={"n_steps": 4},
        )


def test_zero_attributions_tune_with_finite_sensitivity(trained, tuning_batch):
    # At x = x' every IG attribution is 0 while those of the perturbed inputs are not: sensitivity_max used to be inf
    # there, failing every trial; it is the absolute change now, finite and comparable between configurations.
    x, y = tuning_batch
    zeros = torch.zeros_like(x)
    result = optimize(
        IntegratedGradients(trained.model),
        zeros,
        y,
        "sensitivity_max",
        n_trials=3,
        sampler="grid",
        seed=0,
        tunables={"n_steps": SMALL_SPACE["n_steps"]},
        metric_kwargs={"n_perturbations": 2},
    )
    values = [t.value for t in result.study.trials]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in result.study.trials)
    assert all(math.isfinite(v) and v > 0 for v in values) and result.value == min(values)


def test_mu_fidelity_of_identical_subsets_scores_zero_in_every_trial():
    # Subsets of all features are all the same set: the correlation is undefined and scored 0, never +1 (which the
    # tuner, maximising, would pick).
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).double().eval()
    x = torch.randn(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    result = optimize(
        IntegratedGradients(model),
        x,
        y,
        "mu_fidelity",
        n_trials=6,
        sampler="grid",
        seed=0,
        tunables={"n_steps": SMALL_SPACE["n_steps"], "method": SMALL_SPACE["method"]},
        metric_kwargs={"subset_size": 5, "n_subsets": 7},
    )
    assert [t.value for t in result.study.trials] == [0.0] * 6


def test_seed_makes_the_search_reproducible_and_restores_state(trained, tuning_batch):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model, n_steps=4)
    space = {**SMALL_SPACE, "noise_level": (float, {"low": 0.0, "high": 0.2, "step": 0.1})}
    rng_state = torch.get_rng_state()
    verbosity = optuna.logging.get_verbosity()
    first = optimize(explainer, x, y, _completeness, n_trials=4, sampler="tpe", seed=3, tunables=space)
    assert torch.equal(torch.get_rng_state(), rng_state), "the global RNG must be restored"
    assert optuna.logging.get_verbosity() == verbosity
    second = optimize(explainer, x, y, _completeness, n_trials=4, sampler="tpe", seed=3, tunables=space)
    assert [t.params for t in first.study.trials] == [t.params for t in second.study.trials]
    assert [t.value for t in first.study.trials] == [t.value for t in second.study.trials]


def test_metric_options_are_filled_and_overridable(trained, tuning_batch):
    x, y = tuning_batch
    seen = []

    def recording(model, inputs, attributions, targets, *, seed=None, explainer=None, scale=1.0):
        seen.append((seed, explainer, scale))
        return attributions.abs().sum(dim=(1, 2, 3)) * scale

    recording.higher_is_better = True
    optimize(
        IntegratedGradients(trained.model),
        x,
        y,
        recording,
        n_trials=1,
        sampler="random",
        seed=5,
        metric_kwargs={"scale": 2.0},
        tunables=SMALL_SPACE,
    )
    assert seen[0][0] == 5 and isinstance(seen[0][1], IntegratedGradients) and seen[0][2] == 2.0


def test_bad_arguments(trained, tuning_batch, monkeypatch):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model)

    def no_direction(model, inputs, attributions, targets):
        return torch.zeros(len(targets))

    with pytest.raises(TypeError, match="higher_is_better"):
        optimize(explainer, x, y, no_direction)
    with pytest.raises(ValueError, match=r"sampler must be one of tpe, random, grid; got str 'cmaes' \(or pass an"):
        optimize(explainer, x, y, _completeness, sampler="cmaes")
    with pytest.raises(TypeError, match=r"sampler must be one of tpe, random, grid, or an optuna sampler; got int"):
        optimize(explainer, x, y, _completeness, sampler=3)
    with pytest.raises(ValueError, match="n_trials must be a positive int; got int 0"):
        optimize(explainer, x, y, _completeness, n_trials=0)
    with pytest.raises(ValueError, match="n_trials must be a positive int; got bool"):
        optimize(explainer, x, y, _completeness, n_trials=True)
    with pytest.raises(TypeError, match="seed must be an int or None; got 1.5"):
        optimize(explainer, x, y, _completeness, seed=1.5)
    with pytest.raises(TypeError, match="verbose must be True or False; got str 'yes'"):
        optimize(explainer, x, y, _completeness, verbose="yes")
    with pytest.raises(TypeError, match="metric_kwargs must be a dict"):
        optimize(explainer, x, y, _completeness, metric_kwargs=[("n_steps", 3)])
    with pytest.raises(ValueError, match=r"metric must be one of .*mu_fidelity.*; got str 'fidelity'"):
        optimize(explainer, x, y, "fidelity")
    with pytest.raises(ValueError, match="search space is empty"):
        optimize(explainer, x, y, _completeness, tunables={})
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(ImportError, match=r"integrad\[tune\]"):
        optimize(explainer, x, y, _completeness)


def test_tuned_explainer_scores_at_least_as_well_on_held_out_examples(trained):
    """Tune on a few examples with a faithfulness metric, then compare with the default on other examples."""
    tune_x, tune_y = trained.test_x[:16], trained.test_y[:16]
    held_x, held_y = trained.test_x[100:164], trained.test_y[100:164]
    default = IntegratedGradients(trained.model)
    result = optimize(
        default, tune_x, tune_y, metrics.abpc, n_trials=8, sampler="random", seed=1, metric_kwargs={"n_steps": 10}
    )

    def score(explainer, x, y):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            attributions = explainer.attribute(x, y)
        return metrics.abpc(trained.model, x, attributions, y, n_steps=10, seed=0).mean().item()

    assert result.value >= score(default, tune_x, tune_y) - 1e-9
    assert score(result.explainer, held_x, held_y) >= score(default, held_x, held_y) - 1e-6


BLUR_SIGMA = "baseline_fn.gaussian_blur.sigma"


def test_a_baseline_parameter_alone_tunes_the_explainers_own_baseline(trained, tuning_batch):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model, n_steps=10, baseline_fn="gaussian_blur")
    with_condition = {BLUR_SIGMA: explainer.get_tunables(x)[BLUR_SIGMA]}
    without_condition = {BLUR_SIGMA: (float, {"low": 0.5, "high": 4.0})}
    for space in (with_condition, without_condition):
        result = optimize(explainer, x, y, _completeness, n_trials=3, sampler="random", seed=0, tunables=space)
        sigmas = [t.params[BLUR_SIGMA] for t in result.study.trials]
        values = [t.value for t in result.study.trials]
        assert len(set(sigmas)) == 3 and len(set(values)) == 3, (sigmas, values)
        assert sigmas[0] == 1.0  # the explainer's own (default) sigma first
        assert result.explainer.baseline_fn == get_baseline_fn("gaussian_blur", sigma=result.params[BLUR_SIGMA])
        again = _completeness(trained.model, x, result.explainer.attribute(x, y), y).mean().item()
        assert math.isclose(again, result.value, rel_tol=1e-6, abs_tol=1e-9)
    grid = optimize(explainer, x, y, _completeness, n_trials=10, sampler="grid", seed=0, tunables=with_condition)
    assert len({t.params[BLUR_SIGMA] for t in grid.study.trials}) == 5


def test_a_baseline_parameter_of_another_baseline_is_an_error(trained, tuning_batch):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model, n_steps=10)
    space = {BLUR_SIGMA: explainer.get_tunables(x)[BLUR_SIGMA]}
    with pytest.raises(ValueError, match=r"'baseline_fn\.gaussian_blur\.sigma'.*'zeros'"):
        optimize(explainer, x, y, _completeness, n_trials=2, sampler="random", seed=0, tunables=space)
    # Sampled together with the baseline choice it is a dependent entry, as in the full space.
    result = optimize(
        explainer,
        x,
        y,
        _completeness,
        n_trials=4,
        sampler="random",
        seed=0,
        tunables={"baseline_fn": (str, {"choices": ["zeros", "gaussian_blur"]}), **space},
    )
    for trial in result.study.trials:
        assert (BLUR_SIGMA in trial.params) == (trial.params["baseline_fn"] == "gaussian_blur")


@pytest.mark.parametrize("baseline", ["zeros", "gaussian_blur", "gaussian"])
def test_the_first_trial_is_the_explainers_own_configuration(trained, tuning_batch, baseline):
    x, y = tuning_batch
    explainer = IntegratedGradients(trained.model, n_steps=10, baseline_fn=baseline)
    own = metrics.abpc(trained.model, x, explainer.attribute(x, y), y, n_steps=10, seed=0)
    own = own.to(torch.float64).mean().item()
    for sampler in ("tpe", "random"):
        result = optimize(
            explainer, x, y, metrics.abpc, n_trials=1, sampler=sampler, seed=0, metric_kwargs={"n_steps": 10}
        )
        current = explainer.current_tunables()
        assert result.study.trials[0].params == {name: current[name] for name in result.study.trials[0].params}
        assert set(result.study.trials[0].params) == set(current)
        assert math.isclose(result.value, own, rel_tol=1e-9, abs_tol=1e-12)
        # The same configuration: equal up to float32 rounding, which depends on the chunk sizes each object's
        # speed tuning has reached (a fresh object runs one chunk; the used one may split the rows).
        torch.testing.assert_close(result.explainer.attribute(x, y), explainer.attribute(x, y), rtol=1e-5, atol=1e-7)


def test_targets_may_be_an_int_a_sequence_or_a_tensor(trained, tuning_batch):
    x, _ = tuning_batch
    explainer = IntegratedGradients(trained.model, n_steps=10)
    forms = [
        1,
        [1] * len(x),
        (1,) * len(x),
        torch.ones(len(x), dtype=torch.long),
        torch.tensor(1),
        torch.tensor([1]),
        [1],
    ]
    results = [
        optimize(explainer, x, target, "completeness_error", n_trials=3, sampler="random", seed=0, tunables=SMALL_SPACE)
        for target in forms
    ]
    for result in results[1:]:
        assert result.value == results[0].value and result.params == results[0].params
        assert [t.value for t in result.study.trials] == [t.value for t in results[0].study.trials]
    with pytest.raises(TypeError, match="targets must hold integer class indices"):
        optimize(explainer, x, torch.ones(len(x)), "completeness_error", n_trials=1, tunables=SMALL_SPACE)
    with pytest.raises(TypeError, match="targets must be"):
        optimize(explainer, x, True, "completeness_error", n_trials=1, tunables=SMALL_SPACE)
    with pytest.raises(TypeError, match="targets must hold ints, one per example"):
        optimize(explainer, x, [1.0] * len(x), "completeness_error", n_trials=1, tunables=SMALL_SPACE)
    with pytest.raises(ValueError, match=r"targets must have shape \(N,\) = \(8,\)"):
        optimize(explainer, x, [1, 2], "completeness_error", n_trials=1, tunables=SMALL_SPACE)
