r"""Warm start for offline GRPO: a tiny Qwen3 trained from scratch on the arithmetic task.

Run from the repository root:

    python scripts/warm_start.py --out fixtures/tiny-arith --seed 0

It builds a random Qwen3 of `--shape` with the tiny fixture's tokenizer and trains every weight
(the local backend's full fine-tuning client) with supervised `cross_entropy` on prompt +
reference completion (`... 24 + 5 = 29\n\boxed{29}` then EOS, or the R1-Zero
`... </think> <answer>29</answer>`). Every `eval_every` steps it measures greedy accuracy on test
problems and stops at the first measurement at or above `target_accuracy`: a partly trained
model, whose groups of samples disagree (so GRPO has a signal) and which has room to learn. The
merged model goes to `--out` with a README holding the command and the result. The same
arguments give the same model (CPU, same torch build).
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tinker
import tyro

from harness.backends.local import LocalServiceClient
from harness.data import BatchCursor, Problem, load_problems, next_batch
from harness.evaluation import Sampling, evaluate, validation_metrics, validation_subset
from harness.prompts import format_prompt, prompt_for
from harness.rewards import make_reward_fn
from harness.tiny_model import ModelShape, count_parameters, save_random_model

# Spelled out in the README's command even at their defaults; other flags only when changed.
COMMAND_FLAGS = ("out", "seed", "learning_rate", "batch_size", "target_accuracy")


@dataclass(frozen=True)
class Args:
    """Train a tiny model from scratch on the arithmetic task until it is partly right."""

    out: Path = Path("fixtures/tiny-arith")
    """Directory for the merged model, tokenizer and README."""
    seed: int = 0
    """Seed of the random init, the batch order and the validation subset."""
    use_r1_zero_format: bool = False
    """Prompt and completion format (the GRPO run must use the same)."""
    learning_rate: float = 3e-3
    """AdamW learning rate (Tinker's AdamParams defaults otherwise)."""
    batch_size: int = 64
    """Problems per optimizer step."""
    max_steps: int = 4000
    """Give up after this many steps."""
    eval_every: int = 25
    """Validate every N steps."""
    eval_n: int = 200
    """Test problems per validation."""
    target_accuracy: float = 0.5
    """Stop at the first validation at or above this greedy accuracy."""
    max_tokens: int = 48
    """Max tokens of a validation answer."""
    tokenizer: Path = Path("fixtures/tiny-qwen3")
    """Directory of the tokenizer to reuse."""
    shape: tyro.conf.OmitArgPrefixes[ModelShape] = ModelShape()  # noqa: RUF009 (frozen)
    """Model size."""


def reference_completion(answer: str, use_r1_zero_format: bool) -> str:
    """The response the model should give: the answer's equations, then the final answer in the
    format the prompt asks for (the prompt ends in `<think>` or after the instruction line)."""
    reasoning, value = answer.split("\n#### ")
    if use_r1_zero_format:
        return f" {reasoning} </think> <answer>{value}</answer>"
    return f" {reasoning}\n\\boxed{{{value}}}"


def sft_datum(tokens_N1: list[int]) -> tinker.Datum:
    """Next-token prediction on every token of prompt + completion + EOS."""
    tokens = np.asarray(tokens_N1, dtype=np.int64)
    return tinker.Datum(
        model_input=tinker.ModelInput.from_ints(tokens[:-1].tolist()),
        loss_fn_inputs={
            "target_tokens": tokens[1:],
            "weights": np.ones(len(tokens) - 1, dtype=np.float32),
        },
    )


def encode_examples(
    problems: list[Problem], tokenizer: Any, use_r1_zero_format: bool
) -> list[list[int]]:
    """Token ids of prompt + reference completion + EOS, per problem."""
    texts = [
        format_prompt(p.question, prompt_for(use_r1_zero_format))
        + reference_completion(p.answer, use_r1_zero_format)
        for p in problems
    ]
    return [[*tokenizer.encode(text), tokenizer.eos_token_id] for text in texts]


def flag_values(args: Args) -> dict[str, Any]:
    """Every flag's value by field name, the shape's fields at the top level (as tyro's)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.name != "shape"}
    return values | dataclasses.asdict(args.shape)


def command_line(args: Args) -> str:
    """The command that remakes `args.out`: the main flags, then every other off its default."""
    values, defaults = flag_values(args), flag_values(Args())
    flags = [
        flag(name, value)
        for name, value in values.items()
        if name in COMMAND_FLAGS or value != defaults[name]
    ]
    return " ".join(["python scripts/warm_start.py", *flags])


def flag(name: str, value: Any) -> str:
    name = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{name}" if value else f"--no-{name}"
    return f"--{name} {shlex.quote(str(value))}"


def readme_text(args: Args, n_params: int, steps: int, accuracy: float, seconds: float) -> str:
    s = args.shape
    prompt = "R1-Zero (`--use_r1_zero_format=True`)" if args.use_r1_zero_format else "boxed"
    what = f"""The warm start for offline GRPO: a {n_params:,}-parameter Qwen3 (hidden {s.hidden},
        {s.layers} layers, {s.heads} heads of {s.head_dim} with {s.kv_heads} KV heads, MLP
        {s.intermediate}, {s.max_positions} positions; tied embeddings) with the tokenizer of
        `fixtures/tiny-qwen3`, trained from scratch with supervised `cross_entropy` on the
        `--dataset=arith` train split in the {prompt} prompt format, through the local
        backend's full fine-tuning client."""
    result = f"""It stopped after {steps} steps of {args.batch_size} problems (learning rate
        {args.learning_rate}), at greedy accuracy {accuracy:.1%} on {args.eval_n} test problems:
        partly right, so GRPO has reward variance within groups and room to learn."""
    made_by = (
        f"Made by (from the repository root, seed {args.seed}; about {seconds:.0f} s on "
        f"{os.cpu_count()} CPU cores):"
    )
    grpo = f"""GRPO from it, through the standard training script: see the README's offline
        learning section (`--dataset=arith --use_r1_zero_format={args.use_r1_zero_format}`)."""
    paragraphs = ["# tiny-arith", fill(what), made_by, f"    {command_line(args)}"]
    return "\n\n".join([*paragraphs, fill(result), fill(grpo)]) + "\n"


def fill(text: str) -> str:
    return textwrap.fill(" ".join(text.split()), width=100)


def main(args: Args) -> None:
    start = time.perf_counter()
    train = load_problems("arith", "train")
    test = load_problems("arith", "test")
    val_questions = [(i, test[i]) for i in validation_subset(len(test), args.eval_n, args.seed)]
    reward_fn = make_reward_fn(args.use_r1_zero_format)
    with tempfile.TemporaryDirectory() as scratch:
        base_dir = Path(scratch) / "base"
        n_params = count_parameters(
            save_random_model(args.tokenizer, base_dir, args.shape, args.seed)
        )
        service = LocalServiceClient(Path(scratch) / "storage", seed=args.seed)
        training_client = service.create_full_training_client(str(base_dir)).result()
        tokenizer = training_client.get_tokenizer()
        examples = encode_examples(train, tokenizer, args.use_r1_zero_format)
        cursor, accuracy, step = BatchCursor(), 0.0, 0
        for step in range(1, args.max_steps + 1):
            indices, cursor = next_batch(cursor, len(examples), args.batch_size, args.seed)
            trained = training_client.forward_backward(
                [sft_datum(examples[i]) for i in indices], loss_fn="cross_entropy"
            )
            optimized = training_client.optim_step(
                tinker.AdamParams(learning_rate=args.learning_rate)
            )
            loss_per_token = trained.result().metrics["loss:sum"] / sum(
                len(examples[i]) - 1 for i in indices
            )
            optimized.result()
            if step % args.eval_every:
                continue
            sampler = training_client.save_weights_and_get_sampling_client().result()
            metrics = validation_metrics(
                evaluate(
                    sampler,
                    tokenizer,
                    val_questions,
                    reward_fn,
                    prompt_for(args.use_r1_zero_format),
                    Sampling(max_tokens=args.max_tokens),
                )
            )
            accuracy = metrics["val/accuracy"]
            print(
                f"step {step}: loss/token {loss_per_token:.3f}, accuracy {accuracy:.3f}, format "
                f"{metrics['val/format_accuracy']:.3f} ({time.perf_counter() - start:.0f} s)",
                flush=True,
            )
            if accuracy >= args.target_accuracy:
                break
        else:
            raise SystemExit(
                f"accuracy {accuracy:.3f} < {args.target_accuracy} after {args.max_steps} steps"
            )
        path = training_client.save_weights_for_sampler("warm-start").result().path
        service.export_merged_model(path, args.out)
    seconds = time.perf_counter() - start
    (args.out / "README.md").write_text(readme_text(args, n_params, step, accuracy, seconds))
    print(f"wrote {args.out}: {n_params:,} parameters, accuracy {accuracy:.3f}, {seconds:.0f} s")


if __name__ == "__main__":
    main(tyro.cli(Args))
