"""Small, deterministic training tasks and one training loop that every benchmark shares.

Five tasks, each cheap enough that a run of its default budget takes 1-10 s on a 2-core CPU:

* ``tiny_gpt2_lm``: a freshly initialised 2-layer GPT-2 (``n_embd=64``) trained on next-token
  prediction over fixed-length blocks of Python's own docstrings (:func:`adaptiverl.tiny.python_corpus`,
  text already on the machine and not written by us), tokenised with a BPE tokenizer trained on the
  same text. The last 10% of the token stream is held out; the final loss is the mean cross-entropy
  over fixed held-out blocks.
* ``tiny_gpt2_lm_600``: the same LM over a 600-step horizon.
* ``digits_cnn``: a small convnet on the same digits as ``digits_mlp``.
* ``digits_mlp``: a one-hidden-layer MLP classifier on scikit-learn's digits (8x8 images, 10 classes,
  shipped inside the package). Fixed 80/20 split; the final loss is held-out cross-entropy.
* ``noisy_regression``: an MLP fitted to a fixed random "teacher" network's outputs plus Gaussian label
  noise (sigma 0.5) and a few gross outliers; the final loss is the held-out MSE against the clean
  teacher outputs (so 0 is reachable and overfitting the noise shows).

Interface::

    task = get_tasks(quick=False)["digits_mlp"]
    model = task.build_model(seed)             # deterministic in the seed
    batches = task.batches(seed)               # endless, deterministic iterator
    loss = task.loss(model, next(batches))     # scalar tensor
    task.eval_loss(model)                      # float, on held-out data

    method = Method("adamw", default_lr=1e-3, build=lambda params, lr, total_steps: Driver(AdamW(params, lr)))
    result = train(task, method, lr=1e-3, seed=0)  # RunResult

A :class:`Method` turns ``(params, lr, total_steps)`` into a :class:`Driver`. The loop calls
``driver.zero_grad()``, ``loss.backward()`` and then ``driver.step(loss)``; the driver steps its
optimizer, feeds the loss to whatever wants it (``observe``, ``step_loss``, a plateau scheduler) and
steps its scheduler. ``driver.train()`` / ``driver.eval()`` bracket training and evaluation
(schedule-free optimizers need them).
"""

from __future__ import annotations

import functools
import math
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from typing import Any, TypeVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

LM_VOCAB = 512
LM_BLOCK = 64
LM_BATCH = 8
#: minibatch sizes of the digits tasks and the noisy regression
DIGITS_BATCH, REGRESSION_BATCH = 64, 32
LM_EVAL_BLOCKS = 32
DATA_SEED = 1234  # data splits and the regression teacher never depend on the run seed

J = TypeVar("J")
R = TypeVar("R")


@dataclass
class Task:
    """A training problem: a model factory, a batch stream, a loss and a held-out loss."""

    name: str
    steps: int
    build_model: Callable[[int], nn.Module]
    batches: Callable[[int], Iterator[Any]]
    loss: Callable[[nn.Module, Any], Tensor]
    eval_loss: Callable[[nn.Module], float]
    description: str = ""
    #: further held-out figures (e.g. accuracy), computed after ``eval_loss`` into ``RunResult.metrics``
    eval_metrics: Callable[[nn.Module], dict[str, float]] | None = None


class Driver:
    """Steps an optimizer (and optional scheduler) and feeds the training loss to them.

    ``step(loss)`` runs, in order: ``optimizer.step()`` (or ``step_fn(loss)`` when given, for front
    ends whose step takes the loss itself), ``on_loss(loss)`` (e.g. ``opt.observe(loss=loss)``),
    then ``scheduler.step(loss)`` if ``scheduler_takes_loss`` else ``scheduler.step()``.
    ``lr_fn`` overrides what :attr:`lr` reports (e.g. Prodigy's effective ``d * lr``).
    """

    def __init__(self, optimizer: Any, *, scheduler: Any = None, scheduler_takes_loss: bool = False,
                 on_loss: Callable[[Tensor], Any] | None = None,
                 step_fn: Callable[[Tensor], Any] | None = None,
                 lr_fn: Callable[[], float] | None = None) -> None:
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_takes_loss = scheduler_takes_loss
        self.on_loss = on_loss
        self.step_fn = step_fn
        self.lr_fn = lr_fn

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self, loss: Tensor) -> None:
        if self.step_fn is not None:
            self.step_fn(loss)
        else:
            self.optimizer.step()
        if self.on_loss is not None:
            self.on_loss(loss)
        if self.scheduler is not None:
            if self.scheduler_takes_loss:
                self.scheduler.step(float(loss))
            else:
                self.scheduler.step()

    @property
    def lr(self) -> float:
        """The first param group's learning rate for the next step (``lr_fn()`` when given)."""
        if self.lr_fn is not None:
            return float(self.lr_fn())
        return float(self.optimizer.param_groups[0]["lr"])

    def train(self) -> None:
        if hasattr(self.optimizer, "train"):
            self.optimizer.train()

    def eval(self) -> None:
        if hasattr(self.optimizer, "eval"):
            self.optimizer.eval()


@dataclass
class Method:
    """How to build and drive one optimizer: ``build(params, lr, total_steps) -> Driver``."""

    name: str
    default_lr: float
    build: Callable[[Iterable[nn.Parameter], float, int], Driver]
    family: str = ""


@dataclass
class RunResult:
    task: str
    method: str
    lr: float
    seed: int
    steps: int
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    final_eval_loss: float = math.inf
    sec_per_step: float = math.nan
    diverged: bool = False
    metrics: dict[str, float] = field(default_factory=dict)


def train(task: Task, method: Method, lr: float, seed: int, steps: int | None = None) -> RunResult:
    """Train ``task``'s model with ``method`` at ``lr`` for ``steps`` (default ``task.steps``).

    Deterministic given ``seed`` (model init and batch order). A non-finite training loss stops
    the run: ``diverged`` is set and ``final_eval_loss`` is ``inf``, so it ranks last everywhere.
    """
    steps = task.steps if steps is None else steps
    model = task.build_model(seed)
    model.train()
    torch.manual_seed(seed)
    driver = method.build([p for p in model.parameters() if p.requires_grad], lr, steps)
    driver.train()
    batches = task.batches(seed)
    result = RunResult(task=task.name, method=method.name, lr=lr, seed=seed, steps=steps)
    start = time.perf_counter()
    for _ in range(steps):
        loss = task.loss(model, next(batches))
        value = loss.item()
        result.losses.append(value)
        if not math.isfinite(value):
            result.diverged = True
            break
        result.lrs.append(driver.lr)
        driver.zero_grad()
        loss.backward()
        driver.step(loss.detach())
    result.sec_per_step = (time.perf_counter() - start) / max(len(result.losses), 1)
    if not result.diverged:
        driver.eval()
        model.eval()
        with torch.no_grad():
            final = task.eval_loss(model)
            if task.eval_metrics is not None:
                result.metrics = task.eval_metrics(model)
        result.final_eval_loss = final if math.isfinite(final) else math.inf
        result.diverged = not math.isfinite(final)
    return result


def _one_thread() -> None:
    torch.set_num_threads(1)


def run_parallel(fn: Callable[[J], R], jobs: Sequence[J], workers: int,
                 label: str | None = None) -> list[R]:
    """``[fn(job) for job in jobs]`` over ``workers`` spawned processes, one torch thread each.

    Tiny models run fastest on one intra-op thread, so independent runs go to separate processes
    instead. ``fn`` must be a module-level function (it is pickled). With ``workers <= 1`` the jobs
    run here, on one thread, and the caller's thread count is restored afterwards. Results come
    back in job order and do not depend on ``workers``. With a ``label``, progress goes to stderr
    at every tenth of the jobs.
    """
    results: list[R] = []
    start = time.perf_counter()

    def collect(outputs: Iterable[R]) -> list[R]:
        for out in outputs:
            results.append(out)
            done = len(results)
            if label and (done == len(jobs) or done % max(1, len(jobs) // 10) == 0):
                print(f"[{label}] {done}/{len(jobs)} runs, {time.perf_counter() - start:.0f} s",
                      file=sys.stderr, flush=True)
        return results

    if workers <= 1:
        threads = torch.get_num_threads()
        _one_thread()
        try:
            return collect(fn(job) for job in jobs)
        finally:
            torch.set_num_threads(threads)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn"),
                             initializer=_one_thread) as pool:
        return collect(pool.map(fn, jobs, chunksize=1))


# --------------------------------------------------------------------------- tiny GPT-2 LM


@functools.lru_cache(maxsize=1)
def _lm_tokens() -> tuple[Tensor, Tensor, int]:
    """(train tokens, held-out tokens, vocab size), tokenised once per process."""
    from adaptiverl.tiny import python_corpus, train_tokenizer

    texts = python_corpus()
    tokenizer = train_tokenizer(texts, vocab_size=LM_VOCAB)
    ids = tokenizer(tokenizer.eos_token.join(texts))["input_ids"]
    tokens = torch.tensor(ids, dtype=torch.long)
    cut = int(0.9 * len(tokens))
    return tokens[:cut], tokens[cut:], len(tokenizer)


def _lm_model(seed: int) -> nn.Module:
    return gpt2_lm(_lm_tokens()[2], seed)


def gpt2_lm(vocab: int, seed: int) -> nn.Module:
    """The suite's LM shape (2 layers, ``n_embd`` 64, no dropout) over ``vocab`` tokens, seeded."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    config = GPT2Config(vocab_size=vocab, n_positions=LM_BLOCK, n_embd=64, n_layer=2, n_head=2,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                        bos_token_id=None, eos_token_id=None, pad_token_id=None)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)
    finally:
        hf_logging.set_verbosity(verbosity)


def _lm_batches(seed: int) -> Iterator[Tensor]:
    return block_batches(_lm_tokens()[0], seed)


def block_batches(train_tokens: Tensor, seed: int) -> Iterator[Tensor]:
    """Endless ``LM_BATCH`` x ``LM_BLOCK + 1`` blocks at random offsets of ``train_tokens``, seeded."""
    gen = torch.Generator().manual_seed(seed)
    offsets = torch.arange(LM_BLOCK + 1)
    high = len(train_tokens) - LM_BLOCK - 1
    while True:
        starts = torch.randint(0, high, (LM_BATCH,), generator=gen)
        yield train_tokens[starts[:, None] + offsets]


def _lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    logits = model(input_ids=batch[:, :-1]).logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


@functools.lru_cache(maxsize=1)
def _lm_eval_blocks() -> Tensor:
    return eval_blocks(_lm_tokens()[1])


def eval_blocks(held_out: Tensor) -> Tensor:
    """``LM_EVAL_BLOCKS`` fixed, evenly spaced blocks of ``held_out`` (the held-out loss's input)."""
    stride = (len(held_out) - LM_BLOCK - 1) // LM_EVAL_BLOCKS
    starts = torch.arange(LM_EVAL_BLOCKS) * stride
    return held_out[starts[:, None] + torch.arange(LM_BLOCK + 1)]


def _lm_eval(model: nn.Module) -> float:
    return _lm_loss(model, _lm_eval_blocks()).item()


# --------------------------------------------------------------------------- digits MLP


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32) / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(DATA_SEED))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _mlp(seed: int, d_in: int, hidden: int, d_out: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, d_out))


def _minibatches(x: Tensor, y: Tensor, batch_size: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
    """Endless shuffled epochs of ``(x, y)`` minibatches."""
    gen = torch.Generator().manual_seed(seed)
    n = len(x)
    while True:
        order = torch.randperm(n, generator=gen)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = order[i:i + batch_size]
            yield x[idx], y[idx]


def _classification_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _digits_eval(model: nn.Module) -> float:
    _, _, x, y = _digits()
    return F.cross_entropy(model(x), y).item()


class _DigitsCNN(nn.Module):
    """Two 3x3 conv layers (16, 32 channels) and a linear head on the 8x8 digit images."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Linear(32 * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.conv1(x.view(-1, 1, 8, 8)))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.head(x.flatten(1))


def _cnn(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return _DigitsCNN()


# --------------------------------------------------------------------------- noisy regression

REG_DIM = 16
REG_NOISE = 0.5


@functools.lru_cache(maxsize=1)
def _regression() -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Teacher ``y = 2 tanh(x W1) w2`` (+ noise on train labels, 2% of them gross outliers)."""
    gen = torch.Generator().manual_seed(DATA_SEED)
    w1 = torch.randn(REG_DIM, 32, generator=gen) / math.sqrt(REG_DIM)
    w2 = torch.randn(32, 1, generator=gen) / math.sqrt(32)

    def teacher(x: Tensor) -> Tensor:
        return 2.0 * torch.tanh(x @ w1) @ w2

    x_train = torch.randn(1024, REG_DIM, generator=gen)
    x_test = torch.randn(512, REG_DIM, generator=gen)
    noise = REG_NOISE * torch.randn(1024, 1, generator=gen)
    outliers = (torch.rand(1024, 1, generator=gen) < 0.02) * 5.0 * torch.randn(1024, 1, generator=gen)
    return x_train, teacher(x_train) + noise + outliers, x_test, teacher(x_test)


def _regression_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def _regression_eval(model: nn.Module) -> float:
    _, _, x, y = _regression()
    return F.mse_loss(model(x), y).item()


# --------------------------------------------------------------------------- registry


def get_tasks(quick: bool = False) -> dict[str, Task]:
    """The five benchmark tasks; ``quick`` shrinks every step budget for harness checks.

    ``digits_cnn`` and ``tiny_gpt2_lm_600`` are kinds the controller's meta-training never saw
    (no convnet, no transformer, no digits and no docstrings in its task family), like the rest.
    """

    def budget(full: int) -> int:
        return max(full // 20, 8) if quick else full

    return {
        "tiny_gpt2_lm": Task(
            name="tiny_gpt2_lm", steps=budget(150), build_model=_lm_model, batches=_lm_batches,
            loss=_lm_loss, eval_loss=_lm_eval,
            description=f"2-layer GPT-2 (n_embd 64), {LM_BATCH}x{LM_BLOCK}-token blocks of Python "
                        "docstrings, held-out next-token cross-entropy"),
        "tiny_gpt2_lm_600": Task(
            name="tiny_gpt2_lm_600", steps=budget(600), build_model=_lm_model, batches=_lm_batches,
            loss=_lm_loss, eval_loss=_lm_eval,
            description="the same LM for 600 steps (a longer horizon)"),
        "digits_cnn": Task(
            name="digits_cnn", steps=budget(300), build_model=_cnn,
            batches=lambda seed: _minibatches(*_digits()[:2], DIGITS_BATCH, seed),
            loss=_classification_loss, eval_loss=_digits_eval,
            description="convnet (conv 16, conv 32, max-pool, linear) on the 8x8 digits, held-out "
                        "cross-entropy"),
        "digits_mlp": Task(
            name="digits_mlp", steps=budget(300), build_model=lambda seed: _mlp(seed, 64, 64, 10),
            batches=lambda seed: _minibatches(*_digits()[:2], DIGITS_BATCH, seed),
            loss=_classification_loss, eval_loss=_digits_eval,
            description="MLP 64-64-64-10 on scikit-learn digits (80/20 split), held-out cross-entropy"),
        "noisy_regression": Task(
            name="noisy_regression", steps=budget(300), build_model=lambda seed: _mlp(seed, REG_DIM, 64, 1),
            batches=lambda seed: _minibatches(*_regression()[:2], REGRESSION_BATCH, seed),
            loss=_regression_loss, eval_loss=_regression_eval,
            description=f"MLP {REG_DIM}-64-64-1 on a tanh teacher + N(0, {REG_NOISE}^2) label noise and "
                        "2% outliers, held-out MSE to the clean teacher"),
    }
