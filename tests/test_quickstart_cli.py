"""``adaptiverl quickstart --compare``: plain AdamW and OnlineAdamW on the packaged quickstart, one picture."""

from __future__ import annotations

import json

import pytest

from adaptiverl.cli import main, packaged_config


@pytest.mark.slow
def test_quickstart_compare_trains_both_and_draws_one_png(tiny_gpt2_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "qs"
    (out / "tiny-gpt2").parent.mkdir()
    (out / "tiny-gpt2").symlink_to(tiny_gpt2_dir)  # reuse the fixture's model: no build here
    assert main(["quickstart", "--compare", "--steps", "3", "--out", str(out), "--LOGGING_STEPS", "1",
                 "--SAVE_STEPS", "0", "--REPORT_TO", "none", "--PLOT", "false"]) == 0
    printed = capsys.readouterr().out
    assert "adamw: OPTIM torch.AdamW, 3 steps" in printed and "online_adamw: OPTIM adamw, 3 steps" in printed
    assert f"comparison -> {out / 'compare.png'}" in printed
    assert (out / "compare.png").stat().st_size > 20_000
    baseline = json.loads((out / "adamw" / "train_config.json").read_text())
    adaptive = json.loads((out / "online_adamw" / "train_config.json").read_text())
    assert (baseline["OPTIM"], baseline["ADAPTIVE_ARGS"]) == ("torch.AdamW", {"lr_rule": None})
    assert adaptive["OPTIM"] == "adamw"
    for run in ("adamw", "online_adamw"):  # the same quickstart otherwise
        assert json.loads((out / run / "train_config.json").read_text())["REWARDS"] == \
            json.loads(packaged_config().read_text())["REWARDS"]
    assert "OnlineAdamW" in (out / "online_adamw" / "README.md").read_text()
    assert "AdaptiveOptimizer(AdamW)" in (out / "adamw" / "README.md").read_text()


def test_quickstart_without_the_plot_extra(tmp_path, monkeypatch, capsys):
    """A plain `pip install adaptiverl` has no matplotlib: --compare says what to install."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert main(["quickstart", "--compare", "--out", str(tmp_path)]) == 2
    assert "pip install 'adaptiverl[plot]'" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before building anything


def test_the_cli_help_and_a_config_error_load_no_torch(tmp_path):
    """`adaptiverl --help` and a config error answer before torch/transformers load (they took 7-22 s)."""
    import subprocess
    import sys

    bad = tmp_path / "bad.json"
    bad.write_text('{"LRATE": "abc"}')
    code = ("import sys; from adaptiverl.cli import main\n"
            "for argv in (['--help'], ['train', sys.argv[1]]):\n"
            "    try: main(argv)\n"
            "    except SystemExit: pass\n"
            "assert 'torch' not in sys.modules, sorted(m for m in sys.modules if m.startswith(('torch', 'transformers')))\n")
    done = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "MODEL" in done.stderr  # the one-line config error, naming the key
