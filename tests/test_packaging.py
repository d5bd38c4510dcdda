"""The wheel: built from the checkout, installed into a fresh venv, ``adaptiverl quickstart`` offline.

The fresh venv reuses the dependencies of the running environment (a ``.pth`` line naming its
site-packages, so nothing is downloaded and no ``.pth`` hook of that environment, such as the
editable install of this checkout, runs); adaptiverl itself comes only from the wheel, and the
quickstart runs from a folder outside the checkout, so every config, prompt and the tiny-model
builder it uses must be inside the package.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def checkout_files() -> list[str]:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a fresh clone has")
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True, check=True).stdout
    return [f for f in out.split("\0") if f and os.path.lexists(ROOT / f)]


def copy_checkout(dest: Path, files: list[str]) -> Path:
    for name in files:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        source = ROOT / name
        if source.is_symlink():
            target.symlink_to(os.readlink(source))
        else:
            shutil.copy2(source, target)
    return dest


@pytest.mark.slow
def test_wheel_in_a_fresh_venv_runs_the_quickstart_offline(tmp_path):
    files = checkout_files()
    src = copy_checkout(tmp_path / "clone", files)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("adaptiverl-*.whl"))
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        metadata = next(zf.read(n).decode() for n in names if n.endswith(".dist-info/METADATA"))
    package_files = {f for f in files if f.startswith("adaptiverl/") and "__pycache__" not in f}
    assert package_files <= names, f"not in the wheel: {sorted(package_files - names)}"  # data too
    for shipped in ("adaptiverl/configs/quickstart.json", "adaptiverl/configs/data/quickstart_prompts.jsonl",
                    "adaptiverl/configs/gpt2_sft.json", "adaptiverl/configs/data/sft_text.jsonl",
                    "adaptiverl/tiny.py", "adaptiverl/cli.py"):
        assert shipped in names, shipped
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert "License-Expression: MIT" in metadata
    assert not any(n.startswith(("tests/", "benchmarks/", "configs/")) for n in names)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    fresh_site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                capture_output=True, text=True, check=True).stdout.strip()
    Path(fresh_site, "reuse-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    check = subprocess.run([*pip, "--python", str(python), "check"], capture_output=True, text=True, timeout=120)
    assert "adaptiverl" not in check.stdout, check.stdout  # its declared dependencies are met

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    where = subprocess.run([str(python), "-c", "import adaptiverl; print(adaptiverl.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout
    assert where.startswith(fresh_site), where
    proc = subprocess.run([str(venv / "bin" / "adaptiverl"), "quickstart", "--steps", "2",
                           "--pretrain-steps", "0", "--out", "qs", "--LOGGING_STEPS", "1",
                           "--SAVE_STEPS", "0", "--REPORT_TO", "none", "--PLOT", "false"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    run = work / "qs" / "run"
    assert (work / "qs" / "tiny-gpt2" / "config.json").is_file()
    assert json.loads((run / "train_config.json").read_text())["STEPS"] == 2
    assert "Reward components" in (run / "README.md").read_text()
    assert "run: OPTIM adamw, 2 steps" in proc.stdout
