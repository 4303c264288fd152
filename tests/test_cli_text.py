"""``integrad explain-text``: attribution of generated text for causal language models.

The files it writes are compared with :class:`integrad.methods.generation.GenerationAttribution` called directly on
the tests' small GPT-2 (``tests/trained.py``), the scores it records with the model's own logits, and bad input
is refused with a one-line error naming the option, exit status 2 and nothing written.
"""

from __future__ import annotations

import html
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from integrad.app.cli import main
from integrad.methods.generation import GenerationAttribution

import trained

N_STEPS = 8


@pytest.fixture(scope="module")
def lm():
    return trained.trained_model(), trained.tokenizer()


def _explain_text(tmp_path, *args, model="cli_factories:causal_lm", out="out", progress=False):
    folder = tmp_path / out
    extra = [] if progress else ["--no-progress"]
    code = main(["explain-text", "--model", model, *args, "--n-steps", str(N_STEPS), "--out", str(folder), *extra])
    return code, folder


def _check_against(folder, direct):
    """The files of a run hold what ``direct`` (a GenerationAttributions) holds."""
    saved = load_file(str(folder / "attributions.safetensors"))
    assert torch.equal(saved["prompt_ids"], direct.prompt_ids)
    assert torch.equal(saved["generated_ids"], direct.generated_ids)
    n_prompt, n_generated = direct.prompt_ids.numel(), direct.generated_ids.numel()
    assert saved["prompt_attributions"].shape == (n_generated, n_prompt)
    for key in ("prompt_attributions", "token_attributions", "deltas", "scores", "baseline_scores"):
        torch.testing.assert_close(saved[key], getattr(direct, key), rtol=1e-5, atol=1e-6, msg=key)
    assert saved["steps"].tolist() == [N_STEPS] * n_generated
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["prompt_ids"] == direct.prompt_ids.tolist()
    assert [g["id"] for g in summary["generated"]] == direct.generated_ids.tolist()
    assert [g["token"] for g in summary["generated"]] == (direct.generated_tokens or [None] * n_generated)
    assert summary["prompt_tokens"] == direct.prompt_tokens
    torch.testing.assert_close(torch.tensor([g["delta"] for g in summary["generated"]]), direct.deltas.float())
    # The heatmap is the one the result renders: prompt tokens across, generated tokens down.
    page = (folder / "attributions.html").read_text()
    caption = html.unescape(re.search(r"<caption>(.*?)</caption>", page).group(1))
    assert direct.to_html(title=caption) in page
    return saved, summary


def test_generated_tokens_match_generation_attribution(tmp_path, lm, capsys):
    model, tokenizer = lm
    prompt = "import json\n"
    code, out = _explain_text(tmp_path, "--prompt", prompt, "--max-new-tokens", "5", progress=True)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    direct = GenerationAttribution(model, tokenizer).attribute(prompt, max_new_tokens=5, n_steps=N_STEPS)
    saved, summary = _check_against(out, direct)
    assert summary["generated_text"] == tokenizer.decode(direct.generated_ids.tolist())
    assert summary["score"] == "logit" and summary["rule"] == "gausslegendre" and summary["n_steps"] == N_STEPS

    # An independent check of the recorded scores: the logit of each generated token given its prefix, and given the
    # prefix with every token replaced by the baseline token (the pad token, 0).
    sequence = torch.cat([saved["prompt_ids"], saved["generated_ids"]])
    n_prompt = saved["prompt_ids"].numel()
    with torch.no_grad():
        for t, token in enumerate(saved["generated_ids"].tolist()):
            prefix = sequence[: n_prompt + t].unsqueeze(0)
            for ids, key in ((prefix, "scores"), (torch.zeros_like(prefix), "baseline_scores")):
                logit = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[0, -1, token]
                torch.testing.assert_close(saved[key][t].float(), logit, rtol=1e-5, atol=1e-5)
    # Completeness as the deltas state it: each row adds up to the change of its score.
    gap = saved["token_attributions"].sum(1) - (saved["scores"] - saved["baseline_scores"])
    torch.testing.assert_close(saved["deltas"], gap.to(saved["deltas"].dtype), rtol=1e-6, atol=1e-6)

    assert "attributing" in captured.err and "seq" in captured.err
    assert (
        captured.out.strip().splitlines()[-1]
        == f"wrote {out}/attributions.safetensors, attributions.html, summary.json"
    )


def test_continuation_with_a_tokenizer_folder_and_another_score(tmp_path, lm):
    model, tokenizer = lm
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    prompt, continuation = "The os module", " provides"
    code, out = _explain_text(
        tmp_path,
        "--prompt",
        prompt,
        "--continuation",
        continuation,
        "--tokenizer",
        str(tmp_path / "tokenizer"),
        "--score",
        "log_probability",
        "--rule",
        "riemann_middle",
        model="cli_factories:causal_lm_alone",
    )
    assert code == 0
    direct = GenerationAttribution(model, tokenizer).attribute(
        prompt, continuation, n_steps=N_STEPS, method="riemann_middle", score="log_probability"
    )
    _, summary = _check_against(out, direct)
    assert summary["continuation"] == continuation and summary["score"] == "log_probability"


def test_token_ids_without_a_tokenizer(tmp_path, lm):
    model, _ = lm
    code, out = _explain_text(
        tmp_path,
        "--prompt",
        "75, 79 82",
        "--continuation",
        "81 84",
        "--token-ids",
        "--baseline-token-id",
        "2",
        model="cli_factories:causal_lm_alone",
    )
    assert code == 0
    direct = GenerationAttribution(model).attribute([75, 79, 82], [81, 84], baseline_token_id=2, n_steps=N_STEPS)
    _check_against(out, direct)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["generated_text"] is None and summary["baseline_token_id"] == 2


def test_bad_input_is_one_line_naming_the_option_and_nothing_is_written(tmp_path, capsys):
    alone = "cli_factories:causal_lm_alone"
    cases = [
        (["--prompt", "", "--max-new-tokens", "3"], None, "--prompt", "is empty"),
        (["--prompt", "abc"], None, "--continuation", "--max-new-tokens"),
        (["--prompt", "abc", "--continuation", "d", "--max-new-tokens", "3"], None, "--max-new-tokens", "not both"),
        (["--prompt", "abc", "--continuation", ""], None, "--continuation", "is empty"),
        (["--prompt", "5 999", "--token-ids", "--max-new-tokens", "2"], alone, "--prompt", "outside the vocabulary"),
        (["--prompt", "5 6", "--token-ids", "--continuation", "7 -1"], alone, "--continuation", "outside the vocab"),
        (["--prompt", "five six", "--token-ids", "--max-new-tokens", "2"], alone, "--prompt", "integers"),
        (["--prompt", "abc", "--max-new-tokens", "2"], alone, "--tokenizer", "--token-ids"),
        (["--prompt", "abc", "--max-new-tokens", "2", "--embedding-layer", "nowhere"], None, "--embedding-layer", "no"),
        (
            ["--prompt", "abc", "--max-new-tokens", "2", "--baseline-token-id", "500"],
            None,
            "--baseline-token-id",
            "outside the vocabulary",
        ),
        (["--prompt", "abc", "--max-new-tokens", "0"], None, "--max-new-tokens", "positive"),
        (["--prompt", "abc", "--max-new-tokens", "200"], None, "--max-new-tokens", "positions"),
        (["--prompt", "abc", "--max-new-tokens", "2", "--tokenizer", str(tmp_path / "no")], None, "--tokenizer", "not"),
        (["--prompt", "abc", "--max-new-tokens", "2"], "cli_factories:not_a_module", "--model", "nn.Module"),
    ]
    for args, model, option, words in cases:
        code, out = _explain_text(tmp_path, *args, model=model or "cli_factories:causal_lm")
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        line = err.splitlines()[-1]
        assert line.startswith("integrad: error: ") and option in line and words in line, (option, words, err)
        assert not [e for e in err.splitlines() if e.startswith("integrad: error") and e != line], err
        assert not out.exists(), args
        assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
