"""Reward contract, registry/specs, and the rule-based rewards (regex, substring, length)."""

from __future__ import annotations

import json
import pickle
import time

import pytest

from adaptiverl.rewards import (
    RewardSpecError,
    build_reward,
    build_rewards,
    completion_text,
    register_reward,
    registered_rewards,
)
from adaptiverl.rewards.text import MIN_MATCH_SECONDS, LengthReward, RegexReward, SubstringReward

CONV = [[{"role": "assistant", "content": "The answer is 42."}],
        [{"role": "assistant", "content": [{"type": "text", "text": "no number here"}]}]]


def test_completion_text_plain_and_conversational():
    assert completion_text("abc") == "abc"
    assert completion_text(CONV[0]) == "The answer is 42."
    assert completion_text(CONV[1]) == "no number here"
    with pytest.raises(TypeError, match="completion is int, not a string or a list of messages"):
        completion_text(42)


BAD_COMPLETIONS = {
    "bytes": (b"The answer is 42.", r"completion 1 is bytes.*string or a list of messages"),
    "bytearray": (bytearray(b"42"), r"completion 1 is bytearray"),
    "nested list": ([["The answer is 42."]], r"completion 1: message 0 is list, not a dict"),
    "nested conversation": ([[{"role": "assistant", "content": "42"}]], r"completion 1: message 0 is list"),
    "dict without content": ({"text": "The answer is 42."}, r"completion 1: message without 'content'.*'text'"),
    "message without content": ([{"role": "assistant", "text": "42"}], r"completion 1: message 0 without 'content'"),
    "bytes content": ([{"role": "assistant", "content": b"42"}], r"completion 1: message 0: content is bytes"),
    "bytes part": ([{"role": "assistant", "content": [b"42"]}], r"completion 1: message 0: content part 0 is bytes"),
    "number": (42, r"completion 1 is int"),
}


@pytest.mark.parametrize("bad, why", BAD_COMPLETIONS.values(), ids=list(BAD_COMPLETIONS))
def test_a_completion_of_the_wrong_type_is_named_not_scored_as_empty_text(bad, why):
    with pytest.raises(TypeError, match="reward 'fmt': " + why):
        RegexReward("^$", name="fmt")(completions=["fine", bad])  # "^$" would match the empty text
    with pytest.raises(TypeError, match=why.replace("completion 1", "completion")):
        completion_text(bad)
    composite = build_rewards([{"type": "length", "target": 3}, {"type": "regex", "pattern": "^$", "name": "fmt"}])
    # The composite names the failing component and sample (it re-runs the batch sample by sample).
    with pytest.raises(Exception, match=r"\('length'\).*sample 1.*reward 'length': "
                       + why.replace("completion 1", r"completion \d")):
        composite(completions=["fine", bad])


def test_the_completion_shapes_trl_gives_still_read_as_text():
    tool_turn = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]},
                 {"role": "tool", "content": "sunny"}, {"role": "assistant", "content": "It is sunny."}]
    assert completion_text(tool_turn) == "\nIt is sunny."
    parts = [{"role": "assistant", "content": [{"type": "text", "text": "a"}, {"type": "image"}, "b"]}]
    assert completion_text(parts) == "ab"
    assert completion_text({"role": "assistant", "content": "one message"}) == "one message"
    with pytest.raises(TypeError, match=r"reward 'regex': prompt 0 is bytes"):
        RegexReward("a")(prompts=[b"q"], completions=["a"])


def test_regex_search_fullmatch_count_and_conversational():
    r = RegexReward(r"\d+")
    assert r(prompts=["q", "q"], completions=CONV) == [1.0, 0.0]
    full = RegexReward(r"\d+", mode="fullmatch", score_miss=-1.0)
    assert full(completions=["123", "a123"]) == [1.0, -1.0]
    counting = RegexReward(r"\d", count=True, score_match=0.5, max_count=3)
    assert counting(completions=["1 2", "12345", "x"]) == [1.0, 1.5, 0.0]
    assert RegexReward("HELLO", flags="i")(completions=["hello"]) == [1.0]
    assert r.__name__ == "regex" and RegexReward("x", name="fmt").__name__ == "fmt"


def test_regex_catastrophic_pattern_returns_within_time_limit():
    text = "a" * 40 + "!"
    # The brief's classic: the `regex` engine handles it without blowing up.
    start = time.perf_counter()
    assert RegexReward(r"(a+)+$", timeout=0.2)(completions=[text]) == [0.0]
    assert time.perf_counter() - start < 1.0
    # A pattern the engine cannot optimise needs ~2**40 steps: the time limit must cut it.
    slow = RegexReward(r"(a|aa)+$", timeout=0.2)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="exceeded"):
        out = slow(completions=[text, "aaa"])
    assert time.perf_counter() - start < 2.0
    assert out == [None, 1.0] and slow.timeouts == 1
    with pytest.raises(TimeoutError, match="sample 0"):
        RegexReward(r"(a|aa)+$", timeout=0.1, on_timeout="raise")(completions=[text])
    with pytest.warns(RuntimeWarning, match="exceeded"):
        missed = RegexReward(r"(a|aa)+$", timeout=0.1, on_timeout="miss", score_miss=-1)(completions=[text])
    assert missed == [-1.0]


def test_regex_timeout_bounds_the_whole_call_not_each_match():
    catastrophic = "a" * 40 + "!"
    slow = RegexReward(r"(a|aa)+$", timeout=0.5)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="share of timeout=0.5s"):
        out = slow(completions=[catastrophic] * 64 + ["aaa"])
    elapsed = time.perf_counter() - start
    assert elapsed < 0.5 + 65 * MIN_MATCH_SECONDS + 0.4, elapsed  # was 64 x 0.5 s = 32 s
    assert out == [None] * 64 + [1.0] and slow.timeouts == 64  # the cheap sample still got its turn


def test_regex_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="does not compile"):
        RegexReward("(unclosed")
    with pytest.raises(ValueError, match="mode"):
        RegexReward("a", mode="match")
    with pytest.raises(ValueError, match="flags"):
        RegexReward("a", flags="q")


def test_substring_modes():
    subs = SubstringReward(["foo", "Bar"], mode="any")
    assert subs(completions=["foo", "bar", "xx"]) == [1.0, 0.0, 0.0]
    assert SubstringReward(["foo", "Bar"], mode="all", case_sensitive=False)(
        completions=["FOO bar", "foo"]) == [1.0, 0.0]
    assert SubstringReward(["a", "b", "c", "d"], mode="fraction")(completions=["ab"]) == [0.5]
    with pytest.raises(ValueError, match="substrings"):
        SubstringReward([])


def test_length_soft_hard_and_units():
    r = LengthReward(target=10, softness=5)
    vals = r(completions=["x" * 10, "x" * 15, "x" * 30])
    assert vals[0] == 1.0 and vals[0] > vals[1] > vals[2] > 0
    assert vals[1] == pytest.approx(2.718281828 ** -1)
    band = LengthReward(min_length=2, max_length=4, unit="words", hard=True)
    assert band(completions=["one", "one two", "a b c d e"]) == [0.0, 1.0, 0.0]
    tokens = LengthReward(max_length=3, unit="tokens", hard=True)
    assert tokens(completions=["a", "b"], completion_ids=[[1, 2], [1, 2, 3, 4]]) == [1.0, 0.0]
    with pytest.raises(ValueError, match="completion_ids"):
        tokens(completions=["a"])
    with pytest.raises(ValueError, match="either target"):
        LengthReward(target=3, max_length=4)


def test_rewards_pickle_and_keep_working():
    for reward in (RegexReward(r"\d"), SubstringReward("x"), LengthReward(target=3)):
        clone = pickle.loads(pickle.dumps(reward))
        assert clone.__name__ == reward.__name__
        assert clone(completions=["1x2", "abc"]) == reward(completions=["1x2", "abc"])


def test_registry_specs_and_errors():
    assert {"regex", "substring", "length", "cosine", "learned", "judge", "http_judge", "human"} <= \
        set(registered_rewards())
    r = build_reward({"type": "regex", "pattern": "a", "weight": 3.0})
    assert isinstance(r, RegexReward)
    with pytest.raises(RewardSpecError, match=r"unknown reward type 'nope'.*regex"):
        build_reward("nope")
    with pytest.raises(RewardSpecError) as err:
        build_rewards([{"type": "length", "target": 3}, {"type": "regex", "patern": "a"}])
    assert "component 1" in str(err.value) and "'regex'" in str(err.value) and "'patern'" in str(err.value)
    with pytest.raises(RewardSpecError, match=r"component 0 \(type 'regex'\).*compile"):
        build_rewards([{"type": "regex", "pattern": "("}])
    with pytest.raises(RewardSpecError, match=r"component 0.*'weight'"):
        build_rewards([{"type": "regex", "pattern": "a", "weight": "heavy"}])
    with pytest.raises(RewardSpecError, match=r"component 0 \(type 'learned'\): model: no such model folder"):
        build_rewards([{"type": "learned", "model": "/nonexistent/reward-model"}])
    with pytest.raises(RewardSpecError, match="missing key 'type'"):
        build_rewards([{"pattern": "a"}])


@register_reward("test_rewards_text_exclaim")
def exclaim(completions, bonus: float = 1.0, **kwargs):
    return [bonus if completion_text(c).endswith("!") else 0.0 for c in completions]


def test_registered_and_dotted_path_functions():
    fn = build_reward({"type": "test_rewards_text_exclaim", "bonus": 2.0})
    assert fn(completions=["hi!", "hi"]) == [2.0, 0.0]
    by_path = build_reward(f"{__name__}:exclaim")
    assert by_path(completions=["!"]) == [1.0]
    with pytest.raises(RewardSpecError, match="unknown key 'bonsu'"):
        build_reward({"type": "test_rewards_text_exclaim", "bonsu": 2.0})
    with pytest.raises(ValueError, match="already registered"):
        register_reward("regex")(exclaim)


def test_docs_custom_reward_example_runs():
    """The README section's custom-reward example, executed as written."""
    import re
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "rewards.md").read_text()
    section = doc.split("### A custom reward", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    config = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))
    namespace: dict = {}
    exec(compile(code, "docs/rewards.md", "exec"), namespace)  # registers mentions_source
    assert config["reward_modules"] == ["myrewards.py"]
    composite = build_rewards(config["REWARDS"])
    out = composite(prompts=["p", "p"], completions=["Source: the Python docs", "no idea"],
                    source=["python docs", "python docs"])
    # mentions_source gives 0.5 / 0; length (max 300 chars) gives 1 for both: weights 1 + 1.
    assert out == [1.5, 1.0]
    assert composite.last_components == {"mentions_source": 0.25, "length": 1.0}
