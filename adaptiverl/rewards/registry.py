"""Reward registry: names, dotted import paths and JSON specs -> reward functions.

A spec is what ``train.py``'s ``REWARDS`` list holds::

    {"type": "regex", "pattern": r"\\d+", "weight": 0.5}

``type`` is a registered name (built-ins below, or a user's ``@register_reward("name")``, whose
module ``train.py``'s ``reward_modules`` imports), a function in a local file
(``"myrewards.py:my_reward"``; ``train.py`` reads the path relative to the config file), or a
dotted import path (``"my_pkg.rewards:my_reward"`` or ``"my_pkg.rewards.my_reward"``). The other
keys are the reward's constructor arguments (for a class) or extra keyword arguments bound with
``functools.partial`` (for a function); ``weight`` (and ``schedule``) belong to the composite.
Every validation error names the component index, its type and the bad key.

A dotted path or a file imports its module (running that module's code, as any import does), and may name
only a reward: a subclass of :class:`~adaptiverl.rewards.base.RewardFunction` (constructed from
the spec) or a callable that is not a class and takes a parameter named ``completions`` (a
reward function, or a reward object). Anything else (``subprocess:Popen``, ``os:system``, a
module) is refused before anything is called: a config cannot construct an arbitrary class with
its keys. Registering a name with :func:`register_reward` is how a user opts a factory of any
other kind in.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.util
import inspect
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from adaptiverl.rewards.base import RewardFunction

# Built-ins resolve lazily so that `import adaptiverl.rewards` pulls in neither
# sentence-transformers nor transformers nor httpx.
_BUILTINS: dict[str, str] = {
    "regex": "adaptiverl.rewards.text:RegexReward",
    "substring": "adaptiverl.rewards.text:SubstringReward",
    "length": "adaptiverl.rewards.text:LengthReward",
    "cosine": "adaptiverl.rewards.cosine:CosineReward",
    "learned": "adaptiverl.rewards.learned:ClassifierReward",
    "judge": "adaptiverl.rewards.judge:LocalJudgeReward",
    "http_judge": "adaptiverl.rewards.judge:HTTPJudgeReward",
    "human": "adaptiverl.rewards.human:HumanFeedbackReward",
}
_REGISTRY: dict[str, Callable[..., Any]] = {}

#: Spec keys that configure the composite, not the component.
COMPOSITE_KEYS = frozenset({"weight", "schedule"})


class RewardSpecError(ValueError):
    """A reward spec that cannot be built; the message names the component and the key."""


def register_reward(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make a reward function (or a reward class/factory) available as ``{"type": name}``.

    >>> @register_reward("ends_with_period")
    ... def ends_with_period(completions, **kwargs):
    ...     return [1.0 if c.strip().endswith(".") else 0.0 for c in completions]
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_reward needs a non-empty name, got {name!r}")

    def decorate(obj: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(obj):
            raise TypeError(f"register_reward({name!r}) decorates a callable, got {type(obj).__name__}")
        if name in _BUILTINS or (name in _REGISTRY and _REGISTRY[name] is not obj):
            raise ValueError(f"a reward named {name!r} is already registered; choose another name")
        _REGISTRY[name] = obj
        return obj

    return decorate


def registered_rewards() -> list[str]:
    """Names usable as ``type`` in a spec."""
    return sorted({*_BUILTINS, *_REGISTRY})


def _import_path(path: str) -> Any:
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"{path!r} is not a dotted path to a reward")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def split_file_reference(name: str) -> tuple[str, str] | None:
    """``("path/rewards.py", "fn")`` for a reward written ``"path/rewards.py:fn"``, else None."""
    path, sep, attr = name.rpartition(":")
    if sep and path.endswith(".py") and attr:
        return path, attr
    return None


def import_reward_module(name: str) -> Any:
    """Import a local Python file (``"myrewards.py"``, relative to the working directory) or a module
    by name (``"my_pkg.rewards"``), running its ``@register_reward`` decorators.

    A file is imported once per process, under a module name made from its path (so a user's
    ``random.py`` or ``rewards.py`` shadows nothing); the second import of the same file is the
    module already loaded.
    """
    if not name.endswith(".py"):
        try:
            return importlib.import_module(name)
        except ImportError as exc:
            raise RewardSpecError(f"cannot import module {name!r} ({exc}); give a file path such as "
                                  "'myrewards.py' (relative to the config file) or install the module") from None
    path = Path(name).expanduser().resolve()
    if not path.is_file():
        raise RewardSpecError(f"reward file not found: {path}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:12]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_adaptiverl_file_{stem}_{digest}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise RewardSpecError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    return module


def _takes_completions(obj: Any) -> bool:
    try:
        param = inspect.signature(obj).parameters.get("completions")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


def check_dotted_reward(path: str, obj: Any) -> Callable[..., Any]:
    """``obj`` (found at dotted path ``path``) if it is a reward class or a reward function (see
    the module docstring); a :class:`RewardSpecError` otherwise. Calls nothing."""
    opt_in = ("; to build anything else from a spec, register a factory for it with "
              "@adaptiverl.rewards.register_reward('name') and use that name")
    if inspect.isclass(obj):
        if issubclass(obj, RewardFunction):
            return obj
        raise RewardSpecError(f"{path!r} names the class {obj.__module__}.{obj.__qualname__}, not a reward "
                              "class: a dotted path may only construct a subclass of "
                              f"adaptiverl.rewards.RewardFunction{opt_in}")
    if callable(obj) and _takes_completions(obj):
        return obj
    qualname = getattr(obj, "__qualname__", None)
    kind = ("a module" if inspect.ismodule(obj) else
            f"the {type(obj).__name__} {qualname!r}" if qualname else f"a {type(obj).__name__}")
    raise RewardSpecError(f"{path!r} names {kind}, not a reward function: a dotted path may name a callable "
                          f"with a parameter 'completions' (fn(prompts, completions, **kwargs)){opt_in}")


def resolve_reward(name: str) -> Callable[..., Any]:
    """The registered object for ``name``, or the reward at dotted path ``name`` (refused unless it
    is a reward class or function, see :func:`check_dotted_reward`)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    if name in _BUILTINS:
        return _import_path(_BUILTINS[name])
    reference = split_file_reference(name)
    if reference is not None:
        module = import_reward_module(reference[0])
        obj = getattr(module, reference[1], None)
        if obj is None:
            raise RewardSpecError(f"{reference[0]} defines no {reference[1]!r}")
        return check_dotted_reward(name, obj)
    if "." in name or ":" in name:
        try:
            obj = _import_path(name)
        except (ImportError, AttributeError) as exc:
            local = (f"; a function in a local file is written '{name.partition(':')[0]}.py:"
                     f"{name.partition(':')[2] or 'function'}' (relative to the config file), without "
                     "setting PYTHONPATH" if isinstance(exc, ModuleNotFoundError) else "")
            raise RewardSpecError(f"cannot import reward {name!r}: {exc}{local}") from exc
        return check_dotted_reward(name, obj)
    raise RewardSpecError(f"unknown reward type {name!r}; registered: {', '.join(registered_rewards())}. "
                          "A reward in a local file: 'myrewards.py:my_reward' (relative to the config "
                          "file), or list the file that registers the name in reward_modules "
                          "(REWARD_MODULES); an installed module: 'my_pkg.rewards:my_reward'")


def _is_factory(obj: Any) -> bool:
    """Classes are constructed from the spec; plain functions are reward functions themselves."""
    return inspect.isclass(obj)


def _check_params(target: Callable[..., Any], params: dict[str, Any], where: str) -> None:
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return
    # A reward function's **kwargs receive TRL's dataset columns, so a spec may only bind the
    # function's named parameters; a class may forward **kwargs to its own constructor.
    accepts_any = _is_factory(target) and any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    named = {n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    if not _is_factory(target):
        named -= {"prompts", "completions", "completion_ids"}
    if not accepts_any:
        unknown = sorted(set(params) - named)
        if unknown:
            raise RewardSpecError(f"{where}: unknown key {unknown[0]!r}; accepted keys: "
                                  f"{', '.join(sorted(named - {'self'})) or '(none)'}")


def build_reward(spec: dict[str, Any] | str | Callable[..., Any], *, index: int | None = None) -> Callable[..., Any]:
    """One reward function from a spec dict, a registered name / dotted path, or a callable.

    Composite-only keys (``weight``, ``schedule``) are ignored here; :func:`build_rewards` reads them.
    """
    where_prefix = f"reward component {index}" if index is not None else "reward"
    if callable(spec) and not isinstance(spec, str):
        return spec
    if isinstance(spec, str):
        spec = {"type": spec}
    if not isinstance(spec, dict):
        raise RewardSpecError(f"{where_prefix}: a spec must be a dict, a name or a callable, "
                              f"got {type(spec).__name__}")
    if "type" not in spec:
        raise RewardSpecError(f"{where_prefix}: missing key 'type' in {sorted(spec)}; "
                              f"registered types: {', '.join(registered_rewards())}")
    type_name = spec["type"]
    where = f"{where_prefix} (type {type_name!r})"
    if not isinstance(type_name, str):
        raise RewardSpecError(f"{where}: 'type' must be a string")
    try:
        target = resolve_reward(type_name)
    except RewardSpecError as exc:
        raise RewardSpecError(f"{where}: {exc}") from None
    params = {k: v for k, v in spec.items() if k != "type" and k not in COMPOSITE_KEYS}
    _check_params(target, params, where)
    try:
        if _is_factory(target):
            return target(**params)
        if params:
            return functools.partial(target, **params)
        return target
    except RewardSpecError:
        raise
    except (TypeError, ValueError, KeyError, FileNotFoundError, OSError) as exc:
        raise RewardSpecError(f"{where}: {exc}") from exc


def build_rewards(specs: list[Any], **composite_kwargs: Any):
    """A :class:`~adaptiverl.rewards.composite.CompositeReward` from a list of specs, or an
    :class:`~adaptiverl.rewards.composite.AsyncCompositeReward` when a component is async (an LM
    judge), so that TRL awaits it alongside its other async rewards.

    Each spec's ``weight`` (default 1.0) and optional ``schedule`` (see ``CompositeReward``) are
    taken here; ``composite_kwargs`` go to ``CompositeReward`` (``normalize``, ``clip``, ...).
    """
    from adaptiverl.rewards.composite import (
        AsyncCompositeReward,
        Component,
        CompositeReward,
        is_async,
    )

    if not isinstance(specs, (list, tuple)) or not specs:
        raise RewardSpecError(f"REWARDS must be a non-empty list of reward specs, got {specs!r}")
    components = []
    for i, spec in enumerate(specs):
        fn = build_reward(spec, index=i)
        weight: Any = 1.0
        schedule = None
        if isinstance(spec, dict):
            weight = spec.get("weight", 1.0)
            schedule = spec.get("schedule")
            if isinstance(weight, bool) or not isinstance(weight, (int, float)):
                raise RewardSpecError(f"reward component {i} (type {spec.get('type')!r}): key 'weight' "
                                      f"must be a number, got {weight!r}")
        try:
            components.append(Component(fn, weight=float(weight), schedule=schedule))
        except ValueError as exc:
            type_name = spec.get("type") if isinstance(spec, dict) else default_type(spec)
            raise RewardSpecError(f"reward component {i} (type {type_name!r}): {exc}") from exc
    cls = AsyncCompositeReward if any(is_async(c.fn) for c in components) else CompositeReward
    return cls(components, **composite_kwargs)


def default_type(spec: Any) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "__name__", type(spec).__name__)
