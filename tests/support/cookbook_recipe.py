"""tinker-cookbook's recipes against a Tinker server, offline.

python -m tests.support.cookbook_recipe RECIPE key=value ...

RECIPE is `sl_loop` or `rl_loop` (tinker_cookbook/recipes/*.py, their own `main` and chz
command line, key=value as their README gives it) or `rl_train` (tinker_cookbook/rl/train.py's
`main` on the cookbook's own arithmetic environment; keys: base_url, model_name, log_path,
max_steps, mode = sync | stream | async; sync also turns on the KL penalty, post-update KL
and rolling saves). The recipes' code runs unchanged; two things a
machine without the Hugging Face hub cannot give them are replaced:

- `datasets.load_dataset` of the hub's GSM8K and No Robots answers from the vendored GSM8K
  (fixtures/gsm8k), as the columns the recipes read (`question`/`answer`, `messages`);
- the rewards a random model never earns (rl_loop's GSM8K grading, the arithmetic
  environment's answer check), under which every advantage would be zero and no step would
  train, become the harness tests' varied reward.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import chz
import datasets

FIXTURE_GSM8K = Path(__file__).resolve().parent.parent.parent / "fixtures" / "gsm8k"
ROWS = 64  # enough for a few steps of the tests' small batches


def gsm8k_rows() -> list[dict[str, str]]:
    with (FIXTURE_GSM8K / "train.jsonl").open() as lines:
        return [json.loads(line) for _, line in zip(range(ROWS), lines, strict=False)]


def load_dataset(path: str, name: str | None = None, **_) -> datasets.DatasetDict:
    rows = gsm8k_rows()
    if path == "openai/gsm8k" and name == "main":
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)})
    if path == "HuggingFaceH4/no_robots":
        conversations = [
            {
                "messages": [
                    {"role": "user", "content": row["question"]},
                    {"role": "assistant", "content": row["answer"]},
                ]
            }
            for row in rows
        ]
        return datasets.DatasetDict({"train": datasets.Dataset.from_list(conversations)})
    raise ValueError(f"offline: no local stand-in for the hub's data set {path!r} {name!r}")


def varied_reward(response: str, answer: str) -> float:
    """tests/support/varied_reward_run.py's rule: spread within a group, deterministic."""
    return float(len(response) % 2)


def varied_answer_check(env, sample_str: str) -> bool:
    return varied_reward(sample_str, env.get_reference_answer()) == 1.0


def rl_train_config(
    base_url: str, model_name: str, log_path: str, max_steps: int, mode: str
):  # -> tinker_cookbook.rl.train.Config
    from tinker_cookbook.recipes.math_rl.arithmetic_env import (
        ArithmeticDatasetBuilder,
        ArithmeticEnv,
    )
    from tinker_cookbook.rl import train

    ArithmeticEnv.check_answer = varied_answer_check

    groups = 2
    modes = {
        # Beyond the defaults: a KL penalty against the base model, post-update KL, and
        # rolling saves (each deletes the one before it through the REST API) in place of
        # periodic ones.
        "sync": {
            "kl_penalty_coef": 0.01,
            "kl_reference_config": train.KLReferenceConfig(base_model=model_name),
            "compute_post_kl": True,
            "save_every": 0,
            "rolling_save_every": 1,
        },
        "stream": {
            "stream_minibatch_config": train.StreamMinibatchConfig(
                groups_per_batch=groups, num_minibatches=2
            )
        },
        "async": {
            "async_config": train.AsyncConfig(max_steps_off_policy=1, groups_per_batch=groups)
        },
    }
    return train.Config(
        learning_rate=1e-3,
        dataset_builder=ArithmeticDatasetBuilder(
            batch_size=groups,
            model_name_for_tokenizer=model_name,
            renderer_name="qwen3",
            n_batches=max_steps,
            group_size=4,
        ),
        model_name=model_name,
        recipe_name="harness_conformance",
        max_tokens=8,
        log_path=log_path,
        base_url=base_url,
        lora_rank=4,
        eval_every=0,
        max_steps=max_steps,
        num_groups_to_log=0,
        **{"save_every": 1, **modes[mode]},
    )


def main(argv: list[str]) -> None:
    recipe, *arguments = argv
    datasets.load_dataset = load_dataset
    if recipe == "rl_train":
        from tinker_cookbook.rl import train

        options = dict(argument.split("=", 1) for argument in arguments)
        options["max_steps"] = int(options["max_steps"])
        asyncio.run(train.main(rl_train_config(**options)))
        return
    if recipe == "sl_loop":
        from tinker_cookbook.recipes import sl_loop as module
    elif recipe == "rl_loop":
        from tinker_cookbook.recipes import rl_loop as module

        module.get_reward = varied_reward
    else:
        raise SystemExit(f"unknown recipe {recipe!r}: sl_loop, rl_loop or rl_train")
    chz.nested_entrypoint(module.main, argv=arguments)


if __name__ == "__main__":
    main(sys.argv[1:])
