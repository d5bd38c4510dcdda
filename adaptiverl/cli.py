"""Command line: ``adaptiverl train CONFIG`` and ``adaptiverl plot OUTPUT_DIR``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="adaptiverl", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("train", help="train from a JSON config (see docs/training.md)")
    run.add_argument("config", help="path to the JSON config")
    plot = commands.add_parser("plot", help="draw loss/reward/LR/momentum of a run as a PNG")
    plot.add_argument("output_dir", help="the run's OUTPUT_DIR")
    plot.add_argument("--out", default=None, help="PNG path (default: OUTPUT_DIR/dynamics.png)")
    args = parser.parse_args(argv)

    from adaptiverl.trainer.config import ConfigError

    try:
        if args.command == "train":
            from adaptiverl.trainer.run import train

            result = train(args.config)
            print(f"trained {result.global_step} steps in {result.runtime_s:.0f} s -> {result.output_dir}")
        else:
            from adaptiverl.trainer.plot import plot_dynamics

            print(plot_dynamics(args.output_dir, args.out))
    except (ConfigError, FileNotFoundError) as err:
        print(f"adaptiverl {args.command}: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
