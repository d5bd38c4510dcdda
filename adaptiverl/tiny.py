"""Tiny GPT-2 models and tokenizers built locally, for offline demos, tests and benchmarks.

Nothing here downloads anything. The tokenizer is a byte-level BPE trained with
`tokenizers` on text that ships with Python itself (the docstrings of a fixed
list of standard-library modules), and the model is a freshly initialised
``GPT2LMHeadModel``. Both are written with ``save_pretrained`` so that the
folder loads through the same ``from_pretrained(name_or_path)`` code path that
``"gpt2"`` takes on a machine with hub access. :func:`build_quickstart_model` adds a short
causal-LM pre-training on the same text (``adaptiverl build-tiny PATH`` runs it).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import inspect
import sys
import warnings
from pathlib import Path
from types import ModuleType

# Standard-library modules whose docstrings make the corpus: prose written by
# the CPython authors, present on every Python install, stable across runs.
CORPUS_MODULES = (
    "abc", "argparse", "asyncio", "base64", "bisect", "calendar", "collections", "contextlib",
    "copy", "csv", "dataclasses", "datetime", "decimal", "difflib", "email", "enum",
    "fractions", "functools", "gettext", "gzip", "hashlib", "heapq", "hmac", "html", "http",
    "inspect", "io", "ipaddress", "itertools", "json", "logging", "mailbox", "math",
    "multiprocessing", "numbers", "operator", "optparse", "os", "pathlib", "pickle",
    "pprint", "queue", "random", "re", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "signal", "socket", "sqlite3", "statistics", "string", "struct", "subprocess",
    "tarfile", "tempfile", "textwrap", "threading", "timeit", "tokenize", "trace",
    "traceback", "turtle", "types", "typing", "unittest", "urllib", "uuid", "warnings",
    "wave", "weakref", "xml", "zipfile", "zoneinfo",
)

SPECIAL_TOKEN = "<|endoftext|>"


def _in_stdlib(path: str | None) -> bool:
    """``path`` lies in the interpreter's own library (under ``sys.base_prefix``, outside site-packages)."""
    if not path:
        return False
    resolved = Path(path).resolve()
    roots = {Path(sys.base_prefix).resolve(), Path(sys.base_exec_prefix).resolve()}
    return any(resolved.is_relative_to(root) for root in roots) and \
        not {"site-packages", "dist-packages"} & set(resolved.parts)


def _stdlib_path() -> list[str]:
    """The entries of ``sys.path`` in the interpreter's own library (never the working directory)."""
    here = Path.cwd().resolve()
    return [p for p in sys.path if p and _in_stdlib(p) and Path(p).resolve() != here]


def _stdlib_module(name: str, stdlib_path: list[str] | None = None) -> ModuleType | None:
    """The standard library's module ``name`` whatever ``sys.path`` holds (``None``: not in this build).

    Imported by name, a file called like it earlier on ``sys.path`` (the running script's folder, the
    working directory, ``PYTHONPATH``: a scratch ``trace.py``) would stand in for it and change the
    corpus, the BPE merges and every tiny model built on them. So the import runs with ``sys.path``
    cut to the interpreter's library folders; where a module of that name from elsewhere is already
    imported, the library's own file is read into a private copy beside it. ``stdlib_path``:
    :func:`_stdlib_path`, computed once by a caller that reads many modules.
    """
    module = sys.modules.get(name)
    if module is not None and (getattr(module, "__file__", None) is None or _in_stdlib(module.__file__)):
        return module  # builtin and frozen modules have no file: those are the interpreter's own
    stdlib_path = _stdlib_path() if stdlib_path is None else stdlib_path
    try:
        if module is None:
            saved = sys.path[:]
            sys.path[:] = stdlib_path
            try:
                return importlib.import_module(name)
            finally:
                sys.path[:] = saved
        spec = importlib.machinery.PathFinder.find_spec(name, stdlib_path)
        if spec is None or spec.loader is None:
            return None
        copy = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(copy)
        return copy
    except Exception:  # a module missing from a trimmed Python build (turtle without tkinter)
        if module is not None:
            warnings.warn(f"python_corpus: {name!r} is imported from {module.__file__}, not the standard "
                          f"library, and the library's own could not be read beside it; the corpus leaves "
                          f"it out (a tiny tokenizer built here differs from one built elsewhere)",
                          RuntimeWarning, stacklevel=3)
        return None


def python_corpus(min_chars: int = 40) -> list[str]:
    """Docstrings of the modules in :data:`CORPUS_MODULES` and their public members.

    Returns paragraphs (split on blank lines) of at least ``min_chars``
    characters, in a deterministic order, without duplicates. The modules are the standard
    library's whatever ``sys.path`` holds (:func:`_stdlib_module`), read with torch imported (it
    replaces ``inspect.getfile``, whose docstring then leaves the corpus), so every process builds
    the same corpus: a benchmark job run alone reads the full run's tokenizer.
    """
    import torch  # noqa: F401  (imported by every caller of the package; here the corpus does not depend on it)

    seen: set[str] = set()
    paragraphs: list[str] = []

    def add(doc: str | None) -> None:
        if not doc:
            return
        for para in inspect.cleandoc(doc).split("\n\n"):
            text = " ".join(para.split())
            if len(text) >= min_chars and text not in seen:
                seen.add(text)
                paragraphs.append(text)

    with warnings.catch_warnings():  # reading deprecated members (typing.io, typing.re) warns
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_path = _stdlib_path()
        for name in CORPUS_MODULES:
            module = _stdlib_module(name, stdlib_path)
            if module is None:
                continue
            add(module.__doc__)
            for attr in sorted(vars(module)):
                if attr.startswith("_"):
                    continue
                obj = getattr(module, attr)
                if (inspect.isclass(obj) or inspect.isfunction(obj)) and \
                        getattr(obj, "__module__", None) == name:
                    add(obj.__doc__)
    return paragraphs


def train_tokenizer(texts: list[str], vocab_size: int = 1024):
    """A GPT-2-style byte-level BPE tokenizer (``PreTrainedTokenizerFast``) trained on ``texts``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[SPECIAL_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=SPECIAL_TOKEN, eos_token=SPECIAL_TOKEN,
        unk_token=SPECIAL_TOKEN, pad_token=SPECIAL_TOKEN)


def build_tiny_gpt2(out_dir: str | Path, *, n_layer: int = 2, n_embd: int = 64, n_head: int = 2,
                    n_positions: int = 256, vocab_size: int = 1024, seed: int = 0) -> Path:
    """Write a freshly initialised tiny GPT-2 and its tokenizer to ``out_dir``.

    Returns the folder, which ``AutoModelForCausalLM.from_pretrained`` and
    ``AutoTokenizer.from_pretrained`` load offline.
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(python_corpus(), vocab_size=vocab_size)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=n_embd, n_layer=n_layer,
        n_head=n_head, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def pretrain(folder: str | Path, steps: int, *, block: int = 64, batch: int = 16, lr: float = 3e-3,
             seed: int = 0, texts: list[str] | None = None) -> float:
    """Next-token training on packed blocks of ``texts`` (default :func:`python_corpus`); saves the
    weights in place.

    Plain ``torch.optim.AdamW`` with a one-cycle schedule and clipping at 1. It makes completions
    English-like instead of random tokens, so RL rewards have something to shape. Returns the
    mean loss of the last 20 steps.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.loss_type = "ForCausalLM"  # transformers finds no loss in the name GPT2LMHeadModel and warns
    ids = tokenizer(f" {tokenizer.eos_token} ".join(python_corpus() if texts is None else texts))["input_ids"]
    data = torch.tensor(ids[: len(ids) // block * block]).view(-1, block)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(steps):
        rows = data[torch.randint(len(data), (batch,), generator=gen)]
        loss = model(input_ids=rows, attention_mask=torch.ones_like(rows), labels=rows).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    model.save_pretrained(folder)
    return float(torch.stack(losses[-20:]).mean())


def build_quickstart_model(out_dir: str | Path, *, pretrain_steps: int = 600, n_layer: int = 2,
                           n_embd: int = 64) -> tuple[Path, float | None]:
    """The quickstart's model: :func:`build_tiny_gpt2`, then ``pretrain_steps`` of :func:`pretrain`.

    Returns the folder and the final pre-training loss (None without pre-training).
    """
    import torch

    torch.manual_seed(0)
    folder = build_tiny_gpt2(out_dir, n_layer=n_layer, n_embd=n_embd)
    loss = pretrain(folder, pretrain_steps) if pretrain_steps > 0 else None
    return folder, loss
