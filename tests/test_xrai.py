"""XRAI: saliency's ``XRAI().GetMask`` on the same base attribution and segments (float64, per image), its
Felzenszwalb segments, the default integrated-gradients base, and the properties of a region map."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from integrad import IntegratedGradients
from integrad.methods.xrai import XRAI, felzenszwalb_segments

saliency_xrai = importlib.import_module("saliency.core.xrai")
importlib.import_module("skimage")


class SmallCNN(nn.Module):
    def __init__(self, size: int = 16):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4 * size * size, 3)
        self.double().eval()

    def forward(self, x, scale=None):
        out = self.head(torch.tanh(self.conv(x)).flatten(1))
        return out if scale is None else out * scale


def _images(n: int = 2, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    x[:, :, : size // 2, : size // 2] += 1.0  # a bright block for the segmentation to find
    return x


def _random_masks(size: int, count: int, seed: int) -> list[np.ndarray]:
    """Overlapping rectangles of random sizes, some of them repeated (ties for the greedy selection)."""
    rng = np.random.default_rng(seed)
    masks = []
    for _ in range(count):
        top, left = rng.integers(0, size - 2, 2)
        height, width = rng.integers(2, size, 2)
        m = np.zeros((size, size), dtype=bool)
        m[top : top + height, left : left + width] = True
        masks.append(m)
    return masks + masks[:3]


def _hwc(t: torch.Tensor) -> np.ndarray:
    return t.permute(1, 2, 0).numpy()


def _saliency(image, base, segments, **parameters):
    """saliency's map and region ranks for one (C, H, W) image and base attribution."""
    options = saliency_xrai.XRAIParameters(
        area_threshold=parameters.get("area_threshold", 1.0), algorithm=parameters.get("algorithm", "full")
    )
    options.experimental_params["min_pixel_diff"] = parameters.get("min_pixel_diff", 50)
    options.return_xrai_segments = True
    out = saliency_xrai.XRAI().GetMaskWithDetails(
        _hwc(image), None, base_attribution=_hwc(base), segments=segments, extra_parameters=options
    )
    return out.attribution_mask, out.segments


@pytest.mark.parametrize(
    "parameters",
    [
        {},
        {"min_pixel_diff": 5},
        {"min_pixel_diff": 3, "area_threshold": 0.4},
        {"algorithm": "fast", "min_pixel_diff": 4},
    ],
)
def test_given_base_and_segments_it_is_saliencys_xrai(parameters):
    images = _images(3, size=20)
    base = torch.randn(3, 3, 20, 20, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    segments = [_random_masks(20, 25, seed=i) for i in range(3)]
    xrai = XRAI(SmallCNN(20))
    got = xrai.attribute(images, segments=segments, base_attribution=base, **parameters)
    assert got.shape == (3, 1, 20, 20) and got.dtype == torch.float64
    for i in range(3):
        expected, ranks = _saliency(images[i], base[i], segments[i], **parameters)
        assert float(np.abs(got[i, 0].numpy() - expected).max()) <= 1e-9
        assert np.array_equal(xrai.last_ranks[i].numpy(), ranks)


def test_felzenszwalb_segments_are_saliencys():
    image = _hwc(_images(1, size=24, seed=3)[0])
    mine = felzenszwalb_segments(image)
    reference = saliency_xrai._get_segments_felzenszwalb(image)
    assert len(mine) == len(reference) > 6
    assert all(np.array_equal(a, b) for a, b in zip(mine, reference))


def test_default_segments_and_base_given_are_saliencys_xrai():
    images = _images(2, size=24, seed=4)
    base = torch.randn(2, 3, 24, 24, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    got = XRAI(SmallCNN(24)).attribute(images, base_attribution=base, min_pixel_diff=10)
    for i in range(2):
        expected, _ = _saliency(images[i], base[i], None, min_pixel_diff=10)
        assert float(np.abs(got[i, 0].numpy() - expected).max()) <= 1e-9


def test_the_default_base_is_integrated_gradients_from_black_and_white():
    model = SmallCNN()
    images = _images(2)
    segments = [_random_masks(16, 20, seed=10 + i) for i in range(2)]
    scale = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    xrai = XRAI(model)
    got, delta = xrai.attribute(
        images,
        target=[0, 2],
        segments=segments,
        additional_forward_args=(scale,),
        n_steps=24,
        min_pixel_diff=4,
        return_convergence_delta=True,
    )
    ig = IntegratedGradients(model)
    for i, t in enumerate([0, 2]):
        x = images[i : i + 1]
        maps = [
            ig.attribute(x, float(level), target=t, additional_forward_args=(scale[i : i + 1],), n_steps=24)
            for level in (x.min(), x.max())
        ]
        base = (maps[0] + maps[1])[0] / 2
        expected, _ = _saliency(images[i], base, segments[i], min_pixel_diff=4)
        assert float(np.abs(got[i, 0].numpy() - expected).max()) <= 1e-9
        with torch.no_grad():
            out = model(torch.cat([x, x * 0 + x.min(), x * 0 + x.max()]), scale[i])[:, t]
        gap = out[0] - (out[1] + out[2]) / 2
        torch.testing.assert_close(delta[i], base.sum() - gap, rtol=0, atol=1e-10)
    assert float(delta.abs().max()) < 1e-6


def test_explicit_baselines_are_averaged():
    model = SmallCNN()
    images = _images(2)
    segments = [_random_masks(16, 12, seed=20 + i) for i in range(2)]
    noise = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    got = XRAI(model).attribute(images, [0.0, noise], target=1, segments=segments, n_steps=8, min_pixel_diff=4)
    ig = IntegratedGradients(model)
    base = (ig.attribute(images, 0.0, target=1, n_steps=8) + ig.attribute(images, noise, target=1, n_steps=8)) / 2
    again = XRAI(model).attribute(images, target=1, segments=segments, base_attribution=base, min_pixel_diff=4)
    torch.testing.assert_close(got, again, rtol=0, atol=1e-12)


def test_the_region_map_keeps_the_attribution_sum_and_orders_its_regions():
    images = _images(2, size=20)
    base = torch.randn(2, 3, 20, 20, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    segments = [_random_masks(20, 15, seed=30 + i) for i in range(2)]
    xrai = XRAI(SmallCNN(20))
    for parameters in ({"min_pixel_diff": 3}, {"min_pixel_diff": 3, "area_threshold": 0.3}, {"algorithm": "fast"}):
        got = xrai.attribute(images, segments=segments, base_attribution=base, **parameters)
        per_pixel = base.max(dim=1).values
        torch.testing.assert_close(got.sum((1, 2, 3)), per_pixel.sum((1, 2)), rtol=0, atol=1e-10)
        ranks = xrai.last_ranks
        assert ranks.min() == 1
        for i in range(2):
            regions = sorted(ranks[i].unique().tolist())
            assert all(got[i, 0][ranks[i] == r].unique().numel() == 1 for r in regions)  # one value per region
            # Ranked by gain, highest first; the last rank may be the pixels no segment added.
            gains = [float(got[i, 0][ranks[i] == r][0]) for r in regions[:-1]]
            assert gains == sorted(gains, reverse=True)


def test_label_maps_and_mask_arrays_are_the_same_segments():
    images = _images(2, size=12)
    base = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    labels = torch.zeros(2, 12, 12, dtype=torch.long)
    labels[:, :6] = 1
    labels[:, :, 8:] = 2
    labels[1, 3:9, 3:9] = 5
    masks = [[(labels[i] == v).numpy() for v in labels[i].unique()] for i in range(2)]
    xrai = XRAI(SmallCNN(12))
    from_labels = xrai.attribute(images, segments=labels, base_attribution=base, min_pixel_diff=1)
    from_masks = xrai.attribute(images, segments=masks, base_attribution=base, min_pixel_diff=1)
    arrays = [torch.stack([torch.from_numpy(m) for m in ms]) for ms in masks]
    from_arrays = xrai.attribute(images, segments=arrays, base_attribution=base, min_pixel_diff=1)
    assert torch.equal(from_labels, from_masks) and torch.equal(from_labels, from_arrays)


def test_batch_independence_and_dtype():
    model = SmallCNN()
    images = _images(3, seed=9)
    segments = [_random_masks(16, 10, seed=40 + i) for i in range(3)]
    xrai = XRAI(model)
    together = xrai.attribute(images, target=[0, 1, 2], segments=segments, n_steps=6, min_pixel_diff=4)
    for i in range(3):
        alone = xrai.attribute(images[i : i + 1], target=i, segments=[segments[i]], n_steps=6, min_pixel_diff=4)
        torch.testing.assert_close(alone[0], together[i], rtol=1e-12, atol=1e-14)
    model32 = SmallCNN().float()
    single = xrai.attribute(images, target=1, segments=segments, n_steps=6, min_pixel_diff=4)
    got = XRAI(model32).attribute(images.float(), target=1, segments=segments, n_steps=6, min_pixel_diff=4)
    assert got.dtype == torch.float32
    # float32 gradients rank the same regions; the values agree to float32 precision.
    torch.testing.assert_close(got.double(), single, rtol=1e-4, atol=1e-5)


def test_the_callers_tensors_are_left_alone():
    images = _images(2)
    base = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(10), dtype=torch.float64)
    kept = [images.clone(), base.clone()]
    segments = [_random_masks(16, 8, seed=50 + i) for i in range(2)]
    kept_segments = [[m.copy() for m in s] for s in segments]
    xrai = XRAI(SmallCNN())
    xrai.attribute(images, target=0, segments=segments, n_steps=4)
    xrai.attribute(images, segments=segments, base_attribution=base)
    assert torch.equal(images, kept[0]) and torch.equal(base, kept[1]) and not images.requires_grad
    assert all(np.array_equal(a, b) for s, k in zip(segments, kept_segments) for a, b in zip(s, k))


def test_bad_input_is_refused_with_the_parameter_named():
    xrai = XRAI(SmallCNN())
    images = _images(2)
    segments = [_random_masks(16, 5, seed=i) for i in range(2)]
    with pytest.raises(ValueError, match=r"inputs must be a batch of images shaped \(N, C, H, W\); got a 2-d"):
        xrai.attribute(images.flatten(1), target=0)
    with pytest.raises(TypeError, match="inputs must be a tensor of images"):
        xrai.attribute((images,), target=0)
    with pytest.raises(ValueError, match=r"base_attribution has shape \(2, 3, 16\)"):
        xrai.attribute(images, segments=segments, base_attribution=images[..., 0])
    with pytest.raises(ValueError, match="segments must be None, an integer"):
        xrai.attribute(images, segments=segments[:1], base_attribution=images)
    with pytest.raises(ValueError, match=r"segments\[1\]\[0\] must be a boolean mask shaped \(H, W\)"):
        xrai.attribute(images, segments=[segments[0], [np.ones((4, 4), dtype=bool)]], base_attribution=images)
    with pytest.raises(ValueError, match="segments given as a label map must be an integer array"):
        xrai.attribute(images, segments=torch.zeros(2, 16, 15, dtype=torch.long), base_attribution=images)
    with pytest.raises(ValueError, match="algorithm must be one of full, fast"):
        xrai.attribute(images, segments=segments, base_attribution=images, algorithm="slow")
    with pytest.raises(ValueError, match=r"area_threshold must be a number in \(0, 1\]"):
        xrai.attribute(images, segments=segments, base_attribution=images, area_threshold=0)
    with pytest.raises(ValueError, match="min_pixel_diff must be a positive int"):
        xrai.attribute(images, segments=segments, base_attribution=images, min_pixel_diff=0)
    with pytest.raises(ValueError, match=r"baselines\[1\] has shape \(1, 3, 5, 5\)"):
        xrai.attribute(images, [0.0, torch.zeros(1, 3, 5, 5)], target=0, segments=segments)
    with pytest.raises(ValueError, match="return_convergence_delta=True needs the integrated gradients"):
        xrai.attribute(images, segments=segments, base_attribution=images, return_convergence_delta=True)


def test_it_imports_without_scikit_image_and_names_the_extra_only_when_segments_are_needed():
    script = textwrap.dedent(
        """
        import sys
        import numpy as np
        import torch

        class Blocked:
            def find_spec(self, name, path=None, target=None):
                if name == "skimage" or name.startswith("skimage."):
                    raise ImportError("blocked")
                return None

        sys.meta_path.insert(0, Blocked())
        from integrad.methods.xrai import XRAI

        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2)).double()
        images = torch.rand(1, 3, 8, 8, dtype=torch.float64)
        masks = [[np.ones((8, 8), dtype=bool)]]
        out = XRAI(model).attribute(images, target=0, segments=masks, n_steps=2)
        assert out.shape == (1, 1, 8, 8)
        try:
            XRAI(model).attribute(images, target=0)
        except ImportError as error:
            print(error)
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "scikit-image" in done.stdout and "pip install 'integrad[xrai]'" in done.stdout
