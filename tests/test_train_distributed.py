"""``accelerate launch --multi_gpu --num_processes 2 train.py CONFIG`` on CPU (gloo): ranks stay identical.

(On a machine without GPUs accelerate needs ``--multi_gpu`` to start torchrun's
N processes; with ``use_cpu`` set by ``train()`` they run DDP over gloo.)

The test launches this file under accelerate; as ``__main__`` it runs the
repository's ``train.py`` itself (``runpy``) on a shortened quickstart config,
then every rank saves its parameters and its optimizer's full state
(controller weights, its Adam moments, per-tensor scales, signal statistics,
random generator). The test then requires both ranks to hold exactly the same.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _worker(config_path: str, dump_dir: str) -> None:
    import torch

    sys.argv = ["train.py", config_path]
    result = runpy.run_path(str(ROOT / "train.py"), run_name="__main__")["result"]
    trainer = result.trainer
    optimizer = trainer.optimizer.optimizer  # under accelerate's AcceleratedOptimizer
    state = {
        "params": {k: v.detach().cpu() for k, v in trainer.model.named_parameters()},
        "optimizer": optimizer.state_dict(),
        "history": result.history,
        "world_size": trainer.accelerator.num_processes,
    }
    torch.save(state, Path(dump_dir) / f"rank{trainer.accelerator.process_index}.pt")


@pytest.mark.slow
def test_two_process_launch_keeps_ranks_identical(tiny_gpt2_dir, tmp_path):
    import torch
    from test_train_run import assert_same_state

    if shutil.which("accelerate", path=str(Path(sys.executable).parent)) is None:
        pytest.skip("accelerate's launcher is not installed next to this Python")
    config = json.loads((ROOT / "configs" / "quickstart.json").read_text())
    config.update(MODEL=tiny_gpt2_dir, OUTPUT_DIR=str(tmp_path / "out"), STEPS=3, SAVE_STEPS=0,
                  LOGGING_STEPS=1, REPORT_TO=[], PLOT=False)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    launcher = str(Path(sys.executable).parent / "accelerate")
    with socket.socket() as probe:  # a free port, so parallel runs do not collide
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.run(
        [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
         "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(port),
         __file__, str(config_path), str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=False)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=False)
    assert rank0["world_size"] == rank1["world_size"] == 2
    assert_same_state(rank0["params"], rank1["params"], "params")
    assert_same_state(rank0["optimizer"], rank1["optimizer"], "optimizer")
    # Both ranks' controllers saw the same loss and reward at every step.
    assert [(r["loss"], r["reward"]) for r in rank0["history"]] == \
        [(r["loss"], r["reward"]) for r in rank1["history"]]
    assert len(rank0["history"]) == 3
    # And training moved the parameters (the check is not vacuous).
    from transformers import AutoModelForCausalLM

    initial = dict(AutoModelForCausalLM.from_pretrained(tiny_gpt2_dir).named_parameters())
    assert not torch.equal(initial["transformer.wte.weight"], rank0["params"]["transformer.wte.weight"])


if __name__ == "__main__":
    _worker(sys.argv[1], sys.argv[2])
