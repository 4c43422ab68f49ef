"""Evaluate a base model, a tinker:// sampler checkpoint or every checkpoint of a run on the test
split with 95% intervals; or compare two evaluations.

python scripts/evaluate.py --help
"""

import sys

from harness.eval_cli import main

if __name__ == "__main__":
    sys.exit(main())
