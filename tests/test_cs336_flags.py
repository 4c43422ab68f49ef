"""The CS336 experiment flags: their values, their defaults (today's run), their errors."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from harness.cli import main, parse_config
from harness.config import Config, ConfigError, check_config, config_changes
from harness.data import load_problems
from harness.estimate import plan_run
from harness.eval_cli import EvalConfig, resolved
from harness.grpo import LOSS_TYPES
from harness.loop import rollout_params
from harness.prompts import PROMPT_NAMES
from harness.rewards import gsm8k_reward_fn

TINY = Path(__file__).resolve().parent.parent / "fixtures" / "tiny-qwen3"
OFFLINE = ["--backend=local", f"--model_name={TINY}", "--dataset=arith"]


def test_the_defaults_are_todays_run():
    config = parse_config([])
    assert (config.loss_type, config.length_normalization) == ("grpo_clip", "sum")
    assert (config.epochs_per_rollout_batch, config.train_batch_size) == (1, None)
    assert config.prompt is None and config.prompt_name == "r1_zero"
    assert config.minibatch_size == 256 * 8 and config.optimizer_steps_per_rollout_batch == 1
    assert parse_config(["--use_r1_zero_format=False"]).prompt_name == "boxed"


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_every_loss_type_parses(loss_type):
    config = parse_config([f"--loss_type={loss_type}", *OFFLINE])
    check_config(config)
    assert config.loss_type == loss_type


@pytest.mark.parametrize("normalization", ["sum", "sequence_mean", "constant"])
def test_every_length_normalization_parses(normalization):
    config = parse_config([f"--length_normalization={normalization}", *OFFLINE])
    check_config(config)
    assert config.length_normalization == normalization


@pytest.mark.parametrize("flag", ["--loss_type=ppo", "--length_normalization=mean", "--prompt=x"])
def test_unknown_values_are_refused_by_the_parser(flag, capsys):
    with pytest.raises(SystemExit) as exit_info:
        parse_config([flag])
    assert exit_info.value.code == 2
    assert flag.split("=")[1] in capsys.readouterr().err


@pytest.mark.parametrize("prompt", PROMPT_NAMES)
def test_a_prompt_alone_sets_the_format_its_reward_and_stops_follow(prompt):
    config = parse_config([f"--prompt={prompt}", *OFFLINE])
    check_config(config)
    assert config.prompt_name == prompt
    assert config.use_r1_zero_format is (prompt == "r1_zero")
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    stop = rollout_params(config, tokenizer, step=0, n_problems=1)[0].stop
    assert (stop is not None and "</answer>" in stop) is (prompt == "r1_zero")
    boxed = gsm8k_reward_fn("so \\boxed{4}", "#### 4", config.use_r1_zero_format)
    assert boxed["format_reward"] == (0.0 if prompt == "r1_zero" else 1.0)


@pytest.mark.parametrize(
    ("prompt", "use_r1_zero_format"),
    [("r1_zero", False), ("boxed", True), ("question_only", True)],
)
def test_a_contradicting_prompt_and_format_flag_is_one_line(prompt, use_r1_zero_format, capsys):
    argv = [f"--prompt={prompt}", f"--use_r1_zero_format={use_r1_zero_format}", *OFFLINE]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"--prompt={prompt} contradicts" in err


def test_an_agreeing_prompt_and_format_flag_pass():
    check_config(parse_config(["--prompt=question_only", "--use_r1_zero_format=False", *OFFLINE]))
    check_config(parse_config(["--prompt=r1_zero", "--use_r1_zero_format=True", *OFFLINE]))


def test_minibatches_and_epochs_give_optimizer_steps():
    config = parse_config(
        ["--rollout_batch_size=4", "--group_size=8", "--train_batch_size=8",
         "--epochs_per_rollout_batch=3", *OFFLINE]
    )  # fmt: skip
    check_config(config)
    assert (config.minibatch_size, config.optimizer_steps_per_rollout_batch) == (8, 12)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train_batch_size=5"], "--train_batch_size=5 does not divide the 32 rollouts"),
        (["--train_batch_size=64"], "--train_batch_size=64 is more than the 32 rollouts"),
        (["--train_batch_size=0"], "--train_batch_size must be positive"),
        (["--epochs_per_rollout_batch=0"], "--epochs_per_rollout_batch must be positive"),
        (
            ["--loss_type=no_baseline", "--adapters=tests/adapters.py"],
            "--adapters computes advantages, which --loss_type=no_baseline does not use",
        ),
    ],
)
def test_invalid_combinations_are_one_line_errors(flags, message, capsys):
    argv = ["--rollout_batch_size=4", "--group_size=8", *flags, *OFFLINE]
    with pytest.raises(ConfigError, match=message.replace("+", r"\+")):
        check_config(parse_config(argv))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and message in err


def test_a_run_resumed_with_another_loss_type_normalization_or_schedule_is_refused():
    before = dataclasses.asdict(Config())
    for change in (
        {"loss_type": "no_baseline"},
        {"length_normalization": "constant"},
        {"epochs_per_rollout_batch": 2},
        {"train_batch_size": 1024},
        {"prompt": "r1_zero"},
    ):
        assert set(config_changes(before, dataclasses.replace(Config(), **change))) == set(change)
    # A run from before these flags existed had today's values.
    old = {k: v for k, v in before.items() if k not in ("loss_type", "length_normalization")}
    assert config_changes(old, Config()) == {}


def test_the_evaluation_script_takes_a_runs_prompt(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"prompt": "question_only", "use_r1_zero_format": False})
    )
    from_run = resolved(EvalConfig(run=str(tmp_path)))
    assert (from_run.prompt, from_run.use_r1_zero_format) == ("question_only", False)
    alone = resolved(EvalConfig(prompt="question_only"))
    assert alone.use_r1_zero_format is False  # implied, as the training script implies it
    assert resolved(EvalConfig()).prompt is None and resolved(EvalConfig()).use_r1_zero_format


def test_the_cost_estimate_counts_every_optimizer_step_and_every_epochs_tokens():
    tokenizer = AutoTokenizer.from_pretrained(TINY)
    train, test = load_problems("arith", "train"), load_problems("arith", "test")
    sizes = ["--n_grpo_steps=2", "--rollout_batch_size=4", "--group_size=4", "--eval_n=4"]
    on_policy = plan_run(parse_config([*sizes, *OFFLINE]), tokenizer, train[:50], test)
    flags = ["--epochs_per_rollout_batch=2", "--train_batch_size=8"]
    off_policy = plan_run(parse_config([*sizes, *flags, *OFFLINE]), tokenizer, train[:50], test)
    assert (on_policy.forward_backwards_per_step, off_policy.forward_backwards_per_step) == (1, 4)
    assert off_policy.max_datums_per_forward_backward == 8
    assert off_policy.expected.trained == 2 * on_policy.expected.trained > 0
    assert off_policy.expected.sampled == on_policy.expected.sampled
