"""CompositeReward: weighting, normalisation, clipping, None handling, schedules, trend weights,
error naming, logging and the async path."""

from __future__ import annotations

import asyncio
import math
import pickle
from types import SimpleNamespace

import pytest

from adaptiverl.rewards import (
    Component,
    CompositeReward,
    RewardComponentError,
    RewardFunction,
    build_rewards,
    completion_text,
)
from adaptiverl.rewards.composite import AsyncCompositeReward, RunningStats, WeightSchedule


def const(value):
    def reward(completions, **kwargs):
        return [value] * len(completions)

    reward.__name__ = f"const_{value}"
    return reward


def length_reward(completions, **kwargs):
    return [float(len(completion_text(c))) for c in completions]


def none_on_short(completions, **kwargs):
    return [None if len(c) < 3 else 1.0 for c in completions]


class Slow:
    __name__ = "slow"

    async def __call__(self, completions, **kwargs):
        await asyncio.sleep(0.01)
        return [0.5] * len(completions)


def test_weighted_sum_and_last_components():
    comp = CompositeReward([(const(1.0), 2.0), (length_reward, 0.5)])
    out = comp(prompts=["p", "p"], completions=["ab", "abcd"])
    assert out == [2.0 + 0.5 * 2, 2.0 + 0.5 * 4]
    assert comp.last_components == {"const_1.0": 1.0, "length_reward": 3.0}
    assert comp.last_weights == {"const_1.0": 2.0, "length_reward": 0.5}
    assert comp.__name__ == "composite"
    assert CompositeReward([const(1.0)], name="mix").__name__ == "mix"


def test_none_renormalises_over_answering_components():
    comp = CompositeReward([(none_on_short, 1.0), (const(0.0), 1.0)])
    # Sample 0: only const answered -> 0 * (2 / 1); sample 1: mean of both, rescaled to total weight.
    assert comp(completions=["ab", "abcd"]) == [0.0, 1.0]
    only_none = CompositeReward([none_on_short])
    assert only_none(completions=["a", "abcdef"]) == [None, 1.0]
    silent = CompositeReward([none_on_short])
    assert silent(completions=["a"]) == [None]
    assert math.isnan(silent.last_components["none_on_short"])


def test_zscore_normalisation_matches_running_statistics():
    comp = CompositeReward([length_reward], normalize="zscore")
    first = ["a", "abc"]
    out = comp(completions=first)
    # lengths 1, 3 -> mean 2, population std 1 -> z = -1, +1.
    assert out == pytest.approx([-1.0, 1.0], abs=1e-6)
    out2 = comp(completions=["abcdefg"])
    values = [1.0, 3.0, 7.0]
    mean = sum(values) / 3
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 3)
    assert out2[0] == pytest.approx((7.0 - mean) / std, rel=1e-6)


def test_running_stats_equal_batch_statistics():
    stats = RunningStats()
    data = [0.5, 2.0, -1.0, 4.0, 3.5, 0.0, 9.0]
    stats.update(data[:3])
    stats.update(data[3:4])
    stats.update(data[4:])
    mean = sum(data) / len(data)
    assert stats.mean == pytest.approx(mean)
    assert stats.variance == pytest.approx(sum((d - mean) ** 2 for d in data) / len(data))
    assert (stats.min, stats.max) == (-1.0, 9.0)


def test_minmax_and_clip():
    comp = CompositeReward([length_reward], normalize="minmax")
    assert comp(completions=["a", "abc", "ab"]) == [0.0, 1.0, 0.5]
    clipped = CompositeReward([length_reward], clip=2.0)
    assert clipped(completions=["a", "abcdef"]) == [1.0, 2.0]
    band = CompositeReward([length_reward], clip=(0.0, 1.5))
    assert band(completions=["", "abc"]) == [0.0, 1.5]
    with pytest.raises(ValueError, match="normalize"):
        CompositeReward([length_reward], normalize="rank")


def test_weight_schedule_from_trainer_state():
    sched = WeightSchedule([[0, 0.0], [10, 1.0], [20, 0.5]])
    assert [sched(s) for s in (-5, 0, 5, 10, 15, 30)] == [0.0, 0.0, 0.5, 1.0, 0.75, 0.5]
    ramp = WeightSchedule({"start": 1.0, "end": 3.0, "steps": 4, "begin": 2})
    assert [ramp(s) for s in (0, 2, 4, 6, 9)] == [1.0, 1.0, 2.0, 3.0, 3.0]
    comp = build_rewards([{"type": "length", "target": 1, "hard": True, "weight": 2.0,
                           "schedule": [[0, 0.0], [100, 1.0]]}])
    assert comp(completions=["a"], trainer_state=SimpleNamespace(global_step=0)) == [0.0]
    assert comp(completions=["a"], trainer_state=SimpleNamespace(global_step=50)) == [1.0]
    assert comp.last_weights == {"length": 1.0}
    with pytest.raises(ValueError, match="increase"):
        WeightSchedule([[5, 1.0], [5, 2.0]])


def test_trend_driven_weights_favour_the_stagnant_component():
    calls = {"n": 0}

    def improving(completions, **kwargs):
        return [1.0 + calls["n"]] * len(completions)

    def flat(completions, **kwargs):
        calls["n"] += 1
        return [1.0] * len(completions)

    comp = CompositeReward([improving, flat], trend_temperature=0.1)
    for _ in range(5):
        comp(completions=["x"])
    w = comp.last_weights
    assert w["flat"] > 1.0 > w["improving"] > 0
    assert w["flat"] + w["improving"] == pytest.approx(2.0)
    # Slope over spread: batch means 1..5 -> slope 1, population std of the samples sqrt(2).
    assert comp.scaled_trend(0) == pytest.approx(1 / math.sqrt(2), rel=1e-4)
    expected = 2 * math.exp(0) / (math.exp(0) + math.exp(-comp.scaled_trend(0) / 0.1))
    assert comp.weights(step=0)[1] == pytest.approx(expected)


def test_trend_weights_stay_finite_for_zero_mean_rewards():
    signs = iter([1.0, -1.0] * 50)

    def feedback(completions, **kwargs):
        return [next(signs) for _ in completions]

    def steady(completions, **kwargs):
        return [0.5] * len(completions)

    comp = CompositeReward([feedback, steady], trend_temperature=1.0)
    for _ in range(6):
        comp(completions=["a", "b"])  # every batch mean is exactly 0
    assert comp.last_weights == {"feedback": pytest.approx(1.0), "steady": pytest.approx(1.0)}


def test_component_error_names_component_and_sample():
    def picky(completions, **kwargs):
        if any("bad" in c for c in completions):
            raise KeyError("no bad please")
        return [1.0] * len(completions)

    comp = CompositeReward([const(1.0), picky])
    with pytest.raises(RewardComponentError, match=r"component 1 \('picky'\).*sample 2.*no bad please"):
        comp(completions=["ok", "fine", "bad", "ok"])
    lenient = CompositeReward([(const(1.0), 1.0), (picky, 1.0)], on_error="none")
    with pytest.warns(RuntimeWarning, match="sample 1"):
        out = lenient(completions=["ok", "bad"])
    assert out == [2.0, 2.0]  # sample 1 renormalised over the component that answered


def test_wrong_length_and_nonfinite_are_caught():
    def short(completions, **kwargs):
        return [1.0]

    def nan_reward(completions, **kwargs):
        return [1.0, float("nan")]

    with pytest.raises(RewardComponentError, match=r"component 0 \('short'\).*returned 1 values for 2"):
        CompositeReward([short])(completions=["a", "b"])
    with pytest.raises(RewardComponentError, match=r"'nan_reward'.*non-finite nan for sample 1"):
        CompositeReward([nan_reward])(completions=["a", "b"])
    with pytest.warns(RuntimeWarning, match="non-finite"):
        assert CompositeReward([nan_reward], on_error="none")(completions=["a", "b"]) == [1.0, None]


def test_log_metric_receives_component_means_and_weights():
    logged = {}
    comp = CompositeReward([(length_reward, 0.5), none_on_short])
    comp(completions=["ab", "abcd"], log_metric=lambda name, value: logged.__setitem__(name, value))
    assert logged == {"composite/length_reward/mean": 3.0, "composite/length_reward/weight": 0.5,
                      "composite/none_on_short/mean": 1.0, "composite/none_on_short/weight": 1.0}


def test_duplicate_names_are_made_unique_and_state_roundtrips():
    comp = CompositeReward([Component(length_reward), Component(length_reward, weight=2.0)],
                           normalize="zscore")
    comp(completions=["a", "abc"])
    assert list(comp.last_components) == ["length_reward", "length_reward_2"]
    clone = pickle.loads(pickle.dumps(comp))
    fresh = CompositeReward([length_reward, (length_reward, 2.0)], normalize="zscore")
    fresh.load_state_dict(comp.state_dict())
    assert clone(completions=["abcdef"]) == fresh(completions=["abcdef"]) == comp(completions=["abcdef"])


def test_async_components_in_a_plain_and_in_an_async_composite():
    from trl.trainer.utils import is_async_callable

    plain = CompositeReward([(Slow(), 2.0), length_reward])
    assert type(plain) is CompositeReward and not is_async_callable(plain)  # no class swap
    assert plain(completions=["ab"]) == [1.0 + 2.0]
    assert plain.last_components == {"slow": 0.5, "length_reward": 2.0}

    async def inside_a_running_loop():
        return plain(completions=["ab"])  # a blocking call from async code: its own loop, in a thread

    assert asyncio.run(inside_a_running_loop()) == [3.0]
    comp = AsyncCompositeReward([(Slow(), 2.0), length_reward])
    assert is_async_callable(comp)
    assert asyncio.run(comp(completions=["ab"])) == [1.0 + 2.0]
    assert comp.last_components == {"slow": 0.5, "length_reward": 2.0}
    assert isinstance(pickle.loads(pickle.dumps(comp)), AsyncCompositeReward)
    assert asyncio.run(AsyncCompositeReward([length_reward])(completions=["abc"])) == [3.0]


def test_huge_weights_combine_without_overflow_or_name_the_component():
    comp = CompositeReward([(const(1.0), 1e308), (const(0.5), 1e308)])
    assert comp(completions=["a"]) == [pytest.approx(1.5e308)]  # was NaN: inf * inf / inf
    assert comp.last_weights == {"const_1.0": 1e308, "const_0.5": 1e308}
    beyond = CompositeReward([(const(1.0), 1e308), (const(4.0), 1e308)])
    with pytest.raises(RewardComponentError, match=r"component 1 \('const_4.0'\).*sample 0 beyond the float"):
        beyond(completions=["a"])
    ramp = CompositeReward([Component(const(1.0), weight=1e308, schedule=lambda step: 10.0)])
    with pytest.raises(RewardComponentError, match=r"component 0 \('const_1.0'\).*effective weight inf"):
        ramp(completions=["a"])


def test_a_reward_returning_strings_is_refused_naming_it():
    def as_text(completions, **kwargs):
        return ["1.0"] * len(completions)

    with pytest.raises(RewardComponentError, match=r"component 1 \('as_text'\).*returned the str '1.0' for sample 0"):
        CompositeReward([const(1.0), as_text])(completions=["a"])

    class TextScore(RewardFunction):
        def score(self, prompts, completions, **kwargs):
            return [b"0.5"] * len(completions)

    with pytest.raises(TypeError, match=r"reward 'texty' returned the bytes b'0.5' for sample 0"):
        TextScore(name="texty")(completions=["a"])


def test_missing_dataset_column_is_a_configuration_error():
    from adaptiverl.rewards.text import SubstringReward

    def needs_answer(completions, **kwargs):
        from adaptiverl.rewards.base import dataset_column

        answers = dataset_column(kwargs, "answer", len(completions), "needs_answer")
        return [float(a in c) for a, c in zip(answers, completions, strict=True)]

    comp = CompositeReward([SubstringReward("x"), needs_answer], on_error="none")
    with pytest.raises(RewardComponentError,
                       match=r"component 1 \('needs_answer'\).*needs the dataset column 'answer'") as err:
        comp(completions=["x", "y"], reference=["a", "b"])
    assert "sample" not in str(err.value)
    assert comp(completions=["x", "y"], answer=["x", "q"]) == [2.0, 0.0]


@pytest.mark.parametrize("schedule", [[[0, math.nan]], [[0, 1.0], [10, math.inf]], {"start": 1.0, "end": math.nan, "steps": 5}])
def test_a_non_finite_schedule_multiplier_is_refused_naming_it(schedule):
    with pytest.raises(ValueError, match="schedule: steps and multipliers must be finite"):
        CompositeReward([Component(const(1.0), schedule=schedule)])
    with pytest.raises(ValueError, match=r"reward component 0 \(type 'length'\): schedule: .*finite"):
        build_rewards([{"type": "length", "target": 3, "schedule": schedule}])
