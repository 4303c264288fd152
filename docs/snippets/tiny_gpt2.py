# A small GPT-2 trained for a few seconds on the module docstrings of Python's standard library (no download): two
# layers of width 32, one token per character (the printable ASCII characters, the newline and an end-of-text token),
# with a `transformers` fast tokenizer over them.
import importlib

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

END_OF_TEXT = "<|endoftext|>"
VOCABULARY = [END_OF_TEXT, "\n"] + [chr(code) for code in range(32, 127)]  # token 0 ends a text, and pads
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
CONTEXT, STEPS, BATCH, LEARNING_RATE = 32, 600, 32, 1e-2

characters = Tokenizer(models.WordLevel({c: i for i, c in enumerate(VOCABULARY)}, unk_token="?"))
characters.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")  # every character a token
characters.decoder = decoders.Fuse()
tokenizer = transformers.PreTrainedTokenizerFast(
    tokenizer_object=characters, eos_token=END_OF_TEXT, pad_token=END_OF_TEXT, unk_token="?"
)

ids = []
for name in DOCUMENTED_MODULES:
    ids += tokenizer.encode((importlib.import_module(name).__doc__ or "").replace("\t", " "), add_special_tokens=False)
    ids.append(0)
ids = torch.tensor(ids)
split = int(len(ids) * 0.9)  # the last tenth is kept out of training: text the model has never seen
training_ids, held_out_ids = ids[:split], ids[split:]

torch.manual_seed(0)
config = transformers.GPT2Config(
    vocab_size=len(VOCABULARY),
    n_positions=2 * CONTEXT,
    n_embd=32,
    n_layer=2,
    n_head=4,
    resid_pdrop=0.0,
    embd_pdrop=0.0,
    attn_pdrop=0.0,
    bos_token_id=0,
    eos_token_id=0,
    pad_token_id=0,
)
lm = transformers.GPT2LMHeadModel(config)
optimizer = torch.optim.AdamW(lm.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LEARNING_RATE, total_steps=STEPS, pct_start=0.1)
windows_from = torch.Generator().manual_seed(0)
for _ in range(STEPS):  # next-character prediction on random windows of 32 characters
    starts = torch.randint(0, len(training_ids) - CONTEXT - 1, (BATCH,), generator=windows_from)
    windows = torch.stack([training_ids[s : s + CONTEXT + 1] for s in starts.tolist()])
    logits = lm(input_ids=windows[:, :-1], attention_mask=torch.ones(BATCH, CONTEXT)).logits
    torch.nn.functional.cross_entropy(logits.reshape(-1, len(VOCABULARY)), windows[:, 1:].reshape(-1)).backward()
    optimizer.step()
    optimizer.zero_grad()
    schedule.step()
lm.eval()
