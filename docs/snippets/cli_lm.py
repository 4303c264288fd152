# What explain-text reads: the small GPT-2 and its tokenizer saved in a folder, and a factory that loads them.
# ruff: noqa: F821 (lm and tokenizer are the GPT-2 snippet's, above)
from pathlib import Path

lm.save_pretrained("tiny-gpt2")
tokenizer.save_pretrained("tiny-gpt2")
Path("mypackage").mkdir(exist_ok=True)
Path("mypackage/__init__.py").touch()
Path("mypackage/lm.py").write_text(
    """import transformers


def build():
    model = transformers.AutoModelForCausalLM.from_pretrained("tiny-gpt2")
    return model.eval(), transformers.AutoTokenizer.from_pretrained("tiny-gpt2")
"""
)
