"""Imports run one way, as the data flows: signals -> controllers -> optim (appliers) -> trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adaptiverl"
#: what each layer must never import (the layers above it, and the rewards that meet the
#: optimizers only in the trainer integration)
FORBIDDEN = {
    "signals": ("adaptiverl.controllers", "adaptiverl.optim", "adaptiverl.trainer", "adaptiverl.rewards"),
    "controllers": ("adaptiverl.optim", "adaptiverl.trainer", "adaptiverl.rewards"),
    "optim": ("adaptiverl.trainer", "adaptiverl.rewards"),
}


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_no_import_runs_upward(layer: str) -> None:
    offences = [f"{path.relative_to(PACKAGE.parent)} imports {name}"
                for path in sorted((PACKAGE / layer).rglob("*.py"))
                for name in _imports(path) if name.startswith(FORBIDDEN[layer])]
    assert not offences, offences
