"""A benchmark job run alone computes what it computes inside ``python -m benchmarks``.

Two things made a GRPO job read other rewards alone than in the full run: a file named like a
standard-library module next to the calling script (``trace.py``) changed the tiny tokenizer's corpus
(:func:`adaptiverl.tiny.python_corpus`), hence the tiny GPT-2 and every reward from the first step;
and the caller's torch thread count (the full run's workers use one) changed later steps.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import types
from pathlib import Path

import torch

from adaptiverl import tiny
from benchmarks import grpo_reward

ROOT = Path(__file__).resolve().parent.parent

DIGEST = """
import hashlib, json, sys
if sys.argv[1] == "torch-first":
    import torch
from adaptiverl.tiny import python_corpus
print(hashlib.sha256(json.dumps(python_corpus()).encode()).hexdigest())
"""


def _corpus_digest(cwd: Path, mode: str = "torch-first") -> str:
    # ``python -c`` puts the working directory first on sys.path, as a script puts its folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", DIGEST, mode], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_tiny_corpus_ignores_a_module_that_shadows_the_stdlib(tmp_path):
    (tmp_path / "trace.py").write_text('"""A scratch script named like the standard library\'s trace module."""\n')
    full_run = _corpus_digest(ROOT)
    assert _corpus_digest(tmp_path) == full_run
    assert _corpus_digest(tmp_path, "no-torch") == full_run  # nor on whether torch was imported first


def test_a_shadow_already_imported_is_read_around(tmp_path, monkeypatch):
    expected = tiny.python_corpus()
    shadow = types.ModuleType("trace", "A scratch script named like the standard library's trace module.")
    shadow.__file__ = str(tmp_path / "trace.py")
    monkeypatch.setitem(sys.modules, "trace", shadow)
    assert tiny.python_corpus() == expected
    assert sys.modules["trace"] is shadow  # the caller's module is left where it was


def test_a_stdlib_module_that_fails_to_import_is_skipped_even_if_found_elsewhere(tmp_path, monkeypatch):
    real = importlib.import_module

    def without_turtle(name, package=None):  # as on a Python built without tkinter
        if name == "turtle":
            raise ImportError("no tkinter")
        return real(name, package)

    monkeypatch.delitem(sys.modules, "turtle", raising=False)
    monkeypatch.setattr(importlib, "import_module", without_turtle)
    (tmp_path / "turtle.py").write_text('"""A scratch script named like the standard library\'s turtle."""\n')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tiny._stdlib_module("turtle") is None
    assert tiny._stdlib_module("textwrap").__file__ != str(tmp_path / "textwrap.py")


def test_run_one_runs_on_one_thread_and_restores_the_callers(monkeypatch):
    seen = []
    monkeypatch.setattr(grpo_reward, "_run_one", lambda job: seen.append(torch.get_num_threads()) or {"job": job})
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert grpo_reward.run_one(("adamw", 1.0, None, None, 1, 0)) == {"job": ("adamw", 1.0, None, None, 1, 0)}
        assert seen == [1]
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
