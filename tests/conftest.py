"""Shared fixtures. Everything is offline: tiny models are built locally."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(scope="session")
def tiny_gpt2_dir(tmp_path_factory) -> str:
    """A freshly initialised 2-layer GPT-2 (n_embd=64) and its BPE tokenizer, saved locally."""
    from adaptiverl.tiny import build_tiny_gpt2

    return str(build_tiny_gpt2(tmp_path_factory.mktemp("tiny-gpt2")))


@pytest.fixture(scope="session", autouse=True)
def _one_intra_op_thread():
    """Tiny models run fastest on one thread; more only adds contention on a 2-core CI machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _seed_everything():
    torch.manual_seed(0)
    yield
