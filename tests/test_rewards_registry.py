"""What a reward spec may build: registered rewards, and dotted paths to reward functions or
reward classes; nothing else is called, not even at config validation."""

from __future__ import annotations

import json
import subprocess

import pytest

from adaptiverl.rewards import (
    RewardFunction,
    RewardSpecError,
    build_reward,
    build_rewards,
    register_reward,
)
from adaptiverl.trainer.config import ConfigError, parse_config


class RecordingPopen(subprocess.Popen):
    """Stands in for ``subprocess.Popen``: records a construction instead of starting a process."""

    calls: list[dict] = []

    def __init__(self, *args, **kwargs) -> None:
        RecordingPopen.calls.append({"args": args, "kwargs": kwargs})
        self.args, self.returncode = args, 0


@pytest.fixture
def popen_calls(monkeypatch):
    RecordingPopen.calls = []
    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    return RecordingPopen.calls


class Shout(RewardFunction):
    """A user's reward class built on ours: a dotted path may construct it."""

    default_name = "shout"

    def __init__(self, bonus: float = 1.0, name: str | None = None) -> None:
        super().__init__(name)
        self.bonus = bonus

    def score(self, prompts, completions, **kwargs):
        return [self.bonus if c.isupper() else 0.0 for c in completions]


def ends_with_question(prompts, completions, **kwargs):
    return [1.0 if c.endswith("?") else 0.0 for c in completions]


SHOUT_INSTANCE = Shout(bonus=3.0, name="loud")


def test_a_config_cannot_start_a_process_at_validation(tmp_path, popen_calls):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "hi"}) + "\n")
    raw = {"MODEL": "gpt2", "TRAIN_FILE": str(prompts),
           "REWARDS": [{"type": "length", "target": 10},
                       {"type": "subprocess:Popen", "args": ["touch", str(tmp_path / "pwned")]}]}
    with pytest.raises(ConfigError, match=r"REWARDS.*component 1 \(type 'subprocess:Popen'\).*not a reward class"):
        parse_config(raw, check_hardware=False)
    assert popen_calls == []
    with pytest.raises(RewardSpecError, match=r"subprocess\.Popen.*not a reward class"):
        build_rewards([{"type": "subprocess.Popen", "args": ["touch", "pwned"]}])
    assert popen_calls == [] and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("path", "why"), [
    ("io:FileIO", "not a reward class"),          # a class whose constructor creates a file
    ("subprocess:run", "not a reward function"),   # a function, but not of (prompts, completions)
    ("subprocess:check_output", "not a reward function"),
    ("os:system", "not a reward function"),        # a builtin
    ("builtins:eval", "not a reward function"),
    ("os.path", "not a reward function"),          # a module
    ("adaptiverl.optim:OnlineAdamW", "not a reward class"),  # ours, but no reward
])
def test_dotted_paths_to_anything_but_a_reward_are_refused_before_a_call(tmp_path, path, why):
    target = tmp_path / "created-by-the-spec"
    spec = {"type": path, "file": str(target), "mode": "w"} if path == "io:FileIO" else {"type": path}
    with pytest.raises(RewardSpecError, match=rf"reward component 0 \(type '{path}'\): .*{why}") as err:
        build_rewards([spec])
    assert "register_reward" in str(err.value)  # how to build something else on purpose
    assert not target.exists()


def test_dotted_paths_to_rewards_still_build():
    by_class = build_reward({"type": f"{__name__}:Shout", "bonus": 2.0})
    assert isinstance(by_class, Shout) and by_class(completions=["HI", "hi"]) == [2.0, 0.0]
    ours = build_reward({"type": "adaptiverl.rewards.text:RegexReward", "pattern": "a"})
    assert ours(completions=["a", "b"]) == [1.0, 0.0]
    fn = build_reward(f"{__name__}.ends_with_question")
    assert fn(prompts=["p"], completions=["why?"]) == [1.0]
    instance = build_reward(f"{__name__}:SHOUT_INSTANCE")
    assert instance is SHOUT_INSTANCE and instance(completions=["OK"]) == [3.0]


def test_registered_factories_of_any_kind_are_the_users_choice():
    @register_reward("test_registry_plain_factory")
    class PlainFactory:  # not a RewardFunction: registering it is the explicit opt-in
        def __init__(self, bonus: float) -> None:
            self.bonus, self.__name__ = bonus, "plain"

        def __call__(self, completions, **kwargs):
            return [self.bonus for _ in completions]

    built = build_reward({"type": "test_registry_plain_factory", "bonus": 0.5})
    assert isinstance(built, PlainFactory) and built(completions=["x"]) == [0.5]
