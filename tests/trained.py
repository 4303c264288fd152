"""Trained models shared by the tests: a small CNN on scikit-learn's digits, and a character-level GPT-2.

**Digits.** The CNN is trained once per process (cached), with a fixed seed, on scikit-learn's 8x8 digits scaled to
[0, 1] as ``(N, 1, 8, 8)`` float32 images; training takes a few seconds on two CPU cores.

**Causal language model.** No pretrained causal language model ships offline, so the generation tests train their
own: two layers, width 32, a vocabulary of the printable ASCII characters, a newline and an end-of-text token, and a
real ``transformers`` fast tokenizer over it, trained for a few seconds on the module docstrings of Python's
standard library. Training is seeded and runs on one thread (a tiny model gains nothing from more, and on a busy
machine loses much), so every session gets the same weights; the result is cached for the session.
"""

from __future__ import annotations

import copy
import functools
import importlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers


class DigitsCNN(nn.Module):
    """Two convolutions, a pooling and a linear read-out: ``(N, 1, 8, 8) -> (N, 10)`` logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclass
class Digits:
    model: DigitsCNN
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    test_accuracy: float


@functools.lru_cache(maxsize=1)
def digits() -> Digits:
    """The trained digits CNN (eval mode, gradients of its parameters off) with its train/test split."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(data.target, dtype=torch.long)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(labels), generator=generator)
    train, test = order[:1400], order[1400:]
    threads = torch.get_num_threads()
    # A model this small trains fastest on one thread; more only add synchronisation (restored below).
    torch.set_num_threads(1)
    try:
        model = _train(images[train], labels[train], generator)
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    with torch.no_grad():
        accuracy = (model(images[test]).argmax(1) == labels[test]).float().mean().item()
    return Digits(model, images[train], labels[train], images[test], labels[test], accuracy)


def _train(images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> DigitsCNN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = DigitsCNN()
        optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
        for _ in range(12):
            for batch in torch.randperm(len(labels), generator=generator).split(64):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(images[batch]), labels[batch])
                loss.backward()
                optimizer.step()
    return model


class MaskedDigits(nn.Module):
    """Digits CNN called with an extra per-pixel mask: ``model(x, mask) = cnn(x * mask)``.

    Used for batches shaped ``(x, mask, label)``, where only ``x`` is attributed and ``mask`` is passed along.
    """

    def __init__(self, cnn: nn.Module) -> None:
        super().__init__()
        self.cnn = cnn

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.cnn(x * mask)


# ------------------------------------------------------------------------------------------- causal language model
END_OF_TEXT = "<|endoftext|>"
#: Token 0 ends a text (and pads); then the newline and the printable ASCII characters.
VOCABULARY = [END_OF_TEXT, "\n"] + [chr(code) for code in range(32, 127)]

#: Modules whose docstrings make the training text: present, importable and documented on every supported Python.
DOCUMENTED_MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "collections", "contextlib", "copy", "csv", "dataclasses",
    "datetime", "decimal", "difflib", "enum", "fractions", "functools", "glob", "gzip", "heapq", "hashlib", "html",
    "inspect", "json", "logging", "os", "pathlib", "pickle", "random", "re", "shutil", "string", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "typing", "uuid", "warnings", "zipfile", "pprint", "shlex",
    "statistics", "struct", "timeit", "traceback", "weakref", "abc", "codecs", "configparser", "fnmatch", "locale",
    "numbers", "operator", "queue", "selectors", "socket", "tokenize", "types", "unittest", "doctest", "pdb",
    "optparse", "gettext", "imaplib", "smtplib", "mailbox", "email", "cmd", "code", "dis", "filecmp", "keyword",
    "netrc", "plistlib", "reprlib", "secrets", "stat", "trace", "contextvars", "graphlib", "ipaddress", "mimetypes",
    "platform", "runpy", "sysconfig", "token", "colorsys", "hmac",
)  # fmt: skip

CONTEXT = 32
WIDTH = 32
TRAINING_STEPS = 600
BATCH = 32
LEARNING_RATE = 1e-2
#: The last tenth of the text is held out to measure the model's accuracy.
HELD_OUT = 0.1


@functools.cache
def tokenizer() -> transformers.PreTrainedTokenizerFast:
    """One token per character; characters outside the vocabulary become ``?``."""
    core = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCABULARY)}, unk_token="?"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token="?"
    )


@functools.cache
def corpus() -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids of the docstrings, each followed by the end-of-text token: (training part, held-out part)."""
    texts = [(importlib.import_module(name).__doc__ or "").replace("\t", " ") for name in DOCUMENTED_MODULES]
    ids = []
    for text in texts:
        ids.extend(tokenizer().encode(text, add_special_tokens=False))
        ids.append(0)
    ids_t = torch.tensor(ids, dtype=torch.long)
    split = int(len(ids_t) * (1 - HELD_OUT))
    return ids_t[:split], ids_t[split:]


def config() -> transformers.GPT2Config:
    return transformers.GPT2Config(
        vocab_size=len(VOCABULARY),
        n_positions=2 * CONTEXT,
        n_embd=WIDTH,
        n_layer=2,
        n_head=4,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )


@functools.cache
def trained_model() -> transformers.GPT2LMHeadModel:
    """The trained model in float32, in eval mode. Shared by the session: copy it before changing it."""
    train, _ = corpus()
    threads = torch.get_num_threads()
    generator = torch.Generator().manual_seed(0)
    try:
        torch.set_num_threads(1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = transformers.GPT2LMHeadModel(config())
        optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=LEARNING_RATE, total_steps=TRAINING_STEPS, pct_start=0.1
        )
        model.train()
        for _ in range(TRAINING_STEPS):
            starts = torch.randint(0, len(train) - CONTEXT - 1, (BATCH,), generator=generator)
            windows = torch.stack([train[s : s + CONTEXT + 1] for s in starts.tolist()])
            logits = model(input_ids=windows[:, :-1]).logits
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    for p in model.parameters():
        p.grad = None
    return model


@functools.cache
def double_model() -> transformers.GPT2LMHeadModel:
    """The trained model cast to float64 (a copy), for comparisons at 1e-9."""
    return copy.deepcopy(trained_model()).double().eval()


def held_out_accuracy(model: torch.nn.Module) -> tuple[float, float]:
    """Greedy next-character accuracy on the held-out text (after 8 characters of context in each window), and the
    accuracy of always predicting the most frequent training character."""
    train, held = corpus()
    windows = (len(held) - 1) // CONTEXT
    inputs = held[: windows * CONTEXT].view(windows, CONTEXT)
    targets = held[1 : windows * CONTEXT + 1].view(windows, CONTEXT)
    with torch.no_grad():
        predicted = model(input_ids=inputs, attention_mask=torch.ones_like(inputs)).logits.argmax(-1)
    accuracy = (predicted[:, 8:] == targets[:, 8:]).double().mean().item()
    majority = torch.bincount(train, minlength=len(VOCABULARY)).max().item() / len(train)
    return accuracy, majority
