"""QLearningController: state encoding, the Q backup, learning a best action, determinism, persistence."""

from __future__ import annotations

import math

import pytest
import torch

from adaptiverl.controllers.qlearning import QLearningController
from adaptiverl.signals import Signals


def test_state_encoding_covers_every_cell_once():
    q = QLearningController()
    seen = {q.encode_state(t, h, v) for t in (-1.0, 0.0, 1.0) for h in (0.1, 0.5, 0.9)
            for v in (0.0, 0.05, 1.0)}
    assert seen == set(range(q.n_states)) and q.n_states == 27
    assert q.encode_state(-1.0, 0.1, 0.0) != q.encode_state(1.0, 0.1, 0.0)


def test_backup_is_the_q_learning_update():
    q = QLearningController(learning_rate=0.5, discount=0.9)
    q.q_table[3] = torch.tensor([0.0, 2.0, 1.0] * 3, dtype=torch.float64)
    q.q_table[1, 4] = 1.0
    td = q.learn(state=1, action=4, reward=0.5, next_state=3)
    # target = 0.5 + 0.9 * max Q(3, .) = 2.3; td = 2.3 - 1.0; Q <- 1.0 + 0.5 * 1.3
    assert td == pytest.approx(1.3)
    assert q.q_table[1, 4].item() == pytest.approx(1.65)


def test_reward_weights_entropy_by_entropy_weight():
    assert QLearningController(entropy_weight=0.0).reward(0.02, 0.8) == pytest.approx(0.02)
    assert QLearningController(entropy_weight=0.5).reward(0.02, 0.8) == pytest.approx(0.42)


def _run_env(q: QLearningController, steps: int, states: list[int] | None = None) -> list[int]:
    """A loss that falls only while the controller keeps raising the LR multiplier toward 3."""
    signals = Signals(window=5)
    loss = 10.0
    actions = []
    for _ in range(steps):
        signals.observe(loss=loss)
        q.step(signals, entropy=0.5)
        actions.append(q.last_action)
        if states is not None:
            states.append(q.last_state)
        f_lr = q.actions[q.last_action][0]
        loss *= 1.0 - 0.02 * ((f_lr > 1.0) - (f_lr < 1.0))
    return actions


def _explorer(seed: int) -> QLearningController:
    return QLearningController(epsilon=0.5, epsilon_decay=0.99, lr_multiplier_bounds=(0.1, 1e6),
                               initial_mix_prob=1.0, seed=seed)


def test_learns_the_rewarding_action_and_is_deterministic_in_its_seed():
    q = _explorer(seed=3)
    states: list[int] = []
    _run_env(q, 400, states)
    common = max(set(states), key=states.count)
    assert q.actions[int(q.q_table[common].argmax())][0] == max(q.lr_factors)
    assert q.lr_multiplier > 2.0
    assert _run_env(_explorer(seed=3), 50) == _run_env(_explorer(seed=3), 50)
    assert _run_env(_explorer(seed=4), 50) != _run_env(_explorer(seed=3), 50)


def test_interval_holds_the_multipliers_and_rewards_the_whole_interval():
    q = QLearningController(interval=5, epsilon=1.0, initial_mix_prob=1.0, entropy_weight=0.0, baseline_beta=0.0,
                            seed=1)
    signals = Signals(beta=0.5)
    history, emas = [], []
    for i in range(30):
        signals.observe(loss=10.0 - 0.2 * i)
        emas.append(signals.loss.ema)
        history.append(q.step(signals, entropy=0.5))
    for start in range(0, 30, 5):
        assert len(set(history[start:start + 5])) == 1
    assert q.decisions == 6
    assert len(set(history)) > 1
    assert q.last_reward == pytest.approx((emas[20] - emas[25]) / emas[20])  # decisions at 0, 5, ..., 25


def test_baseline_centres_the_reward_on_its_running_mean():
    q = QLearningController(baseline_beta=0.5, entropy_weight=0.0, epsilon=0.0)
    plain = QLearningController(entropy_weight=0.0, epsilon=0.0, baseline_beta=0.0)
    signals = Signals(beta=0.0)
    rewards, raw = [], []
    for i in range(6):
        signals.observe(loss=10.0 * 0.9 ** i)
        q.step(signals, 0.5)
        plain.step(signals, 0.5)
        rewards.append(q.last_reward)
        raw.append(plain.last_reward)
    # constant relative improvement 0.1: first centred reward 0, then the baseline equals it
    assert raw[1:] == pytest.approx([0.1] * 5)
    assert rewards[1:] == pytest.approx([0.0] * 5)


def test_epsilon_decays_to_its_floor_and_multipliers_stay_in_bounds():
    q = QLearningController(epsilon=1.0, epsilon_decay=0.9, min_epsilon=0.05,
                            lr_multiplier_bounds=(0.5, 2.0), momentum_multiplier_bounds=(0.9, 1.05))
    signals = Signals()
    for i in range(300):
        signals.observe(loss=1.0 + 0.1 * math.sin(i))
        lr_mult, mom_mult = q.step(signals, entropy=0.4)
        assert 0.5 <= lr_mult <= 2.0 and 0.9 <= mom_mult <= 1.05
    assert q.epsilon == pytest.approx(0.05)


def test_mix_prob_zero_applies_only_the_neutral_action():
    q = QLearningController(epsilon=1.0, initial_mix_prob=0.0, min_mix_prob=0.0)
    signals = Signals()
    for i in range(50):
        signals.observe(loss=float(i))
        assert q.step(signals, entropy=0.5) == (1.0, 1.0)
    assert q.actions[q.neutral_action] == (1.0, 1.0)


def test_update_mix_prob_rises_on_new_best_and_falls_otherwise():
    q = QLearningController(initial_mix_prob=0.5, mix_prob_step=0.1, min_mix_prob=0.2)
    assert q.update_mix_prob(torch.tensor(3.0), epoch=1) == pytest.approx(0.6)
    assert q.update_mix_prob(2.0, epoch=2) == pytest.approx(0.7)
    assert q.update_mix_prob(2.5, epoch=3) == pytest.approx(0.6)
    for _ in range(10):
        q.update_mix_prob(float("nan"), epoch=4)
    assert q.mix_prob == pytest.approx(0.2) and q.epoch == 4
    for _ in range(20):
        q.update_mix_prob(-float(q.decisions) - _, epoch=5)
    assert q.mix_prob == 1.0


def test_state_dict_round_trip_continues_identically(tmp_path):
    q = QLearningController(seed=7, epsilon=0.5)
    _run_env(q, 30)
    path = tmp_path / "q.pt"
    torch.save(q.state_dict(), path)
    restored = QLearningController(seed=99, epsilon=0.5)
    restored.load_state_dict(torch.load(path, weights_only=True))
    assert torch.equal(restored.q_table, q.q_table)
    signals_a, signals_b = Signals(), Signals()
    for i in range(20):
        signals_a.observe(loss=5.0 - 0.1 * i)
        signals_b.observe(loss=5.0 - 0.1 * i)
        assert q.step(signals_a, 0.3) == restored.step(signals_b, 0.3)
    assert torch.equal(restored.q_table, q.q_table)


def test_load_rejects_a_table_of_another_shape():
    with pytest.raises(ValueError, match="q_table"):
        QLearningController(lr_factors=(0.9, 1.1)).load_state_dict(QLearningController().state_dict())


@pytest.mark.parametrize("kwargs, name", [
    ({"learning_rate": 0.0}, "learning_rate"), ({"discount": 1.0}, "discount"),
    ({"epsilon": 1.5}, "epsilon"), ({"epsilon_decay": 0.0}, "epsilon_decay"),
    ({"initial_mix_prob": 1.5}, "initial_mix_prob"), ({"lr_factors": ()}, "lr_factors"),
    ({"trend_edges": (1.0, 0.0)}, "trend_edges"), ({"interval": 0}, "interval"),
    ({"baseline_beta": 1.0}, "baseline_beta"), ({"lr_multiplier_bounds": (2.0, 3.0)}, "lr_multiplier_bounds"),
])
def test_bad_arguments_name_the_culprit(kwargs, name):
    with pytest.raises(ValueError, match=name):
        QLearningController(**kwargs)
