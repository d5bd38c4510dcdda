"""Command line: ``adaptiverl train | quickstart | compare | plot | rate | build-tiny``.

    adaptiverl train CONFIG [--NAME VALUE ...]     the same as ``python train.py CONFIG ...``
    adaptiverl quickstart [--compare] [--steps N]  offline GRPO on a tiny GPT-2 (files ship inside)
    adaptiverl compare RUN_A RUN_B ... [--out PNG] overlay runs: reward, loss, LR, betas
    adaptiverl plot OUTPUT_DIR                     redraw one run's dynamics.png
    adaptiverl rate QUEUE_DIR [--host H] [--port P] the rating page for human feedback (mode="queue")
    adaptiverl build-tiny PATH                     build (and briefly pre-train) the tiny GPT-2
"""

from __future__ import annotations

import argparse
import sys
import time
from importlib import resources
from pathlib import Path

QUICKSTART_CONFIG = "quickstart.json"
COMPARE_FILE_DEFAULT = "compare.png"
# quickstart --compare: the baseline (plain torch AdamW, no rules) against OnlineAdamW.
COMPARE_OPTIMIZERS = (("adamw", "torch.AdamW"), ("online_adamw", "adamw"))


def packaged_config(name: str = QUICKSTART_CONFIG) -> Path:
    """A config shipped inside the package (``adaptiverl/configs/``, its data in ``configs/data/``)."""
    path = Path(str(resources.files("adaptiverl") / "configs" / name))
    if not path.is_file():
        raise FileNotFoundError(f"adaptiverl ships no config {name!r} (looked in {path.parent})")
    return path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adaptiverl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train from a JSON/YAML config plus --NAME VALUE overrides",
                              add_help=False)
    run.add_argument("args", nargs=argparse.REMAINDER, help="CONFIG [--NAME VALUE ...]; --help lists the flags")

    quick = commands.add_parser("quickstart", help="the offline quickstart: tiny GPT-2, GRPO, composite reward")
    quick.add_argument("--out", default="outputs/quickstart",
                       help="work folder: the tiny model and the run(s) (default: ./outputs/quickstart)")
    quick.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the config's 200)")
    quick.add_argument("--compare", action="store_true",
                       help="train twice, plain torch AdamW and OnlineAdamW, and draw compare.png")
    quick.add_argument("--pretrain-steps", type=int, default=600,
                       help="pre-training steps of a newly built tiny model (0: random weights)")
    quick.epilog = "Any further --NAME VALUE flags override the quickstart config (see train.py --help)."

    compare = commands.add_parser("compare", help="overlay several runs in one PNG")
    compare.add_argument("runs", nargs="+", help="OUTPUT_DIRs of the runs")
    compare.add_argument("--out", default=COMPARE_FILE_DEFAULT, help="PNG path (default: compare.png)")
    compare.add_argument("--labels", nargs="+", default=None, help="one legend label per run")
    compare.add_argument("--smooth", type=int, default=10, help="moving-average width for reward and loss")

    plot = commands.add_parser("plot", help="draw loss/reward/LR/momentum of a run as a PNG")
    plot.add_argument("output_dir", help="the run's OUTPUT_DIR")
    plot.add_argument("--out", default=None, help="PNG path (default: OUTPUT_DIR/dynamics.png)")

    rate = commands.add_parser("rate", help="serve the rating page for a human-feedback queue folder")
    rate.add_argument("queue_dir", help="the queue_dir of HumanFeedbackReward(mode='queue')")
    rate.add_argument("--host", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1; any other requires an access token)")
    rate.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    rate.add_argument("--token-env", default=None, metavar="NAME",
                      help="environment variable holding the access token to require (default: a random "
                           "token where --host is not loopback)")

    tiny = commands.add_parser("build-tiny", help="build the quickstart's tiny GPT-2 (offline)")
    tiny.add_argument("out_dir", nargs="?", default="models/tiny-gpt2")
    tiny.add_argument("--pretrain-steps", type=int, default=600,
                      help="causal-LM steps on the docstring corpus (0: keep random weights)")
    tiny.add_argument("--n-layer", type=int, default=2)
    tiny.add_argument("--n-embd", type=int, default=64)
    tiny.add_argument("--threads", type=int, default=1,
                      help="torch intra-op threads (1 is fastest for this model on a small CPU)")
    return parser


def build_tiny(out_dir: str | Path, pretrain_steps: int, n_layer: int = 2, n_embd: int = 64,
               threads: int = 1) -> Path:
    """Build and pre-train the tiny GPT-2 on ``threads`` intra-op threads (then restore torch's)."""
    import torch

    from adaptiverl.tiny import build_quickstart_model

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        folder, loss = build_quickstart_model(out_dir, pretrain_steps=pretrain_steps, n_layer=n_layer,
                                              n_embd=n_embd)
    finally:
        torch.set_num_threads(previous)
    if loss is not None:
        print(f"pre-trained {pretrain_steps} steps, final loss {loss:.3f}")
    print(f"tiny GPT-2 written to {folder} in {time.perf_counter() - start:.0f} s")
    return folder


def quickstart(out: Path, steps: int | None, compare: bool, pretrain_steps: int,
               overrides: list[str]) -> int:
    """Build the tiny model once, then train the packaged quickstart config (twice with ``compare``)."""
    import importlib.util

    from adaptiverl.trainer.config import load_config
    from adaptiverl.trainer.plot import final_reward, plot_runs
    from adaptiverl.trainer.run import train

    missing = {name: importlib.util.find_spec(name) is None for name in ("matplotlib", "tensorboard")}
    if compare and missing["matplotlib"]:
        raise FileNotFoundError("quickstart --compare draws compare.png and needs matplotlib: "
                                "pip install 'adaptiverl[plot]'")
    # A plain `pip install adaptiverl` has neither: run without them, and say how to get them.
    optional = []
    if missing["matplotlib"]:
        optional += ["--PLOT", "false"]
        print("quickstart: no matplotlib, so no dynamics.png (pip install 'adaptiverl[plot]')")
    if missing["tensorboard"]:
        optional += ["--REPORT_TO", "none"]
        print("quickstart: no tensorboard, so no TensorBoard events (pip install 'adaptiverl[logging]')")
    model_dir = out / "tiny-gpt2"
    if not (model_dir / "config.json").is_file():
        build_tiny(model_dir, pretrain_steps)
    runs = COMPARE_OPTIMIZERS if compare else (("run", None),)
    results = []
    for name, optim in runs:
        extra = ["--MODEL", str(model_dir), "--OUTPUT_DIR", str(out / name), "--overwrite_output_dir", "true",
                 "--TRAIN_FILE", str(packaged_config().parent / "data" / "quickstart_prompts.jsonl")]
        extra += ["--STEPS", str(steps)] if steps is not None else []
        extra += ["--OPTIM", optim] if optim is not None else []
        config = load_config(packaged_config(), overrides=[*optional, *extra, *overrides])
        result = train(config)
        reward = final_reward(result.output_dir)
        results.append((name, config.OPTIM, result, reward))
        shown = f", final reward {reward:.3f} (mean of the last 20 steps)" if reward is not None else ""
        print(f"{name}: OPTIM {config.OPTIM}, {result.global_step} steps in {result.runtime_s:.0f} s"
              f"{shown} -> {result.output_dir}")
    if compare:
        png = plot_runs([r.output_dir for _, _, r, _ in results], out / COMPARE_FILE_DEFAULT,
                        labels=[f"{name} ({optim})" for name, optim, _, _ in results],
                        title="quickstart: plain AdamW vs OnlineAdamW (GRPO, tiny GPT-2)")
        print(f"comparison -> {png}")
    return 0


def rate(queue_dir: str, host: str, port: int, token_env: str | None) -> int:
    """Serve the rating page for ``queue_dir`` until Ctrl-C; the URL (with its token) is printed once."""
    import os

    from adaptiverl.rewards.rating import RatingServer

    token = os.environ.get(token_env) if token_env else None
    if token_env and not token:
        raise ValueError(f"--token-env names the environment variable {token_env!r}, which is not set")
    try:
        server = RatingServer(queue_dir, host=host, port=port, token=token)
    except OSError as err:  # the port is taken, the address is not this machine's
        print(f"adaptiverl rate: error: {err}", file=sys.stderr)
        return 2
    print(f"rating page for {Path(queue_dir).resolve()}: {server.url}", flush=True)
    if server.token is not None:
        print("open that URL once per browser (the token after # stays in that tab); Ctrl-C stops", flush=True)
    try:
        server.serve_forever()
    finally:
        server.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "quickstart":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")

    from adaptiverl.trainer.config import ConfigError

    try:
        if args.command == "train":
            from adaptiverl.trainer.config import config_parser, help_text, parse_command_line

            if not args.args or args.args[0] in ("-h", "--help"):  # our settings by section
                print(help_text())
                return 0 if args.args else 2
            if args.args[0] == "--help-all":  # every TRL flag too
                config_parser().print_help()
                return 0
            config = parse_command_line(args.args)  # a config error shows before transformers loads
            from adaptiverl.trainer.run import train

            result = train(config)
            if not result.already_finished:
                print(f"trained {result.global_step} steps in {result.runtime_s:.0f} s -> {result.output_dir}")
        elif args.command == "quickstart":
            return quickstart(Path(args.out), args.steps, args.compare, args.pretrain_steps, extra)
        elif args.command == "compare":
            from adaptiverl.trainer.plot import plot_runs

            print(plot_runs(args.runs, args.out, labels=args.labels, smooth_width=args.smooth))
        elif args.command == "plot":
            from adaptiverl.trainer.plot import plot_dynamics, read_history

            read_history(args.output_dir)  # the wrong folder is an error; a failed drawing only a warning
            png = plot_dynamics(args.output_dir, args.out)
            print(png if png is not None else "no plot drawn (see the warning above)")
        elif args.command == "rate":
            return rate(args.queue_dir, args.host, args.port, args.token_env)
        else:
            build_tiny(args.out_dir, args.pretrain_steps, args.n_layer, args.n_embd, args.threads)
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"adaptiverl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
