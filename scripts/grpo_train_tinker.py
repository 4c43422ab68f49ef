"""On-policy GRPO on GSM8K through the Tinker API (or the offline local backend).

python scripts/grpo_train_tinker.py --help
"""

import sys

from harness.cli import main

if __name__ == "__main__":
    sys.exit(main())
