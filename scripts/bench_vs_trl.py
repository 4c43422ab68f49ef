"""Our GRPO loop (local backend) against TRL's `GRPOTrainer`, on this CPU, in one run.

Run from the repository root (needs the `trl` extra: pip install -e .[local,trl]):

    python scripts/bench_vs_trl.py

Both start from the same warm-started model (fixtures/tiny-arith) and use the same task
(`--dataset=arith`), prompts, reward function (`gsm8k_reward_fn`), group size, questions per
step, learning rate, clip range, max tokens, LoRA (rank, alpha 32, attention and MLP modules:
TRL refuses an adapter on lm_head, so ours leaves it out here too) and number of steps.
Validation is the harness's greedy evaluation on the same test subset for both. It prints
seconds per step (sampling, training, total), sampled tokens per second, and greedy validation
accuracy before and after, with the ratios.

Set to match ours: advantages (r - group mean) / (group std with n-1 + 1e-4), TRL's
`scale_rewards="group"` and its fixed 1e-4 (ours via --advantage_eps); `beta=0` (no KL, no
reference model); `num_iterations=1` with one optimizer step per generation batch, so both are
on-policy with ratio 1 at the update; token-level importance ratios clipped to [1 - c, 1 + c];
`loss_type="dr_grpo"`, a sum over tokens and completions divided by a constant, which AdamW
(eps 1e-12) turns into the same update as Tinker's sum; AdamW betas (0.9, 0.95), eps 1e-12, no
weight decay, no gradient clipping, constant learning rate; float32; no gradient checkpointing;
sampling at temperature 1 with no top-k/top-p; stopping at EOS (the boxed format).

Not matched: the questions each step draws (each tool shuffles with its own seeded order), the
random LoRA init (same distribution, other draws), and sampling randomness. TRL trains on every
completion, ours skips groups whose rewards are all equal (their advantages are zero either way).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro
from rich.console import Console

from harness.backends.local import LocalServiceClient
from harness.backends.local.models import LoraSpec, lora_config
from harness.config import Config
from harness.data import Problem, load_problems
from harness.evaluation import Question, Sampling, evaluate, validation_metrics, validation_subset
from harness.jsonl import read_json_lines
from harness.logger import RunLogger
from harness.loop import train
from harness.prompts import format_prompt
from harness.rewards import make_reward_fn

TRL_ADVANTAGE_EPS = 1e-4  # TRL adds this fixed constant to the group std


@dataclass(frozen=True)
class Args:
    """Benchmark our GRPO loop against TRL's GRPOTrainer on the same problem and CPU."""

    model: Path = Path("fixtures/tiny-arith")
    """Warm-started model directory (the boxed prompt format)."""
    steps: int = 20
    """GRPO steps for each."""
    rollout_batch_size: int = 32
    """Questions per step."""
    group_size: int = 8
    """Samples per question."""
    learning_rate: float = 1e-3
    """AdamW learning rate."""
    cliprange: float = 0.2
    """PPO clip range."""
    max_tokens: int = 48
    """Max tokens per sampled response."""
    lora_rank: int = 32
    """LoRA rank."""
    eval_n: int = 200
    """Test questions in the validation subset."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """One pair of runs per seed (it fixes both runs' seeds and the validation subset)."""


@dataclass(frozen=True)
class Result:
    """Per-step means over steps 1..N-1 (step 0 warms caches up) and validation accuracy."""

    sampling_s: float
    training_s: float
    total_s: float
    sampled_tokens: float
    accuracy_before: float
    accuracy_after: float

    @property
    def tokens_per_s(self) -> float:
        return self.sampled_tokens / self.total_s


def mean_result(results: list[Result]) -> Result:
    fields = Result.__dataclass_fields__
    return Result(**{name: float(np.mean([getattr(r, name) for r in results])) for name in fields})


class NoUnembedLora(LocalServiceClient):
    """LoRA on attention and MLP only, as TRL allows (it refuses an adapter on lm_head)."""

    def create_lora_training_client(self, *args: Any, **kwargs: Any) -> Any:
        return super().create_lora_training_client(*args, **{**kwargs, "train_unembed": False})


def run_ours(
    args: Args, seed: int, workdir: Path, train_set: list[Problem], test_set: list[Problem]
) -> Result:
    config = Config(
        model_name=str(args.model),
        backend="local",
        dataset="arith",
        use_r1_zero_format=False,
        n_grpo_steps=args.steps,
        learning_rate=args.learning_rate,
        rollout_batch_size=args.rollout_batch_size,
        group_size=args.group_size,
        cliprange=args.cliprange,
        advantage_eps=TRL_ADVANTAGE_EPS,
        sampling_max_tokens=args.max_tokens,
        lora_rank=args.lora_rank,
        eval_n=args.eval_n,
        eval_every=args.steps,
        save_every=args.steps,
        seed=seed,
        log_path=str(workdir / "ours"),
    )
    service = NoUnembedLora(workdir / "ours" / "tinker-storage", seed=seed)
    train(config, service, train_set, test_set, RunLogger(config, Console(quiet=True)))
    *rows, final = read_json_lines(workdir / "ours" / "metrics.jsonl")
    timed = rows[1:]
    return Result(
        sampling_s=float(np.mean([r["time/sampling"] for r in timed])),
        training_s=float(np.mean([r["time/training"] for r in timed])),
        total_s=float(np.mean([r["time/total"] - r["time/validation"] for r in timed])),
        sampled_tokens=float(
            np.mean([r["response/length_mean"] * config.rollout_batch_size * config.group_size
                     for r in timed])
        ),
        accuracy_before=rows[0]["val/accuracy"],
        accuracy_after=final["val/accuracy"],
    )  # fmt: skip


def greedy_accuracy(
    model_dir: Path, questions: list[Question], max_tokens: int, store: Path
) -> float:
    """The harness's validation of a plain model directory (the same code path as the loop's)."""
    with LocalServiceClient(store) as service:
        sampler = service.create_sampling_client(base_model=str(model_dir)).result()
        records = evaluate(
            sampler,
            sampler.get_tokenizer(),
            questions,
            make_reward_fn(False),
            "boxed",
            Sampling(max_tokens=max_tokens),
        )
    return validation_metrics(records)["val/accuracy"]


def trl_trainer_class() -> type:
    from trl import GRPOTrainer

    class TimedGRPOTrainer(GRPOTrainer):
        """Records each step's seconds of generation (with scoring), its sampled tokens (up to
        and including EOS, as ours counts them) and the seconds of the whole step (less the
        optimizer step, which the Trainer runs after `training_step`: ~0.01 s here)."""

        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            self.sampling_s: list[float] = []
            self.step_s: list[float] = []
            self.sampled_tokens: list[int] = []

        def _generate_and_score_completions(self, inputs: Any) -> Any:
            start = time.perf_counter()
            output = super()._generate_and_score_completions(inputs)
            self.sampling_s.append(time.perf_counter() - start)
            self.sampled_tokens.append(int(output["completion_mask"].sum()))
            return output

        def training_step(self, *a: Any, **kw: Any) -> Any:
            start = time.perf_counter()
            loss = super().training_step(*a, **kw)
            self.step_s.append(time.perf_counter() - start)
            return loss

    return TimedGRPOTrainer


def gsm8k_reward(completions: list[str], answer: list[str], **_: Any) -> list[float]:
    """TRL's reward-function signature around the harness's reward (boxed format)."""
    reward_fn = make_reward_fn(False)
    return [reward_fn(c, a)["reward"] for c, a in zip(completions, answer, strict=True)]


def run_trl(
    args: Args, seed: int, workdir: Path, train_set: list[Problem], val_questions: list[Question]
) -> Result:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype="float32")
    dataset = datasets.Dataset.from_list(
        [{"prompt": format_prompt(p.question, "boxed"), "answer": p.answer} for p in train_set]
    )
    config = GRPOConfig(
        output_dir=str(workdir / "trl"),
        max_steps=args.steps,
        per_device_train_batch_size=args.rollout_batch_size * args.group_size,
        num_generations=args.group_size,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=1,
        learning_rate=args.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        adam_beta1=0.9,
        adam_beta2=0.95,
        adam_epsilon=1e-12,
        max_grad_norm=0.0,
        beta=0.0,
        epsilon=args.cliprange,
        loss_type="dr_grpo",
        scale_rewards="group",
        importance_sampling_level="token",
        max_completion_length=args.max_tokens,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        mask_truncated_completions=False,
        gradient_checkpointing=False,
        bf16=False,
        use_cpu=True,
        disable_dropout=True,
        seed=seed,
        logging_strategy="no",
        disable_tqdm=True,
        report_to=[],
        save_strategy="no",
    )
    # The local backend's own LoRA config, so rank, alpha and modules match ours by construction.
    lora = lora_config(model, LoraSpec(args.lora_rank, seed, train_unembed=False))
    trainer = trl_trainer_class()(
        model=model,
        reward_funcs=gsm8k_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    trainer.train()
    merged_dir = workdir / "trl-merged"
    trainer.model.merge_and_unload().save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    store = workdir / "trl-eval"
    sampling_s = np.array(trainer.sampling_s[1:])
    step_s = np.array(trainer.step_s[1:])
    return Result(
        sampling_s=float(sampling_s.mean()),
        training_s=float((step_s - sampling_s).mean()),
        total_s=float(step_s.mean()),
        sampled_tokens=float(np.mean(trainer.sampled_tokens[1:])),
        accuracy_before=greedy_accuracy(args.model, val_questions, args.max_tokens, store),
        accuracy_after=greedy_accuracy(merged_dir, val_questions, args.max_tokens, store),
    )


def table(ours: list[Result], trl: list[Result], args: Args) -> str:
    """Markdown: per-step means over all runs, accuracy per seed; "ours vs TRL" is how many
    times faster ours is."""
    a, b = mean_result(ours), mean_result(trl)

    def row(name: str, x: float, y: float, fmt: str, versus: str) -> str:
        return f"| {name} | {x:{fmt}} | {y:{fmt}} | {versus} |"

    def per_seed(results: list[Result]) -> str:
        return (
            f"{np.mean([r.accuracy_after for r in results]):.3f} ("
            + ", ".join(f"{r.accuracy_after:.3f}" for r in results)
            + ")"
        )

    return "\n".join(
        [
            f"{args.steps} steps of {args.rollout_batch_size} questions x {args.group_size} "
            f"samples, max {args.max_tokens} tokens, lr {args.learning_rate}, LoRA rank "
            f"{args.lora_rank}; seeds {', '.join(map(str, args.seeds))}; greedy validation on "
            f"{args.eval_n} test questions",
            "",
            "| per step | ours (local backend) | TRL GRPOTrainer | ours vs TRL |",
            "|---|---|---|---|",
            row("sampling (s)", a.sampling_s, b.sampling_s, ".2f",
                f"{b.sampling_s / a.sampling_s:.2f}x faster"),
            row("training (s)", a.training_s, b.training_s, ".2f",
                f"{b.training_s / a.training_s:.2f}x faster"),
            row("total (s)", a.total_s, b.total_s, ".2f", f"{b.total_s / a.total_s:.2f}x faster"),
            row("sampled tokens/s", a.tokens_per_s, b.tokens_per_s, ".0f",
                f"{a.tokens_per_s / b.tokens_per_s:.2f}x"),
            row("val accuracy at step 0", a.accuracy_before, b.accuracy_before, ".3f", ""),
            f"| val accuracy after {args.steps} steps (per seed) | {per_seed(ours)} | "
            f"{per_seed(trl)} | {a.accuracy_after - b.accuracy_after:+.3f} |",
        ]
    )  # fmt: skip


def main(args: Args) -> None:
    train_set = load_problems("arith", "train")
    test_set = load_problems("arith", "test")
    ours, trl = [], []
    for seed in args.seeds:
        val_questions = [
            (i, test_set[i]) for i in validation_subset(len(test_set), args.eval_n, seed)
        ]
        workdir = Path(tempfile.mkdtemp(prefix="bench-vs-trl-"))
        try:
            ours.append(run_ours(args, seed, workdir, train_set, test_set))
            trl.append(run_trl(args, seed, workdir, train_set, val_questions))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(ours, trl, args))


if __name__ == "__main__":
    main(tyro.cli(Args))
