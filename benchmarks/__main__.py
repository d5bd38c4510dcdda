"""``python -m benchmarks [--quick] [--out DIR] [--only NAME ...]``: run the whole benchmark suite.

Every module in :data:`BENCHMARKS` exposes ``run(out_dir, quick) -> dict`` and writes its own
``<name>.json``, ``<name>.md`` and PNGs into ``out_dir``. This runner calls them in order, then
writes into the same folder:

* ``results.json``: every module's returned figures under its name, plus per-module status and
  duration and the machine;
* ``report.md``: a status table, the targets every module reported (the "met?" column is the
  verdict; nothing is asserted), and each module's own report, headings shifted one level down.

A benchmark module that does not exist yet is listed as "not available"; one that raises is listed
as "failed" with its error, and the runner exits with status 1 after writing the report.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import format_number, machine_info, markdown_table, write_json

# (module name, what it measures), in run order
BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("step_overhead", "step time and peak memory vs torch AdamW(fused)"),
    ("lr_robustness", "final loss over a 10^3 LR grid, normalised to tuned AdamW+cosine"),
    ("controllers", "controller front ends from 10x too high / too low LRs"),
    ("enhanced_sgd_ablation", "EnhancedSGD features one at a time vs SGD+momentum"),
    ("rewards", "reward function throughput and behaviour"),
    ("grpo_reward", "GRPO quickstart over an LR grid: final reward, speed, collapse"),
    ("grpo_reward_pretrained", "the same GRPO grid from a pre-trained policy (the users' regime)"),
    ("finetune_pretrained", "pretrained all-MiniLM-L6-v2 fine-tune, held-out loss vs tuned AdamW"),
    ("heldout_signal", "OnlineAdamW fed a validation loss vs not: test loss on the suite's tasks and the fine-tune"),
)
DEFAULT_OUT = Path(__file__).resolve().parent / "reports" / "latest"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    names = [name for name, _ in BENCHMARKS]
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="Run the adaptiverl benchmark suite; write results.json, report.md "
                                                 "and PNG plots into one folder.")
    parser.add_argument("--quick", action="store_true",
                        help="tiny budgets: checks the harness in about a minute, not the numbers")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help="output folder (default: benchmarks/reports/latest)")
    parser.add_argument("--only", nargs="+", metavar="NAME", choices=names,
                        help=f"run only these benchmarks ({', '.join(names)})")
    return parser.parse_args(argv)


def _plain(value: Any) -> Any:
    """``value`` made JSON-safe: unknown objects become their ``str``."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _shift_headings(markdown: str) -> str:
    return "\n".join("#" + line if line.startswith("#") else line for line in markdown.splitlines())


def run_suite(out_dir: Path, quick: bool = False, only: list[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks into ``out_dir``; returns ``{"status": ..., "results": ...}``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()  # before any benchmark can change the thread count
    status: dict[str, dict[str, Any]] = {}
    results: dict[str, Any] = {}
    for name, what in BENCHMARKS:
        if only and name not in only:
            continue
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"benchmarks.{name}":
                raise
            status[name] = {"status": "not available", "seconds": 0.0, "what": what,
                            "detail": f"benchmarks/{name}.py does not exist yet"}
            continue
        print(f"[benchmarks] {name}: {what} ...", file=sys.stderr, flush=True)
        start = time.perf_counter()
        threads = torch.get_num_threads()
        try:
            results[name] = _plain(module.run(out_dir, quick=quick))
            state, detail = "ok", ""
        except Exception as err:  # report it and carry on with the rest of the suite
            state, detail = "failed", f"{type(err).__name__}: {err}"
            traceback.print_exc()
        finally:  # a benchmark that changed the thread count must not skew the next one's timings
            torch.set_num_threads(threads)
        seconds = time.perf_counter() - start
        status[name] = {"status": state, "seconds": seconds, "what": what, "detail": detail}
        print(f"[benchmarks] {name}: {state} in {seconds:.1f} s", file=sys.stderr, flush=True)
    write_json(out_dir, "results", {"quick": quick, "started": info, "status": status,
                                    "results": results})
    _write_report(out_dir, quick, info, status, results)
    return {"status": status, "results": results}


def _verdict(met: Any) -> str:
    """A target's ``met`` as ``yes`` / ``NO`` / ``n/a`` whether a module gave a bool or a word."""
    if isinstance(met, bool):
        return "yes" if met else "NO"
    return "n/a" if met is None else str(met)


def _write_report(out_dir: Path, quick: bool, info: dict[str, Any],
                  status: dict[str, dict[str, Any]], results: dict[str, Any]) -> Path:
    total = sum(s["seconds"] for s in status.values())
    mode = "QUICK (harness check, numbers meaningless)" if quick else "full"
    lines = ["# adaptiverl benchmark report", "",
             f"_started {info['time']}; python {info['python']}, torch {info['torch']}, "
             f"{info['threads']} threads, cpu {info['cpu']}, cuda {info['cuda']}; {mode} run, "
             f"{total / 60:.1f} min in all_", "",
             "Regenerate: `python -m benchmarks" + (" --quick" if quick else "") + "`. "
             "What each benchmark measures and how to read it: `docs/benchmarks.md`.", "",
             "## Benchmarks", "",
             markdown_table([{"benchmark": n, "measures": s["what"], "status": s["status"],
                              "seconds": s["seconds"], "detail": s["detail"]}
                             for n, s in status.items()],
                            ["benchmark", "measures", "status", "seconds", "detail"])]
    targets = [{"benchmark": name, **row, "met": _verdict(row.get("met"))}
               for name, data in results.items() if isinstance(data, dict)
               for row in data.get("targets", []) if isinstance(row, dict)]
    if targets:
        lines += ["## Targets (reported, never asserted)", "",
                  markdown_table(targets, ["benchmark", "target", "value", "threshold", "met"])]
    for name in status:
        path = out_dir / f"{name}.md"
        if status[name]["status"] == "ok" and path.exists():
            lines += [_shift_headings(path.read_text()), ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines) + "\n")
    return report


def main(argv: list[str] | None = None) -> int:
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        os.environ.setdefault(var, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = _parse(argv)
    outcome = run_suite(args.out, quick=args.quick, only=args.only)
    failed = [n for n, s in outcome["status"].items() if s["status"] == "failed"]
    print(f"[benchmarks] report: {args.out / 'report.md'}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    for name, s in outcome["status"].items():
        print(f"  {name:24s} {s['status']:14s} {format_number(float(s['seconds']))} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
