"""Build the quickstart's tiny GPT-2 offline, optionally pre-trained briefly on Python's docstrings.

    python scripts/build_tiny_model.py models/tiny-gpt2 --pretrain-steps 600

The same as ``adaptiverl build-tiny models/tiny-gpt2`` (see ``adaptiverl.tiny``), kept for
existing instructions.
"""

import sys

from adaptiverl.cli import main

if __name__ == "__main__":
    sys.exit(main(["build-tiny", *sys.argv[1:]]))
