"""Development tasks for the RL / fine-tune controller rules, disjoint from every benchmark task.

Constants of :mod:`adaptiverl.controllers.policy_rules` and the lr-hint designs are chosen here,
never on ``benchmarks/``:

* ``grpo``: GRPO with a fresh tiny GPT-2 on prompts cut from the docstrings of ``jinja2`` and
  ``werkzeug`` (the benchmark's quickstart prompts come from the standard library), rewarded for a
  12-word completion and for using "and" / "or" / "not" (the benchmark's reward adds a cosine
  similarity to a reference and a different regex). ``python scripts/rl_dev.py grpo``.
* ``grpo_cosine``: the same task with a cosine similarity to each paragraph's next 16 words added
  to the rewards (all-MiniLM-L6-v2, offline), the benchmark reward's shape on other text.
  ``python scripts/rl_dev.py grpo_cosine``.
* ``grpo_terse``: further from both (added 2026-12-06): prompts from ``click`` and ``markdown``
  docstrings, groups of 8 completions of at most 12 tokens, rewarded for a 5-word completion, for
  containing "the" or "a" (substring) and for ending on a full stop (regex), with no cosine term.
  ``python scripts/rl_dev.py grpo_terse``.
* ``--pretrain-steps N`` (GRPO tasks, added 2026-12-07): the tiny policy is first pre-trained for N
  steps on the docstrings of :data:`DEV_LM_LIBRARIES` (``adaptiverl.tiny.pretrain``), so the runs
  start from a pre-trained policy, as users' do, instead of a fresh one.
* ``lm``: supervised, a fresh 2-layer GPT-2 (the benchmark LM's shape) trained for 600 steps on
  next-token prediction over the docstrings of eight third-party libraries (:data:`DEV_LM_LIBRARIES`;
  the benchmark's LM reads the standard library's), held-out cross-entropy on the last 10%. Added
  2026-12-07 for the long-horizon LM plateau. ``python scripts/rl_dev.py lm --variants online adamw_cosine``.
* ``glyphs_mlp``, ``glyphs_cnn``, ``noisyreg`` (added 2026-12-07): supervised, from scratch, 300 steps,
  held-out loss, data generated from the run's seed (no benchmark data, no scikit-learn dataset):
  10 classes of 8x8 stroke images, clean labels, for a 64-64-64-10 MLP and for the suite's small
  convnet shape; and an MLP regression on a sine teacher with Laplace noise and 1% outliers, scored
  against the clean teacher. ``python scripts/rl_dev.py glyphs_cnn --variants online adamw_cosine
  --lrs 1e-3 1e-2 --seeds 0 1 2``.
* ``scratch``: the from-scratch families of the meta-training (``scripts/meta_train.py``'s
  ``make_task``, seeds of their own), 150 steps (``--steps``), task seeds 0-9 (``--seeds``).
* ``finetune``: the MiniLM fine-tune of ``benchmarks.finetune_pretrained`` on other libraries'
  docstrings (``datasets``, ``accelerate``, ``huggingface_hub``, ``pygments``), 60 steps.
  ``python scripts/rl_dev.py finetune``.

Results are printed as one JSON line per run (the docs quote them).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import re
import statistics
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEV_PROMPT_LIBRARIES = ("jinja2", "werkzeug")
DEV_REWARDS = [{"type": "length", "target": 12, "unit": "words", "weight": 1.0},
               {"type": "regex", "pattern": "\\b(and|or|not)\\b", "count": True, "max_count": 3,
                "score_match": 0.33, "weight": 0.5}]
DEV_FT_LIBRARIES = ("datasets", "accelerate", "huggingface_hub", "pygments")
BASE_LR = 2e-3
#: ``lm``: the dev LM's text (every library's docstrings that rl_dev's other tasks read, none a benchmark's)
DEV_LM_LIBRARIES = ("jinja2", "werkzeug", "click", "markdown", "datasets", "accelerate", "huggingface_hub",
                    "pygments")


#: ``grpo_cosine``: the dev rewards plus a cosine similarity to the paragraph's next 16 words (the
#: benchmark's reward has this shape on other text); at 150 steps it shows the trainer path's 1x weakness
DEV_REWARDS_COSINE = [*DEV_REWARDS, {"type": "cosine", "reference_column": "reference", "weight": 1.0}]


#: ``grpo_terse``: other prose, another reward shape, larger groups, shorter completions
TERSE_PROMPT_LIBRARIES = ("click", "markdown")
TERSE_REWARDS = [{"type": "length", "target": 5, "unit": "words", "weight": 1.0},
                 {"type": "substring", "substrings": [" the ", " a "], "weight": 0.5},
                 {"type": "regex", "pattern": "\\.\\s*$", "weight": 0.5}]
#: per GRPO dev task: prompt libraries, rewards and the config keys that differ from the others'
GRPO_TASKS: dict[str, dict[str, Any]] = {
    "grpo": {"libraries": DEV_PROMPT_LIBRARIES, "rewards": DEV_REWARDS, "config": {}},
    "grpo_cosine": {"libraries": DEV_PROMPT_LIBRARIES, "rewards": DEV_REWARDS_COSINE, "config": {}},
    "grpo_terse": {"libraries": TERSE_PROMPT_LIBRARIES, "rewards": TERSE_REWARDS,
                   "config": {"BATCH_SIZE": 16, "NUM_GENERATIONS": 8, "MAX_COMPLETION_LENGTH": 12}},
}


def _prompts(path: Path, libraries: tuple[str, ...] = DEV_PROMPT_LIBRARIES, count: int = 96) -> Path:
    from benchmarks.finetune_pretrained import docstring_paragraphs

    rows = []
    for lib in libraries:
        for text in docstring_paragraphs(lib)[: count // len(libraries)]:
            words = text.split()
            rows.append({"prompt": " ".join(words[:6]), "reference": " ".join(words[6:22]) or " ".join(words)})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def grpo_run(job: tuple[str, float, str, str, int, int, str]) -> dict[str, Any]:
    """One dev GRPO run ``(variant, lr factor, model dir, prompts file, steps, seed, task)``."""
    from transformers import PrinterCallback, ProgressCallback, set_seed

    from adaptiverl.trainer.callback import AdaptiveCallback
    from adaptiverl.trainer.config import parse_config
    from adaptiverl.trainer.run import build_trainer, load_dataset_for, load_model_and_tokenizer

    variant, factor, model_dir, prompts, steps, seed, task = job
    import transformers

    transformers.utils.logging.set_verbosity_error()
    out = tempfile.mkdtemp(prefix="rl-dev-")
    c = parse_config({"MODEL": model_dir, "TRAIN_FILE": prompts, "OUTPUT_DIR": out, "MODE": "rl",
                      "OPTIM": "adamw", "LRATE": BASE_LR * factor, "BATCH_SIZE": 8, "NUM_GENERATIONS": 4,
                      "MAX_COMPLETION_LENGTH": 20, "MAXSEQ": 48, "STEPS": steps, "SAVE_STEPS": 0,
                      "LOGGING_STEPS": 1, "REPORT_TO": [], "SEED": seed, "CPU_THREADS": 1, "PLOT": False,
                      "REWARDS": GRPO_TASKS[task]["rewards"], **GRPO_TASKS[task]["config"]})
    set_seed(seed)
    model, tokenizer = load_model_and_tokenizer(c)
    dataset = load_dataset_for(c, tokenizer)
    optimizer = _dev_optimizer(variant, model, c)
    if variant.endswith("_stock"):  # the default path: a stock trl.GRPOTrainer + AdaptiveCallback()
        from benchmarks.grpo_reward import _stock_trainer

        trainer = _stock_trainer(c, model, tokenizer, dataset, optimizer)
    else:
        trainer = build_trainer(c, model, tokenizer, dataset, optimizer)
        if variant == "anchor":  # AdamW + rsl_rl's KL-adaptive lr, as the benchmark's anchor row
            from benchmarks.grpo_reward import KLAdaptiveLR

            trainer.lr_scheduler = KLAdaptiveLR(optimizer)
        trainer.add_callback(AdaptiveCallback(print_console=False, history_file=None, require_targets=False,
                                              horizon=variant != "online_nohorizon"))
    for cb in (ProgressCallback, PrinterCallback):
        trainer.remove_callback(cb)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    rewards = [r["reward"] for r in trainer.state.log_history if "reward" in r]
    entropy = [r["entropy"] for r in trainer.state.log_history if math.isfinite(r.get("entropy", math.nan))]
    history = next(cb for cb in trainer.callback_handler.callbacks if isinstance(cb, AdaptiveCallback)).history
    kls = [h["policy_kl"] for h in history if "policy_kl" in h]
    lrs = [h.get("lr", h.get("scheduler_lr", math.nan)) for h in history]
    from benchmarks.grpo_reward import SMOOTH, collapsed

    return {"task": task, "variant": variant, "factor": factor, "seed": seed,
            "start": statistics.fmean(rewards[:5]), "final": statistics.fmean(rewards[-5:]),
            "kl_median": statistics.median(kls) if kls else math.nan,
            "kl_mean": statistics.fmean(kls) if kls else math.nan,
            "lr_first": lrs[0] if lrs else math.nan, "lr_last": lrs[-1] if lrs else math.nan,
            "lr_max": max((x for x in lrs if math.isfinite(x)), default=math.nan),
            "entropy_start": statistics.fmean(entropy[:SMOOTH]) if entropy else math.nan,
            "entropy_final": statistics.fmean(entropy[-SMOOTH:]) if entropy else math.nan,
            # the benchmark's own flag: reward below its start, or entropy below 0.2x its start
            "collapsed": collapsed({"rewards": rewards, "entropy": entropy}),
            "lrs": lrs, "entropy": entropy, "rewards": rewards, "kls": kls}


#: the shipped values of module switches that a variant overwrites, read before the first one does
_SHIPPED: dict[str, Any] = {}


def _set_rules(variant: str) -> None:
    """Switch the controller's policy rules for this process (ablations of the shipped defaults)."""
    from adaptiverl.controllers import online, policy_rules

    online.anneal_advances = (lambda *_: True) if variant == "online_nogate" else policy_rules.anneal_advances
    online.kl_adaptive_factor = (lambda *_: 1.0) if variant.startswith("online_nokl") else policy_rules.kl_adaptive_factor
    if variant.startswith("online_cutonly"):  # the KL prior's cut above 2x the target, never its raise
        online.kl_adaptive_factor = lambda *a: min(1.0, policy_rules.kl_adaptive_factor(*a))
    # e.g. online_nokl_climb0: the anneal gate's threshold (the shipped value is CLIMB_TSTAT = 1)
    policy_rules.CLIMB_TSTAT = float(variant.split("_climb")[1]) if "_climb" in variant else 1.0
    online.KL_TARGET = float(variant.removeprefix("online_kl")) if variant.startswith("online_kl") \
        else policy_rules.KL_TARGET
    if (target := _number(variant, "_target")) is not None:  # combines: online_after1.5_target0.005_stock
        online.KL_TARGET = target
    # the KL prior's raise below half the target: online_search1.5 (search at 1.5x instead of 2x),
    # online_up1.5 (1.5x on every low KL), online_after1.5 (the 2x search, then 1.5x: shipped since
    # 2026-12-06 with _target0.005; the rule before that is online_after1.1_target0.01),
    # online_upsqrt2 (at most sqrt(target / 2 / KL), at most 2x)
    raise_ = policy_rules.kl_raise
    if (factor := _number(variant, "_search")) is not None:
        raise_ = lambda kl, target, searching: factor if searching else 1.0  # noqa: E731
    elif (cap := _number(variant, "_upsqrt")) is not None:
        raise_ = lambda kl, target, searching: min(cap, math.sqrt(policy_rules.KL_LOW * target / max(kl, 1e-12)))  # noqa: E731
    elif (up := _number(variant, "_up")) is not None:
        raise_ = lambda kl, target, searching: up  # noqa: E731
    elif (after := _number(variant, "_after")) is not None:  # the shipped search, then ``after`` on a low KL
        raise_ = lambda kl, target, searching: policy_rules.KL_SEARCH_FACTOR if searching else after  # noqa: E731
    elif (sfac := _number(variant, "_sf")) is not None:  # a search at ``sfac`` per step, then the shipped raise
        raise_ = lambda kl, target, searching: sfac if searching else policy_rules.KL_FACTOR  # noqa: E731
    online.kl_raise = raise_
    # the KL prior's cut above twice the target: online_cut1.1 (1.1x, as large as the raise after the
    # search: zero expected log-step when as many readings fall above the band as below it)
    cut = _number(variant, "_cut")
    online.kl_adaptive_factor = (lambda kl, target: _with_cut(policy_rules.kl_adaptive_factor(kl, target), cut)) \
        if cut is not None else online.kl_adaptive_factor
    # when the raise acts once the search is over: shipped, on every low KL; online_rnone (never: the
    # search's raise, then cuts only), online_rflat (only while the reward is not climbing, t <=
    # CLIMB_TSTAT: policy_rules.kl_raises_while_flat), online_rflat0 (t <= 0)
    online.kl_raises = policy_rules.kl_raises
    if variant.startswith("online_rnone"):
        online.kl_raises = lambda searching, reward: searching
    elif variant.startswith("online_rflat0"):
        online.kl_raises = lambda searching, reward: searching or reward.trend_tstat <= 0.0
    elif variant.startswith("online_rflat"):
        online.kl_raises = policy_rules.kl_raises_while_flat
    # online_fold: the schedule's remaining rise folded into the scale when the search ends;
    # online_now: after the search a low KL raises at once (both combine, e.g. online_rflat_fold)
    online.KL_FOLD_SCHEDULE = "_fold" in variant
    online.KL_RAISE_IMMEDIATE = "_now" in variant
    # the KL the prior acts on, robust to a lone spike of a per-micro-batch estimate: online_med3 (median
    # of the last 3; the shipped window is KL_MEDIAN_OF), online_mean2 (mean of the last 2), online_gmean2
    # (their geometric mean), online_confirm (a cut needs the last two above twice the target, or the
    # last above 8x it)
    online.recent_kl = _recent_kl(variant)
    # the KL target's power of the entropy (target * (H / H_max) ** p): online_hpow0.5; shipped since
    # 2026-12-06: 1 (online_hpow1 = online); online_hpow0, a fixed target, is the rule before that
    power = _number(variant, "_hpow")
    online.KL_ENTROPY_POWER = policy_rules.KL_ENTROPY_POWER if power is None else power
    # twice the KL target while the policy has not sharpened (entropy above x times the largest fed):
    # online_boost0.9_stock, a reason to move for a run whose reward stays flat; not shipped
    online.kl_target = policy_rules.kl_target
    if (boost := _number(variant, "_boost")) is not None:
        def boosted(entropy: float | None, entropy_ref: float, base: float, power: float) -> float:
            fraction = policy_rules.entropy_fraction(entropy, entropy_ref)
            return policy_rules.kl_target(entropy, entropy_ref, base, power) * (
                2.0 if fraction is not None and fraction > boost else 1.0)
        online.kl_target = boosted
    # the anneal also waits while the entropy is above x times its largest (ANNEAL_ENTROPY_HOLD):
    # online_hold0.8_stock; not shipped
    online.ANNEAL_ENTROPY_HOLD = _number(variant, "_hold")
    # every tensor's log scale within log c of the mean: online_spread1_stock (one shared scale)
    online.SCALE_SPREAD = _number(variant, "_spread")
    # softer pooling of the rows' levels (supervised): online_shrink0.02, online_shrinkdn0.02, online_devtau2
    pooling = [(mode, v) for mode, tag in (("shrink", "_shrink"), ("shrink_down", "_shrinkdn"), ("evidence", "_devtau"))
               if (v := _number(variant, tag)) is not None]
    online.ROW_POOLING = pooling[0] if pooling else None
    # held-out pooling (online_val_evalfeed): readings in a row above the margin before it acts
    patience = _number(variant, "_patience")
    shipped_patience = _SHIPPED.setdefault("EVAL_POOL_PATIENCE", online.EVAL_POOL_PATIENCE)
    online.EVAL_POOL_PATIENCE = shipped_patience if patience is None else int(patience)
    # the per-matrix ceiling on rms(update) / rms(weight) in supervised runs (UPDATE_RATIO_MAX, shipped
    # 2026-12-07 at 0.05): online_trust0.1 sets it, online_notrust turns it off, online_trustrl also
    # applies it once rewards are fed
    trust = _number(variant, "_trust")
    shipped = _SHIPPED.setdefault("UPDATE_RATIO_MAX", online.UPDATE_RATIO_MAX)  # before any variant set it
    online.UPDATE_RATIO_MAX = None if "_notrust" in variant else (shipped if trust is None else trust)
    online.UPDATE_RATIO_IN_RL = "_trustrl" in variant
    # the per-tensor changes in RL, as before 2026-12-07 (SHARE_CHANGE_IN_RL off): online_pertensor_stock
    online.SHARE_CHANGE_IN_RL = "_pertensor" not in variant
    # the guard's per-tensor offsets kept in RL, as before 2026-12-07 (SHARE_LEVEL_IN_RL off): online_offsets_stock
    online.SHARE_LEVEL_IN_RL = "_offsets" not in variant


def _number(variant: str, tag: str) -> float | None:
    """The number after ``tag`` in a variant name (``online_up1.5_stock``, ``_up`` -> 1.5), else None."""
    match = re.search(re.escape(tag) + r"([0-9.]+)(?:_|$)", variant)
    return float(match.group(1)) if match else None


def _with_cut(factor: float, cut: float) -> float:
    return 1.0 / cut if factor < 1.0 else factor


def _recent_kl(variant: str) -> Any:
    from adaptiverl.controllers import policy_rules

    if (med := _number(variant, "_med")) is not None:
        n = int(med)
        return lambda values, count: policy_rules.recent_kl(values, n)
    if (gmean := _number(variant, "_gmean")) is not None:
        n = int(gmean)
        return lambda values, count: math.exp(statistics.fmean(math.log(max(v, 1e-12)) for v in values[-n:]))
    if (mean := _number(variant, "_mean")) is not None:
        n = int(mean)
        return lambda values, count: statistics.fmean(values[-n:])
    if variant.endswith("_confirm"):
        def confirmed(values: Any, count: int) -> float:
            last, target = values[-1], policy_rules.KL_TARGET
            if policy_rules.KL_HIGH * target < last <= 8 * target:
                return min(values[-2:])
            return last
        return confirmed
    return policy_rules.recent_kl


def _hint_class() -> Any:
    """OnlineAdamW with one of the lr-hint designs hooked in from outside (the development harness).

    ``start``: every tensor's scale starts at ``start`` (the given lr is a ceiling hint; the
    controller grows it on evidence). ``trust``: each step's per-tensor lr is capped at
    ``trust * rms(theta_i)`` (an AdamW update is about lr per element, so this caps the update to
    weight ratio, LARS/LAMB's trust ratio; weights with rms below 1e-2 count as 1e-2).
    ``start_trained``: only the tensors that look trained (:mod:`adaptiverl.signals.weights`) start
    at that scale. The shipped guard (``pretrained_start``) is an argument of the optimizer itself.
    """
    import torch

    from adaptiverl.optim import OnlineAdamW
    from adaptiverl.signals.weights import trained_tensors

    class Hint(OnlineAdamW):
        def __init__(self, *args: Any, start: float = 1.0, trust: float | None = None,
                     start_trained: float = 1.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.start, self.trust, self.start_trained = start, trust, start_trained

        def _prepare_controller(self, device: Any) -> Any:
            fresh = self.online_controller.state is None
            online = super()._prepare_controller(device)
            if fresh and self.start != 1.0:
                online.state.rows.log_scale.fill_(math.log(self.start))
            if fresh and self.start_trained != 1.0:
                marks = trained_tensors(self._all_params())
                online.state.rows.log_scale[torch.tensor(marks)] = math.log(self.start_trained)
            return online

        def _adapt(self, batch: Any, bad: Any) -> Any:
            out = super()._adapt(batch, bad)
            if out is None or self.trust is None:
                return out
            scales, knobs = out
            params = batch["params"]
            rms = (torch.stack(torch._foreach_norm(params)) /
                   torch.tensor([p.numel() ** 0.5 for p in params])).clamp_min(1e-2).tolist()
            lrs = [float(g["lr"]) for g in self.param_groups for p in g["params"] if p.grad is not None]
            capped = [min(s, self.trust * r / lr) for s, r, lr in zip(scales, rms, lrs, strict=True)]
            self.online_controller.record(capped, knobs, all_rows=len(capped) == self.online_controller.state.num_rows)
            return capped, knobs

    return Hint


OFF = {"pretrained_start": 0.0}  # the shipped guard off: the designs as first measured
HINT_DESIGNS = {"online": {}, "online_noguard": OFF, "start0.01": {"start": 0.01, **OFF},
                "start0.05": {"start": 0.05, **OFF}, "start0.1": {"start": 0.1, **OFF},
                "trust1e-3": {"trust": 1e-3, **OFF}, "trust3e-3": {"trust": 3e-3, **OFF},
                "trained0.1": {"start_trained": 0.1, **OFF}, "trained0.05": {"start_trained": 0.05, **OFF},
                "guard1e-3": {"pretrained_start": 1e-3}, "guard2.5e-3": {"pretrained_start": 2.5e-3},
                "guard5e-3": {"pretrained_start": 5e-3}}


def finetune_run(job: tuple[str, float, str, int, int]) -> dict[str, Any]:
    """One dev fine-tune ``(design, lr, data file, steps, seed)``: held-out loss and accuracy."""
    import torch

    from benchmarks.finetune_pretrained import METHODS, make_task
    from benchmarks.tasks import Driver, Method, train

    design, lr, data_path, steps, seed = job
    task = make_task(torch.load(data_path, weights_only=True), steps, name="dev_finetune")
    # a design of HINT_DESIGNS runs under the shipped rules; any other name is a rules variant of the
    # shipped optimizer (e.g. online_trust0.1); a worker process runs many jobs
    _set_rules("online" if design in HINT_DESIGNS or design == "adamw_linear" else design)
    if design == "adamw_linear":
        method = METHODS["adamw_linear"]
    else:
        options = HINT_DESIGNS.get(design, {})

        def build(params: Any, lr: float, total: int) -> Driver:
            opt = _hint_class()(params, lr=lr, weight_decay=0.0, total_steps=total, **options)
            return Driver(opt, on_loss=lambda loss: opt.observe(loss=loss), lr_fn=opt.effective_lr)

        method = Method(design, lr, build)
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(task, method, lr, seed)
    return {"task": "finetune", "design": design, "lr": lr, "seed": seed, "eval_loss": result.final_eval_loss,
            "accuracy": result.metrics.get("accuracy"), "lr_first": result.lrs[0],
            "lr_10": result.lrs[min(9, len(result.lrs) - 1)], "lr_last": result.lrs[-1]}


def scratch_run(job: tuple[str, int, float, int]) -> dict[str, Any]:
    """One from-scratch run of the meta-training family (OnlineAdamW at ``job[2]``, default 1e-3),
    design ``job[0]`` (an lr-hint design of :data:`HINT_DESIGNS`, or a rules variant as for the GRPO
    tasks, e.g. ``online_trust0.1``), task seed ``job[1]``: what a design costs where no pretrained
    weights exist."""
    import torch

    from adaptiverl.optim import OnlineAdamW

    sys.path.insert(0, str(ROOT / "scripts"))
    from meta_train import make_task

    design, seed, lr, steps = job
    gen = torch.Generator().manual_seed(10_000 + seed)  # meta-training's own seeds are drawn elsewhere
    kind = ("blobs_classifier", "illcond_logreg", "char_lm", "deep_linear", "autoencoder")[seed % 5]
    task = make_task(kind, gen, steps)
    # the shipped rules unless the design is a rules variant: a worker process runs many jobs
    _set_rules("online" if design in HINT_DESIGNS else design)
    if design in HINT_DESIGNS:
        opt = _hint_class()(task.model.parameters(), lr=lr, weight_decay=0.01, total_steps=steps,
                            **HINT_DESIGNS[design])
    else:
        opt = OnlineAdamW(task.model.parameters(), lr=lr, weight_decay=0.01, total_steps=steps)
    for _ in range(steps):
        loss = task.loss(task.model, next(task.batches))
        if not math.isfinite(loss.item()):
            return {"task": "scratch", "design": design, "seed": seed, "lr": lr, "kind": kind, "eval_loss": math.inf}
        opt.zero_grad()
        loss.backward()
        opt.observe(loss=loss)
        opt.step()
    with torch.no_grad():
        final = task.eval_loss(task.model)
    return {"task": "scratch", "design": design, "seed": seed, "lr": lr, "kind": kind, "eval_loss": final}


#: the dev supervised tasks of :func:`supervised_run` (no benchmark data: synthetic images and a teacher of their own)
SUPERVISED_TASKS = ("glyphs_mlp", "glyphs_cnn", "noisyreg")


def _glyphs(seed: int, n: int = 1800) -> tuple[Any, Any, Any, Any]:
    """A clean-label 8x8 image task of its own (no digits data): 10 classes, each a template of
    three random strokes; a sample is its template shifted by up to one pixel, scaled in
    brightness and noised. 80/20 train/held-out split; everything from ``seed``."""
    import torch

    gen = torch.Generator().manual_seed(20_000 + seed)
    grid = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1)  # (8, 8, 2)
    templates = torch.zeros(10, 8, 8)
    for c in range(10):
        for _ in range(3):
            a, b = torch.rand(2, 2, generator=gen) * 7
            t = ((grid - a) @ (b - a) / (b - a).square().sum().clamp_min(1e-6)).clamp(0, 1)
            dist = (grid - (a + t[..., None] * (b - a))).norm(dim=-1)
            templates[c] = torch.maximum(templates[c], (1.2 - dist).clamp(0, 1))
    y = torch.randint(10, (n,), generator=gen)
    shifts = torch.randint(-1, 2, (n, 2), generator=gen)
    x = torch.stack([templates[int(c)].roll((int(dx), int(dy)), (0, 1)) for c, (dx, dy) in zip(y, shifts, strict=True)])
    x = x * (0.6 + 0.8 * torch.rand(n, 1, 1, generator=gen)) + 0.3 * torch.randn(n, 8, 8, generator=gen)
    x = x.clamp(0, 1.5).reshape(n, 64)
    cut = int(0.8 * n)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _noisy_teacher(seed: int) -> tuple[Any, Any, Any, Any]:
    """A noisy regression of its own: ``y = sum_k b_k sin(x a_k)`` in 10 dimensions, Laplace label noise
    (scale 0.4) and 1% outliers (x8); 1024 train / 512 held-out points, scored against the clean teacher."""
    import torch

    gen = torch.Generator().manual_seed(30_000 + seed)
    a, b = torch.randn(10, 8, generator=gen) / 10 ** 0.5, torch.randn(8, 1, generator=gen) / 8 ** 0.5

    def teacher(x: Any) -> Any:
        return 1.5 * torch.sin(x @ a) @ b

    x, xe = torch.randn(1024, 10, generator=gen), torch.randn(512, 10, generator=gen)
    u = torch.rand(1024, 1, generator=gen) - 0.5
    noise = -0.4 * u.sign() * torch.log1p(-2 * u.abs())
    outliers = (torch.rand(1024, 1, generator=gen) < 0.01) * 8.0 * torch.randn(1024, 1, generator=gen)
    return x, teacher(x) + noise + outliers, xe, teacher(xe)


class _ValidationGate:
    """What a validation reading does in a dev run (``online_val...``, read every 10 steps):
    ``_valgate{l}`` pools the rows (ROW_POOLING ``("shrink", l)``) while the reading is above its best
    so far (by more than a factor ``1 + x`` with ``_vmargin{x}``); ``_evalfeed`` feeds it to the
    optimizer (``observe(eval_loss=)``, the shipped held-out pooling). Counts the pooled steps."""

    def __init__(self, variant: str) -> None:
        self.pool_on_val = _number(variant, "_valgate")
        self.margin = 1.0 + (_number(variant, "_vmargin") or 0.0)
        self.feed = "_evalfeed" in variant
        self.best, self.pooled = math.inf, 0

    def read(self, value: float, opt: Any) -> None:
        from adaptiverl.controllers import online

        if self.pool_on_val is not None:
            online.ROW_POOLING = ("shrink", self.pool_on_val) if value > self.best * self.margin else None
        if self.feed:
            opt.observe(eval_loss=value)
        self.best = min(self.best, value)

    def count(self, opt: Any) -> None:
        """After each step: one more pooled step if either pooling acted on it."""
        from adaptiverl.controllers import online

        state = opt.online_controller.state if self.feed else None
        self.pooled += online.ROW_POOLING is not None or bool(state is not None and state.eval_pooling)

    def close(self) -> None:
        """The gate set the module switch: leave it as _set_rules found it."""
        from adaptiverl.controllers import online

        if self.pool_on_val is not None:
            online.ROW_POOLING = None


def supervised_run(job: tuple[str, float, str, int, int]) -> dict[str, Any]:
    """One dev supervised run ``(variant, lr, task, steps, seed)`` (data seed = run seed): ``glyphs_mlp``
    (64-64-64-10 on :func:`_glyphs`), ``glyphs_cnn`` (the suite's small convnet shape on the same images),
    batch 64, cross-entropy; ``noisyreg`` (MLP 10-64-64-1 on :func:`_noisy_teacher`, batch 32, MSE).
    ``adamw_cosine`` (5% warm-up, cosine to 0) or an OnlineAdamW variant at its defaults, wd 0.01, told
    the horizon and fed the loss. Final held-out loss (for ``noisyreg`` against the clean teacher)."""
    import torch
    import torch.nn.functional as F

    from adaptiverl.optim import OnlineAdamW
    from benchmarks.registry import warmup_cosine
    from benchmarks.tasks import _cnn, _minibatches, _mlp

    variant, lr, task, steps, seed = job
    _set_rules("online" if variant == "adamw_cosine" else variant)
    if task == "noisyreg":
        xt, yt, xe, ye = _noisy_teacher(seed)
        model, loss_fn, batch = _mlp(seed, 10, 64, 1), F.mse_loss, 32
    else:
        xt, yt, xe, ye = _glyphs(seed)
        model = _mlp(seed, 64, 64, 10) if task == "glyphs_mlp" else _cnn(seed)
        loss_fn, batch = F.cross_entropy, 64
    if variant == "adamw_cosine":
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
        sched = warmup_cosine(opt, steps)
    else:
        opt, sched = OnlineAdamW(model.parameters(), lr=lr, weight_decay=0.01, total_steps=steps), None
    # online_val: the last 20% of the training data held out as a validation split (the held-out data
    # stays unseen), read every 10 steps by a _ValidationGate
    validate, gate = "_val" in variant, _ValidationGate(variant)
    if validate:
        cut = int(0.8 * len(xt))
        xt, yt, xv, yv = xt[:cut], yt[:cut], xt[cut:], yt[cut:]
    batches = _minibatches(xt, yt, batch, seed)
    lrs: list[float] = []
    rows_at: dict[int, list[float]] = {}
    for step in range(steps):
        x, y = next(batches)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        if sched is None:
            opt.observe(loss=loss)
        opt.step()
        if sched is not None:
            sched.step()
        if step % 25 == 0:
            lrs.append(opt.param_groups[0]["lr"] if sched is not None else opt.effective_lr())
        if validate and step > 0 and step % 10 == 0:
            with torch.no_grad():
                gate.read(float(loss_fn(model(xv), yv)), opt)
        gate.count(opt)
        if sched is None and "_rows" in variant and step in (50, 150, steps - 1):
            # each tensor's level in decades from the rows' mean (online_rows: which tensors move where)
            log_scales = opt.online_controller.log_scales()
            rows_at[step] = [round(float(v - log_scales.mean()) / math.log(10.0), 2) for v in log_scales]
    gate.close()
    with torch.no_grad():
        final, train_loss = float(loss_fn(model(xe), ye)), float(loss_fn(model(xt), yt))
    return {"task": task, "variant": variant, "lr": lr, "seed": seed, "eval_loss": final,
            "train_loss": train_loss, "lrs": lrs, "pooled_steps": gate.pooled,
            **({"rows": rows_at, "names": [n for n, _ in model.named_parameters()]} if rows_at else {})}


def _dev_lm_texts() -> list[str]:
    """The docstring paragraphs of :data:`DEV_LM_LIBRARIES` (the dev LM's text, the pre-trained policy's)."""
    from benchmarks.finetune_pretrained import docstring_paragraphs

    return [t for lib in DEV_LM_LIBRARIES for t in docstring_paragraphs(lib, max_chars=2000)]


def _lm_data(path: Path) -> Path:
    """Tokenised dev LM text, saved once for every worker: (train ids, held-out ids, vocab size)."""
    import torch

    from adaptiverl.tiny import train_tokenizer
    from benchmarks.tasks import LM_VOCAB

    texts = _dev_lm_texts()
    tokenizer = train_tokenizer(texts, vocab_size=LM_VOCAB)
    ids = torch.tensor(tokenizer(tokenizer.eos_token.join(texts))["input_ids"], dtype=torch.long)
    cut = int(0.9 * len(ids))
    torch.save({"train": ids[:cut], "held_out": ids[cut:], "vocab": len(tokenizer)}, path)
    return path


def lm_run(job: tuple[str, float, str, int, int]) -> dict[str, Any]:
    """One dev LM run ``(variant, lr, data file, steps, seed)``: ``adamw_cosine`` (fused AdamW, wd 0.01,
    5% warm-up, cosine to 0), or an OnlineAdamW variant at its defaults, told the horizon and fed the loss (the
    benchmark suite's driver). Final held-out loss and the effective lr every 50 steps."""
    import torch

    from adaptiverl.optim import OnlineAdamW
    from benchmarks.registry import warmup_cosine
    from benchmarks.tasks import (
        Driver,
        Method,
        Task,
        _lm_loss,
        block_batches,
        eval_blocks,
        gpt2_lm,
        train,
    )

    variant, lr, data_path, steps, seed = job
    data = torch.load(data_path, weights_only=True)
    held_out = eval_blocks(data["held_out"])
    train_ids, models = data["train"], []
    # online_val...: as supervised_run's, with the last 10% of the training text held out
    validate, gate, calls = "_val" in variant, _ValidationGate(variant), [0]
    if validate:
        cut = int(0.9 * len(train_ids))
        train_ids, val_blocks = train_ids[:cut], eval_blocks(train_ids[cut:])

    def on_val(opt: Any) -> None:  # after every 10th loss: a validation reading
        calls[0] += 1
        if validate and calls[0] % 10 == 0:
            model, was_training = models[-1], models[-1].training
            model.eval()
            with torch.no_grad():
                gate.read(_lm_loss(model, val_blocks).item(), opt)
            model.train(was_training)
        gate.count(opt)

    task = Task("dev_lm", steps, lambda model_seed: models.append(gpt2_lm(data["vocab"], model_seed)) or models[-1],
                lambda batch_seed: block_batches(train_ids, batch_seed), _lm_loss,
                lambda m: _lm_loss(m, held_out).item())
    if variant == "adamw_cosine":
        def build(params: Any, lr: float, total: int) -> Driver:
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01, fused=True)
            return Driver(opt, scheduler=warmup_cosine(opt, total))  # the benchmark suite's baseline
    else:
        _set_rules(variant)
        controller = "fresh" if "_fresh" in variant else "pretrained"

        def build(params: Any, lr: float, total: int) -> Driver:
            opt = OnlineAdamW(params, lr=lr, total_steps=total, controller=controller)

            def on_loss(loss: Any) -> None:
                opt.observe(loss=loss)
                on_val(opt)
            return Driver(opt, on_loss=on_loss, lr_fn=opt.effective_lr)
    with contextlib.redirect_stdout(io.StringIO()):
        result = train(task, Method(variant, lr, build), lr, seed)
    gate.close()
    return {"task": "lm", "variant": variant, "lr": lr, "seed": seed, "eval_loss": result.final_eval_loss,
            "pooled_steps": gate.pooled,
            "train_last50": statistics.fmean(result.losses[-50:]),
            "lrs": [result.lrs[i] for i in range(0, len(result.lrs), 50)]}


def _dev_optimizer(variant: str, model: Any, c: Any) -> Any:
    import torch

    from adaptiverl.optim import OnlineAdamW
    from adaptiverl.trainer.trainers import decay_parameter_groups

    _set_rules(variant)
    groups = decay_parameter_groups(model, 0.0)
    if variant in ("adamw", "anchor"):
        return torch.optim.AdamW(groups, lr=c.LRATE)
    if variant.startswith("online"):  # online_nohorizon: the callback does not tell it the horizon
        # online_noguard: the pretrained guard off (every tensor starts at the base lr, as on a fresh model)
        return OnlineAdamW(groups, lr=c.LRATE, **({"pretrained_start": 0.0} if "_noguard" in variant else {}))
    raise ValueError(f"unknown variant {variant!r}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("task", choices=[*GRPO_TASKS, "finetune", "scratch", "lm", *SUPERVISED_TASKS])
    parser.add_argument("--designs", nargs="+", default=["adamw_linear", "online"])
    parser.add_argument("--lrs", nargs="+", type=float, default=None, help="default: 1e-3 5e-5 (scratch: 1e-3)")
    parser.add_argument("--variants", nargs="+", default=["adamw", "online"])
    parser.add_argument("--factors", nargs="+", type=float, default=[0.1, 1.0, 10.0, 100.0])
    parser.add_argument("--steps", type=int, default=None, help="default: 40 (scratch: 150, glyphs_*/noisyreg: 300)")
    parser.add_argument("--pretrain-steps", type=int, default=0,
                        help="GRPO tasks: pre-train the tiny policy first, on DEV_LM_LIBRARIES' docstrings")
    parser.add_argument("--seeds", nargs="+", type=int, default=None, help="default: 0 (scratch: 0-9)")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    # per-task defaults, resolved once: a value given on the command line is always taken as given
    scratch = args.task == "scratch"
    if args.steps is None:
        args.steps = 150 if scratch else 300 if args.task in SUPERVISED_TASKS else 40
    if args.lrs is None:
        args.lrs = [1e-3] if scratch else [1e-3, 5e-5]
    if args.seeds is None:
        args.seeds = list(range(10)) if scratch else [0]
    from adaptiverl.tiny import build_tiny_gpt2
    from benchmarks.tasks import run_parallel

    if args.task == "scratch":
        jobs = [(d, s, lr, args.steps) for lr in args.lrs for s in args.seeds for d in args.designs]
        for record in run_parallel(scratch_run, jobs, args.workers):
            print(json.dumps(record), flush=True)
        return
    if args.task in SUPERVISED_TASKS:
        jobs = [(v, lr, args.task, args.steps, s) for lr in args.lrs for v in args.variants for s in args.seeds]
        for record in run_parallel(supervised_run, jobs, args.workers):
            print(json.dumps(record), flush=True)
        return
    if args.task == "lm":
        with tempfile.TemporaryDirectory(prefix="lm-dev-") as tmp:
            data_path = str(_lm_data(Path(tmp) / "lm.pt"))
            jobs = [(v, lr, data_path, args.steps, s) for lr in args.lrs for v in args.variants for s in args.seeds]
            for record in run_parallel(lm_run, jobs, args.workers):
                print(json.dumps(record), flush=True)
        return
    if args.task == "finetune":
        import torch

        from benchmarks.finetune_pretrained import build_data

        with tempfile.TemporaryDirectory(prefix="ft-dev-") as tmp:
            data_path = str(Path(tmp) / "data.pt")
            torch.save(build_data(DEV_FT_LIBRARIES, 150, 50), data_path)
            jobs = [(d, lr, data_path, args.steps, s) for lr in args.lrs for d in args.designs for s in args.seeds]
            for record in run_parallel(finetune_run, jobs, args.workers):
                print(json.dumps(record), flush=True)
        return
    with tempfile.TemporaryDirectory(prefix="rl-dev-") as tmp:
        model_dir = str(build_tiny_gpt2(Path(tmp) / "tiny"))
        if args.pretrain_steps > 0:  # a pre-trained policy, on other libraries' docstrings than any benchmark's
            from adaptiverl.tiny import pretrain

            loss = pretrain(model_dir, args.pretrain_steps, texts=_dev_lm_texts())
            print(json.dumps({"pretrained_steps": args.pretrain_steps, "pretrain_loss": loss}), flush=True)
        prompts = str(_prompts(Path(tmp) / "prompts.jsonl", GRPO_TASKS[args.task]["libraries"]))
        jobs = [(v, f, model_dir, prompts, args.steps, s, args.task) for f in args.factors
                for v in args.variants for s in args.seeds]
        for record in run_parallel(grpo_run, jobs, args.workers):
            print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
