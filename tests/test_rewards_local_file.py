"""Issue 19 item 2: rewards from a local file (``"file.py:function"`` relative to the config file)
and ``reward_modules`` importing files that register names; the README's example through train.py."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from adaptiverl.rewards import RewardSpecError, build_rewards
from adaptiverl.trainer.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parent.parent
REWARD_FILE = '''
from adaptiverl.rewards import register_reward


@register_reward("{name}")
def says_yes(completions, bonus: float = 1.0, **kwargs):
    return [bonus if "yes" in str(c) else 0.0 for c in completions]
'''


@pytest.fixture()
def project(tmp_path, request):
    """A config folder with a reward file and prompts; the test runs from another folder."""
    folder = tmp_path / "project"
    folder.mkdir()
    name = f"says_yes_{request.node.name[-12:].strip('[]_')}_{abs(hash(str(tmp_path))) % 10**8}"
    (folder / f"rw_{name}.py").write_text(REWARD_FILE.format(name=name))
    (folder / "prompts.jsonl").write_text(json.dumps({"prompt": "Say yes"}) + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    cwd = os.getcwd()
    os.chdir(elsewhere)
    yield folder, name
    os.chdir(cwd)


def write_config(folder: Path, **keys) -> Path:
    path = folder / "config.json"
    path.write_text(json.dumps({"MODEL": "gpt2", "TRAIN_FILE": "prompts.jsonl", **keys}))
    return path


def test_a_function_in_a_file_relative_to_the_config(project):
    folder, name = project
    c = load_config(write_config(folder, REWARDS=[{"type": f"rw_{name}.py:says_yes", "bonus": 2.0}]),
                    check_hardware=False)
    assert c.REWARDS[0]["type"] == f"{(folder / f'rw_{name}.py').resolve()}:says_yes"  # absolute once read
    reward = build_rewards(c.REWARDS)
    assert reward(prompts=["p", "p"], completions=["yes", "no"]) == [2.0, 0.0]


def test_reward_modules_make_registered_names_usable(project):
    folder, name = project
    c = load_config(write_config(folder, reward_modules=[f"rw_{name}.py"], REWARDS=[{"type": name}]),
                    check_hardware=False)
    assert build_rewards(c.REWARDS)(prompts=["p"], completions=["yes"]) == [1.0]


def test_errors_say_what_to_set(project):
    folder, name = project
    with pytest.raises(ConfigError) as err:  # a registered name nothing imported
        load_config(write_config(folder, REWARDS=[{"type": "not_imported_anywhere"}]), check_hardware=False)
    assert "reward_modules" in str(err.value) and ".py:" in str(err.value)
    with pytest.raises(ConfigError) as err:  # the module:function form of a file not on the path
        load_config(write_config(folder, REWARDS=[{"type": f"rw_{name}:says_yes"}]), check_hardware=False)
    assert f"'rw_{name}.py:says_yes'" in str(err.value) and "PYTHONPATH" in str(err.value)
    with pytest.raises(ConfigError, match=r"'reward_modules': reward module file not found: .*nowhere\.py"):
        load_config(write_config(folder, reward_modules=["nowhere.py"], REWARDS=[{"type": "length", "target": 3}]),
                    check_hardware=False)
    with pytest.raises(ConfigError, match="defines no 'missing'"):
        load_config(write_config(folder, REWARDS=[{"type": f"rw_{name}.py:missing"}]), check_hardware=False)


def test_a_file_reference_names_only_a_reward(tmp_path):
    path = tmp_path / "notreward.py"
    path.write_text("import subprocess\nPopen = subprocess.Popen\n")
    with pytest.raises(RewardSpecError, match="not a reward class"):
        build_rewards([{"type": f"{path}:Popen", "args": ["true"]}])


def readme_block(after: str, language: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(after)
    return re.search(rf"```{language}\n(.*?)```", text[start:], re.S).group(1)


def test_the_readme_custom_reward_trains_with_train_py(tiny_gpt2_dir, tmp_path):
    """The README's reward file and its config, as a user copies them, through train.py."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "myrewards.py").write_text(readme_block("### A custom reward", "python"))
    config = json.loads(readme_block("### A custom reward", "json"))
    (work / "data.jsonl").write_text("".join(json.dumps({"prompt": p, "source": s}) + "\n"
                                             for p, s in [("Cite the", "wiki"), ("Name a", "book")]))
    config.update({"MODEL": tiny_gpt2_dir, "TRAIN_FILE": "data.jsonl", "OUTPUT_DIR": str(tmp_path / "out"),
                   "STEPS": 2, "BATCH_SIZE": 2, "MAX_COMPLETION_LENGTH": 8, "MAXSEQ": 32, "PLOT": False,
                   "CPU_THREADS": 1})
    (work / "config.json").write_text(json.dumps(config))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("PYTHONSAFEPATH", None)
    run = subprocess.run([sys.executable, str(ROOT / "train.py"), str(work / "config.json")], cwd=tmp_path,
                         capture_output=True, text=True, env=env, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "done: 2 steps" in run.stdout
    logged = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    assert any(k.startswith("composite/mentions_source") for row in logged for k in row)
