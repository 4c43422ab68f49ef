"""The training script with a reward that varies within groups, so a random tiny model trains.

python tests/support/varied_reward_run.py --flag=value ...
"""

import sys

from harness.cli import main


def varied_reward(response: str, ground_truth: str) -> dict[str, float]:
    """A deterministic reward with spread: a random model earns nothing from the real one."""
    answer = float(len(response) % 2)
    return {"reward": 0.8 * answer, "format_reward": 0.0, "answer_reward": answer}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], reward_fn=varied_reward))
