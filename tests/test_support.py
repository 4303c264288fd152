"""The support report (:mod:`integrad.explainers.support`): the three module categories, as pnpxai's module classes,
and ``check_support`` on supported and unsupported models."""

import pytest
import torch.nn as nn

from integrad.explainers import SUPPORTED_MODULES, Attention, Convolution, IntegratedGradients, Linear, check_support


def test_supported_modules_are_the_three_categories():
    assert IntegratedGradients.SUPPORTED_MODULES == [Linear, Convolution, Attention] == SUPPORTED_MODULES
    assert IntegratedGradients.EXPLANATION_TYPE == "attribution"


def test_support_report_on_linear_conv_and_attention(trained):
    report = check_support(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)))
    assert report.supported and bool(report) and report.matches["Linear"] == ["0", "2"]
    report = check_support(trained.model)
    assert report.matches["Convolution"] == ["features.0", "features.2"]
    assert report.matches["Linear"] == ["classifier.1"]
    assert "DigitsCNN: supported" in str(report) and "Convolution: 2 module(s)" in str(report)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(8, 2)

    assert check_support(Block()).matches["Attention"] == ["attn"]

    class BertSelfAttention(nn.Module):  # recognised by name, as transformers' modules are
        pass

    assert check_support(BertSelfAttention()).matches["Attention"] == [""]
    assert check_support(nn.Conv1d(1, 1, 3)).matches["Convolution"] == [""]


def test_support_report_on_an_unsupported_model():
    report = check_support(nn.Sequential(nn.ReLU(), nn.Tanh()))
    assert not report.supported and not report
    text = str(report)
    assert text.startswith("Sequential: not supported.")
    assert "no Linear, Convolution, Attention module" in text and "Attention: none" in text
    notes = check_support(nn.Sequential(nn.Embedding(5, 2), nn.Linear(2, 1))).notes
    assert any("layer='0'" in note for note in notes)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        check_support(lambda x: x)


def test_supported_modules_are_module_classes_as_in_pnpxai():
    modules = [
        nn.Linear(3, 2),
        nn.Conv2d(1, 1, 3),
        nn.ConvTranspose2d(1, 1, 3),
        nn.ConvTranspose1d(1, 1, 3),
        nn.MultiheadAttention(4, 2),
        nn.ReLU(),
    ]
    found = [[isinstance(m, entry) for entry in SUPPORTED_MODULES] for m in modules]
    assert found == [
        [True, False, False],
        [False, True, False],
        [False, True, False],
        [False, True, False],
        [False, False, True],
        [False, False, False],
    ]

    class BertSelfAttention(nn.Module):  # a third-party attention block, recognised by its class name
        pass

    assert isinstance(BertSelfAttention(), Attention) and issubclass(nn.ConvTranspose3d, Convolution)
    assert not isinstance("Linear", Linear) and repr(Linear) == "Linear"
    assert check_support(nn.Sequential(nn.ConvTranspose2d(1, 1, 3))).supported
