"""The applier shared by the Online optimizers: collect, finite check, one controller call, kernels.

See :mod:`adaptiverl.optim.online` for the user-facing classes and the math. Each algorithm only
supplies its name (its kernels are in :mod:`adaptiverl.optim._kernels`), its lazy state and its
base knob values. Shaped like ``torch.optim.AdamW``, one step is:

1. collect the parameters that have a gradient (:meth:`OnlineOptimizer._collect`);
2. the finite check (``finite_check``, :meth:`OnlineOptimizer._finite_check`): known on the host
   (the caller's grad norm), or a device flag; a non-finite gradient skips the whole step;
3. one call into the controller (:class:`adaptiverl.controllers.online.OnlineController`: per-tensor
   statistics from :mod:`adaptiverl.signals.tensor_stats`, the learning signal, the GRU, the
   knobs), which answers with device tensors (speculatively when the check's flag is pending);
4. one host sync (``tolist()`` of scales, knob values and the finiteness flags);
5. the algorithm's kernel with ``lr_i = group["lr"] * s_i`` and the group's knob values.

``state_dict()`` puts the parts' states together; ``dynamics()`` their figures
(:class:`adaptiverl.optim._online_dynamics.DynamicsReport`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from adaptiverl.controllers.gru import GRUController
from adaptiverl.controllers.online import (
    GROUP_TUNABLES,
    OnlineController,
    StepInputs,
)
from adaptiverl.controllers.policy_rules import pretrained_start_scales
from adaptiverl.optim._kernels import KERNELS, apply_update
from adaptiverl.optim._online_args import Adaptation
from adaptiverl.optim._online_dynamics import DynamicsReport
from adaptiverl.signals.stats import Signals, to_float
from adaptiverl.signals.tensor_stats import any_rank, is_sharded, local, squared_norm


class OnlineOptimizer(DynamicsReport, Optimizer):
    """Base class: a torch optimizer whose per-tensor lr and per-group knobs adapt online.

    Subclasses define ``ALGORITHM`` (their kernels in :mod:`adaptiverl.optim._kernels`), ``MEMORY``
    and ``STATE_KEYS`` (their per-parameter state), ``KNOBS`` (names of the group knobs, in the
    order of ``_base_knobs``), ``_init_state`` and ``_required_state``.

    Tunables that a param group may override (torch's habit: they live in ``defaults``):
    ``hypergrad_weight``, ``reward_weight``, ``explore_std``, ``knob_lr``, ``drift_gain``.
    The controller's structure is shared by every tensor and set once: ``controller``,
    ``hidden_size``, ``scale_bounds``, ``max_step_factor``, ``meta_lr``, ``snr_threshold``,
    ``feature_sample_size``, ``finite_check``, ``signal_beta`` / ``signal_window``, ``seed``.
    The controller itself is :attr:`online_controller`; :attr:`controller` is its network.
    """

    #: the update (:func:`adaptiverl.optim._kernels.apply_update`): algorithm and default fast kernel
    ALGORITHM = ""
    FAST_KERNEL = "multi_tensor"
    #: the state key of the algorithm's memory (momentum buffer, exp_avg) and every key it keeps
    MEMORY = ""
    STATE_KEYS: tuple[str, ...] = ()
    KNOBS: tuple[str, ...] = ()
    #: knobs driven by the grad-scale drift rule instead of a one-step hypergradient
    DRIFT_KNOBS: tuple[str, ...] = ()
    #: the tunables copied into ``defaults`` (so param groups may override them)
    GROUP_TUNABLES = GROUP_TUNABLES

    def __init__(self, params: Iterable[Any], defaults: dict[str, Any], *,
                 knob_bounds: dict[str, tuple[float, float]], **adaptation: Any) -> None:
        args = Adaptation.parse(type(self).__name__, adaptation)
        tunables = {k: float(getattr(args, k)) for k in GROUP_TUNABLES}
        super().__init__(params, {**defaults, **tunables})
        self.adapt = bool(args.adapt)
        self.finite_check = args.finite_check
        self.signals = Signals(beta=args.signal_beta, window=args.signal_window)
        self.online_controller = OnlineController(
            knobs=self.KNOBS, drift_knobs=self.DRIFT_KNOBS, knob_bounds=knob_bounds,
            knob_scale_bounds=args.knob_scale_bounds, adapt_knobs=args.adapt_knobs, kind=args.controller,
            hidden_size=args.hidden_size, scale_bounds=args.scale_bounds, max_step_factor=args.max_step_factor,
            meta_lr=args.meta_lr, snr_threshold=args.snr_threshold, feature_sample_size=args.feature_sample_size,
            seed=args.seed)
        self.pretrained_start = float(args.pretrained_start)
        self.skipped_steps = 0
        self.total_steps = None
        self.set_total_steps(args.total_steps)
        self._pending_grad_norm: float | None = None
        self._shard_reduce = False  # set when parameters are FSDP2 DTensor shards
        self._signals_fed = False
        self._warned_no_signals = False
        self._grad_norm_fed = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """The constructor's signature shows the adaptation arguments (``help``, ``inspect``)."""
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:
            cls.__init__.__signature__ = Adaptation.signature(cls.__init__)  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ API
    @property
    def controller(self) -> GRUController:
        """The controller's network (weights: ``opt.controller.state_dict()``)."""
        return self.online_controller.network

    @property
    def generator(self) -> torch.Generator:
        """The exploration noise's generator (saved in ``state_dict``)."""
        return self.online_controller.generator

    def set_total_steps(self, total_steps: int | None) -> None:
        """The training horizon in optimizer steps (``None``: unknown, no schedule).

        The controller reads the fraction of training done and applies its horizon schedule;
        :class:`adaptiverl.trainer.AdaptiveCallback` sets this from the trainer's ``max_steps``.
        """
        if total_steps is not None and (isinstance(total_steps, bool) or not isinstance(total_steps, int)
                                        or total_steps < 1):
            raise ValueError(f"{type(self).__name__}: total_steps must be an int >= 1 or None, "
                             f"got {total_steps!r}")
        self.total_steps = total_steps

    @property
    def progress(self) -> float | None:
        """Fraction of ``total_steps`` done (``None`` when the horizon is unknown)."""
        return self.online_controller.progress(self.total_steps)

    def observe(self, loss: Any = None, reward: Any = None, **metrics: Any) -> dict[str, bool]:
        """Feed scalar signals (floats or 0-d tensors); non-finite ones are ignored with one warning.

        ``grad_norm`` (the total gradient norm the caller already computed, e.g. the HF
        Trainer's for clipping) also serves as the finite check of the next step under
        ``finite_check="auto"``: a non-finite value skips that step.
        """
        if "grad_norm" in metrics and metrics["grad_norm"] is not None:
            self._pending_grad_norm = to_float(metrics["grad_norm"], "grad_norm")
            self._grad_norm_fed = True
        accepted = self.signals.observe(loss=loss, reward=reward, **metrics)
        if loss is not None or reward is not None:
            self._signals_fed = True
        return accepted

    # Seed names (AdaptiveRL front end).
    def step_loss(self, loss: Any) -> None:
        self.observe(loss=loss)

    def step_reward(self, reward: Any) -> None:
        self.observe(reward=reward)

    # ------------------------------------------------------- subclass hooks
    def _base_knobs(self, group: dict[str, Any]) -> list[float]:
        raise NotImplementedError

    def _init_state(self, p: Tensor, group: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _memory(self, state: dict[str, Any]) -> Tensor | None:
        """The buffer the features read as the algorithm's memory (``None`` before it exists)."""
        return state.get(self.MEMORY)

    def _required_state(self, group: dict[str, Any]) -> tuple[str, ...]:
        """The per-parameter state keys the kernels need in ``group``."""
        return ()

    def _kernel_fast(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                     states: list[dict[str, Any]], lrs: list[float], knobs: dict[str, float]) -> None:
        """The group's fast kernel: ``fused=True`` / ``foreach=True`` pick torch's kind, else ``FAST_KERNEL``."""
        impl = self.FAST_KERNEL
        if group.get("fused") and (self.ALGORITHM, "fused") in KERNELS:
            impl = "fused"
        elif group.get("foreach") or group.get("fused"):
            impl = "multi_tensor"
        apply_update(self.ALGORITHM, impl, params, grads, states, lrs=lrs, knobs=knobs, group=group)

    def _kernel_reference(self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor],
                          states: list[dict[str, Any]], lrs: list[float], knobs: dict[str, float]) -> None:
        """The readable single-tensor kernel (tested equal to the fast ones)."""
        apply_update(self.ALGORITHM, "single_tensor", params, grads, states, lrs=lrs, knobs=knobs, group=group)

    def _use_reference(self, group: dict[str, Any]) -> bool:
        """The single-tensor kernel: asked for (``foreach=False`` / ``fused=False``), or half
        precision on the CPU, where torch's fused CPU kernels are not reliable (non-finite
        output from finite fp16 input was seen) and the reference is exact and deterministic."""
        if group.get("foreach") is False or group.get("fused") is False:
            return True
        return any(p.device.type == "cpu" and p.dtype in (torch.float16, torch.bfloat16)
                   for p in group["params"])

    # ------------------------------------------------------------ rows
    def _all_params(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def _prepare_controller(self, device: torch.device) -> OnlineController:
        """The controller with one row per parameter tensor (after ``add_param_group`` too)."""
        params = self._all_params()
        online = self.online_controller
        if not online.ready(len(params)):
            self._shard_reduce = is_sharded(params)
            groups = [gi for gi, g in enumerate(self.param_groups) for _ in g["params"]]
            start = None
            new_rows = online.state is None or online.state.num_rows != len(params)
            if new_rows and self.pretrained_start > 0 and not self._shard_reduce:
                lrs = [float(g["lr"]) for g in self.param_groups for _ in g["params"]]
                start = pretrained_start_scales(params, lrs, self.pretrained_start)
            online.prepare(params, groups, device, self._shard_reduce, start)
        return online

    # ------------------------------------------------------------ step
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One optimisation step (see the module docstring for the order of work)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        batch = self._collect()
        grad_norm, self._pending_grad_norm = self._pending_grad_norm, None
        if not batch["params"]:
            return loss
        decided = self._decide(batch, self._finite_check(batch, grad_norm))
        if decided is None:
            return self._skip(loss)
        self._apply(batch, *decided)
        return loss

    def _decide(self, batch: dict[str, Any], verdict: bool | Tensor
                ) -> tuple[list[float], list[list[float]]] | None:
        """Per-tensor scales and per-group knob values for this step; ``None``: skip it."""
        if verdict is False:
            return None
        bad = verdict if isinstance(verdict, Tensor) else None
        if self.adapt:
            self._warn_if_unfed()
            return self._adapt(batch, bad)
        if bad is not None and bool(bad.item()):
            return None
        return [1.0] * len(batch["params"]), [self._base_knobs(g) for g in self.param_groups]

    def _apply(self, batch: dict[str, Any], scales: list[float], knob_values: list[list[float]]) -> None:
        """Each group's kernel with ``lr_i = group["lr"] * s_i`` and the group's knob values."""
        for group, params, states in zip(self.param_groups, batch["by_group"], batch["states"], strict=True):
            for p, state in zip(params, states, strict=True):
                if not state:
                    state.update(self._init_state(p, group))
        offset = 0
        for gi, (group, params, grads, states) in enumerate(
                zip(self.param_groups, batch["by_group"], batch["grads_by_group"], batch["states"],
                    strict=True)):
            n = len(params)
            if n == 0:
                continue
            base_lr = float(group["lr"])  # a Tensor lr (torch accepts one) becomes a float once
            lrs = [base_lr * s for s in scales[offset:offset + n]]
            offset += n
            knobs = dict(zip(self.KNOBS, knob_values[gi], strict=True))
            kernel = self._kernel_reference if self._use_reference(group) else self._kernel_fast
            if self._shard_reduce:  # element-wise updates: each rank steps the shard it owns
                local_states = [{k: local(v) if isinstance(v, Tensor) else v for k, v in st.items()}
                                for st in states]
                kernel(group, [local(p) for p in params], [local(g) for g in grads], local_states, lrs, knobs)
                for st, shard in zip(states, local_states, strict=True):
                    st.update({k: v for k, v in shard.items() if k not in st or st[k] is None})
            else:
                kernel(group, params, grads, states, lrs, knobs)

    def _skip(self, loss: Any) -> Any:
        self.skipped_steps += 1
        warnings.warn(
            f"{type(self).__name__}: non-finite gradient, step skipped (parameters, optimizer "
            f"and controller state unchanged; {self.skipped_steps} skipped so far)",
            RuntimeWarning, stacklevel=4)
        return loss

    def _warn_if_unfed(self) -> None:
        if self._signals_fed or self._warned_no_signals:
            return
        steps = self.online_controller.steps
        if steps >= 1:
            self._warned_no_signals = True
            if self._grad_norm_fed:  # a trainer feeds us (AdaptiveCallback): its loss comes with its logs
                how = ("a gradient norm is fed each step but no loss yet: a stock HF/TRL trainer hands "
                       "AdaptiveCallback its loss only at logging steps, so set `logging_steps=1` (or use "
                       "adaptiverl.trainer's Adaptive*Trainer, which feeds every step's loss).")
            else:
                how = ("call `optimizer.observe(loss=...)` each step, or train with "
                       "`callbacks=[AdaptiveCallback()]` (adaptiverl.trainer).")
            warnings.warn(f"{type(self).__name__}: no loss or reward has been observed; the step scales "
                          f"adapt from gradients alone: {how}", UserWarning, stacklevel=4)

    def _collect(self) -> dict[str, Any]:
        params: list[Tensor] = []
        grads: list[Tensor] = []
        rows: list[int] = []
        by_group: list[list[Tensor]] = []
        grads_by_group: list[list[Tensor]] = []
        states: list[list[dict[str, Any]]] = []
        row = 0
        state = self.state
        for group in self.param_groups:
            gp, gg, gs = [], [], []
            for p in group["params"]:
                grad = p.grad
                if grad is not None:
                    if grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    if p.is_complex():
                        raise RuntimeError(f"{type(self).__name__} does not support complex parameters")
                    gp.append(p)
                    gg.append(grad)
                    gs.append(state[p])
                    rows.append(row)
                row += 1
            by_group.append(gp)
            grads_by_group.append(gg)
            states.append(gs)
            params.extend(gp)
            grads.extend(gg)
        return {"params": params, "grads": grads, "rows": rows, "by_group": by_group,
                "grads_by_group": grads_by_group, "states": states,
                "local_params": [local(p) for p in params], "local_grads": [local(g) for g in grads]}

    def _finite_check(self, batch: dict[str, Any], grad_norm: float | None) -> bool | Tensor:
        """``True`` / ``False`` when known on the host, else a device flag (1,), > 0 for a
        non-finite gradient on any rank, read with the step's one host sync.

        ``auto``: the observed grad norm when one was given for this step (free: the caller
        already reduced every element), else ``full``: one read of every gradient
        (:func:`squared_norm`), so a step is taken exactly when the total squared gradient norm
        is finite in float32 (a non-finite element, or a norm beyond ~1.8e19 whose square
        overflows, skips it: such a step would overflow the momentum and the controller's
        statistics); ``sample``: the feature sample only."""
        mode = self.finite_check
        if mode == "off":
            return True
        if mode == "auto":
            if grad_norm is not None:
                return math.isfinite(grad_norm)
            mode = "full"
        grads = batch["local_grads"]
        device = grads[0].device
        if mode == "full":
            found = ~torch.isfinite(squared_norm(grads, device))
        else:
            sample = self._prepare_controller(device).sample_gradients(grads, batch["rows"], device)
            batch["G_sample"] = sample
            found = (~torch.isfinite(sample)).any()
        return any_rank(found.float().reshape(1), self._shard_reduce)

    # ------------------------------------------------------- adaptation
    def _adapt(self, batch: dict[str, Any], bad: Tensor | None) -> tuple[list[float], list[list[float]]] | None:
        """One call into the controller and one host sync; ``None``: skip the step.

        With ``bad`` (the finite check's device flag) the controller steps speculatively and is
        rolled back when the flag reads non-finite in the same sync. A non-finite controller is
        reset (scales 1)."""
        online = self._prepare_controller(batch["grads"][0].device)
        groups = self.param_groups
        inputs = StepInputs(
            rows=batch["rows"], grads=batch["local_grads"], params=batch["local_params"],
            memories=[self._memory(s) if s else None for states in batch["states"] for s in states],
            maximize=[bool(g["maximize"]) for g in groups],
            tunables=tuple(tuple(float(g[k]) for k in self.GROUP_TUNABLES) for g in groups),
            base_knobs=[self._base_knobs(g) for g in groups], progress=self.progress,
            grad_sample=batch.get("G_sample"))
        undo = online.snapshot() if bad is not None else None
        out = online(self.signals, inputs)
        flags = [out.finite.double().reshape(1)] + ([] if bad is None else [bad.double()])
        packed = torch.cat([out.log_scales.exp().double(), out.knobs.flatten(), *flags]).tolist()
        if bad is not None and packed.pop() != 0.0:  # the finite check's flag, last in the sync
            online.restore(undo)
            return None
        n = len(inputs.rows)
        scales, flat, ok = packed[:n], packed[n:-1], packed[-1] == 1.0
        if not ok:
            online.recover()
            warnings.warn(f"{type(self).__name__}: the controller state became non-finite; it was reset "
                          f"to its initial weights and scales 1 ({online.resets} resets so far)",
                          RuntimeWarning, stacklevel=4)
            scales = [1.0] * n
        nk = len(self.KNOBS)
        knobs = [flat[i * nk:(i + 1) * nk] for i in range(len(groups))]
        online.record(scales, knobs, all_rows=n == online.state.num_rows)
        return scales, knobs

    # ------------------------------------------------------------ persistence
    def __getstate__(self) -> dict[str, Any]:
        """Everything but torch's hooks: torch keeps only ``defaults``, ``state`` and
        ``param_groups``, and a copy without its controller and signals could not step.
        ``copy.deepcopy((model, opt))`` and pickling continue exactly like the original."""
        state = super().__getstate__()
        state.update({k: v for k, v in self.__dict__.items() if k not in state and not k.startswith("_optimizer_")})
        return state

    def state_dict(self) -> dict[str, Any]:
        out = super().state_dict()
        online = self.online_controller.state_dict()
        out["online"] = {
            "controller": online["controller"],
            "ctl": online["ctl"],
            "signals": self.signals.state_dict(),
            "generator": online["generator"],
            "skipped_steps": self.skipped_steps,
            "controller_resets": online["controller_resets"],
            "total_steps": self.total_steps,
            "class": type(self).__name__,
            "algorithm": self.ALGORITHM,
        }
        return out

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads this class's state dicts and torch's optimizer of the same algorithm (e.g. a
        ``torch.optim.AdamW`` one into :class:`OnlineAdamW`: the moments and step counts carry over,
        the adaptation tunables take this optimizer's defaults, the controller starts fresh).
        Anything else is refused here, naming both classes, before anything changes."""
        state_dict = dict(state_dict)
        online = state_dict.pop("online", None)
        self._check_loadable(state_dict, online)
        super().load_state_dict(state_dict)
        for group in self.param_groups:  # a torch optimizer's groups lack the adaptation tunables
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if online is None:
            return
        self.signals.load_state_dict(online["signals"])
        self.skipped_steps = online["skipped_steps"]
        if online.get("total_steps") is not None:
            self.set_total_steps(online["total_steps"])
        self._signals_fed = self._signals_fed or self.signals.loss.count > 0 or self.signals.reward.count > 0
        params = self._all_params()
        self.online_controller.load_state_dict(online, device=params[0].device if params else None)

    def _check_loadable(self, state_dict: dict[str, Any], online: dict[str, Any] | None) -> None:
        name = type(self).__name__
        saved_state = [s for s in state_dict.get("state", {}).values() if s]
        keys = set().union(*(set(s) for s in saved_state)) if saved_state else set()
        source = _saved_by(keys, online)
        ctl = online.get("ctl") if online else None
        other_algorithm = online is not None and online.get("algorithm", self.ALGORITHM) != self.ALGORITHM
        if other_algorithm or (ctl is not None and ctl["knob_log_mult"].shape[1] != len(self.KNOBS)):
            raise ValueError(f"{name}.load_state_dict: the state dict was saved by {source}, another "
                             f"algorithm; build a {source} to resume it, or start {name} without it")
        groups = state_dict.get("param_groups", [])
        saved_groups = {i: g for g in groups for i in g.get("params", [])}
        for index, state in state_dict.get("state", {}).items():
            if not state:
                continue
            required = self._required_state({**self.defaults, **saved_groups.get(index, {})})
            if any(k not in state for k in required) or not set(state) & set(self.STATE_KEYS):
                raise ValueError(f"{name}.load_state_dict: the state dict was saved by {source}, whose "
                                 f"per-parameter state ({', '.join(sorted(state))}) does not carry over to "
                                 f"{name} (needs {', '.join(required or self.STATE_KEYS)})")


def _saved_by(keys: set[str], online: dict[str, Any] | None) -> str:
    """The class a state dict most likely came from (recorded since the controller moved; else
    from its per-parameter state keys)."""
    if online is not None and online.get("class"):
        return str(online["class"])
    for key, algorithm in (("exp_avg", "AdamW"), ("square_avg", "RMSprop"), ("momentum_buffer", "SGD")):
        if key in keys:
            online_name = {"RMSprop": "OnlineRMSProp"}.get(algorithm, "Online" + algorithm)
            return online_name if online is not None else "torch.optim." + algorithm
    return "another optimizer"
