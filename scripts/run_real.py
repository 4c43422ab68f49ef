"""Full GRPO training on the Tinker cloud, with the original README's "Full training" values.

    export TINKER_API_KEY=...
    python scripts/run_real.py [--flag=value ...]   # any flag of grpo_train_tinker.py overrides

Needs the hub (the openai/gsm8k dataset and the model's tokenizer), or --dataset_path offline.
"""

import os
import sys

from harness.cli import main

FULL_TRAINING = [
    "--backend=tinker",
    "--model_name=Qwen/Qwen3-8B",
    "--n_grpo_steps=200",
    "--rollout_batch_size=256",
    "--group_size=8",
    "--learning_rate=1e-5",
    "--log_path=/tmp/grpo-tinker-full",
    "--wandb_project=grpo-gsm8k-full",
    "--wandb_name=grpo-qwen3-8b-run1",
]


if __name__ == "__main__":
    if not os.environ.get("TINKER_API_KEY"):
        print(
            "error: TINKER_API_KEY is not set: create a key in the Tinker console, then "
            "`export TINKER_API_KEY=<your key>` and rerun",
            file=sys.stderr,
        )
        sys.exit(2)
    sys.exit(main([*FULL_TRAINING, *sys.argv[1:]]))
