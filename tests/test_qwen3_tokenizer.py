"""The cloud path's token handling with Qwen3's real vocabulary (harness/qwen3_tokenizer): the
ids and flags Qwen3-8B publishes, both prompts on real GSM8K questions, stop sequences, decoding
for the reward, the estimate's token counts, and a short training run through the local server
with a tiny random model of that vocabulary."""

from __future__ import annotations

import numpy as np
import pytest
import tinker
from transformers import AutoTokenizer

from harness import tiny_model
from harness.cli import main, parse_config
from harness.cost import Tokens, sampling_tokens
from harness.data import BatchCursor, load_gsm8k, next_batch
from harness.estimate import plan_run
from harness.evaluation import validation_subset
from harness.jsonl import read_json_lines
from harness.loop import score
from harness.prompts import format_prompt
from harness.qwen3_tokenizer import QWEN3_TOKENIZER_DIR
from harness.rewards import gsm8k_reward_fn, make_reward_fn
from harness.rollouts import encode_prompts, stop_sequences
from tests.support.varied_reward_run import varied_reward

THINK, THINK_END, IM_END, ENDOFTEXT = 151667, 151668, 151645, 151643


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(QWEN3_TOKENIZER_DIR)


@pytest.fixture(scope="module")
def questions(gsm8k_dir):
    return load_gsm8k("test", gsm8k_dir)[:50]


def test_added_tokens_have_qwen3_8bs_ids_and_special_flags(tokenizer):
    assert len(tokenizer) == 151_669
    expected = {
        "<|endoftext|>": (151643, True),
        "<|im_start|>": (151644, True),
        "<|im_end|>": (151645, True),
        "<|object_ref_start|>": (151646, True),
        "<|video_pad|>": (151656, True),
        "<tool_call>": (151657, False),
        "<|fim_prefix|>": (151659, False),
        "</tool_response>": (151666, False),
        "<think>": (151667, False),
        "</think>": (151668, False),
    }
    decoder = tokenizer.added_tokens_decoder
    for content, (token_id, special) in expected.items():
        assert decoder[token_id].content == content
        assert decoder[token_id].special is special, content
    assert {i for i in decoder} == set(range(151643, 151669))
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == (
        "<|im_end|>",
        "<|endoftext|>",
        None,
    )


def test_published_qwen_token_ids(tokenizer):
    # Qwen2.5's default system prompt, as several public projects print its ids.
    text = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
    assert tokenizer.encode(text) == [
        151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198,
    ]  # fmt: skip
    assert tokenizer.encode("What is the capital of France?") == [
        3838, 374, 279, 6722, 315, 9625, 30,
    ]  # fmt: skip


def test_digits_are_single_tokens_and_text_round_trips(tokenizer, questions):
    for problem in questions:
        for text in (problem.question, problem.answer):
            assert tokenizer.decode(tokenizer.encode(text)) == text
    digits = tokenizer.encode("12345")
    assert len(digits) == 5 and tokenizer.decode(digits) == "12345"


def test_the_r1_zero_prompts_trailing_think_is_one_token(tokenizer, questions):
    prompts = encode_prompts(tokenizer, [format_prompt(p.question, "r1_zero") for p in questions])
    for prompt, problem in zip(prompts, questions, strict=True):
        ids = prompt.to_ints()
        # The template names the tags twice before; the prompt ends in the opening tag, one token.
        assert ids[-1] == THINK and ids.count(THINK) == 3 and ids.count(THINK_END) == 2
        assert tokenizer.decode(ids) == format_prompt(problem.question, "r1_zero")


def test_the_boxed_prompt_holds_no_added_token(tokenizer, questions):
    for problem in questions:
        prompt = format_prompt(problem.question, "boxed")
        ids = tokenizer.encode(prompt)
        assert max(ids) < ENDOFTEXT and tokenizer.decode(ids) == prompt


def test_stop_sequences_of_a_hybrid_and_a_base_model(tokenizer):
    # Qwen3-8B (hybrid) ends a turn with <|im_end|> and its generation config also stops on
    # <|endoftext|>; Qwen3-8B-Base's tokenizer names <|endoftext|> as EOS. The stop list
    # carries each as a string, which is one token.
    hybrid = stop_sequences(tokenizer, use_r1_zero_format=True)
    assert hybrid == ["</answer>", "<|im_end|>", "<|endoftext|>"]
    base_tokenizer = AutoTokenizer.from_pretrained(QWEN3_TOKENIZER_DIR, eos_token="<|endoftext|>")
    assert stop_sequences(base_tokenizer, use_r1_zero_format=True) == ["</answer>", "<|endoftext|>"]
    assert tokenizer.encode("<|im_end|>") == [IM_END]
    assert tokenizer.encode("<|endoftext|>") == [ENDOFTEXT]
    # `</answer>` is no token of Qwen's vocabulary: the service matches it in decoded text.
    answer_close = tokenizer.encode("</answer>")
    assert len(answer_close) == 3 and tokenizer.decode(answer_close) == "</answer>"
    # The plain prompt sends no stop list: the service's own EOS stop ends the response.
    assert stop_sequences(tokenizer, use_r1_zero_format=False) is None


def test_decoding_skips_special_tokens_but_keeps_think_close(tokenizer):
    response = [*tokenizer.encode(" 2 + 3 = 5 "), THINK_END]
    response += [*tokenizer.encode(" <answer> 5 </answer>"), IM_END]
    text = tokenizer.decode(response, skip_special_tokens=True)
    assert text == " 2 + 3 = 5 </think> <answer> 5 </answer>"
    assert gsm8k_reward_fn(text, "#### 5") == {
        "reward": 1.0,
        "format_reward": 1.0,
        "answer_reward": 1.0,
    }


def test_the_loop_scores_decoded_qwen3_responses(tokenizer, questions):
    problem = questions[0]
    answer = problem.answer.rpartition("####")[2].strip()

    def sequence(text: str, end: list[int]) -> tinker.SampledSequence:
        tokens = [*tokenizer.encode(text), *end]
        return tinker.SampledSequence(
            stop_reason="stop",
            sequence_id="s:0",
            _tokens_list=tokens,
            _logprobs_list=[-0.5] * len(tokens),
        )

    response = tinker.SampleResponse(
        sequences=[
            sequence(f" reasoning </think> <answer> {answer} </answer>", [IM_END]),
            sequence(f" reasoning </think> <answer> {answer}1 </answer>", [IM_END]),
            sequence(f" reasoning <answer> {answer} </answer>", [ENDOFTEXT]),
        ]
    )
    scored = score([response], [problem], tokenizer, make_reward_fn(True))
    assert scored.format_P_G.tolist() == [[1.0, 1.0, 0.0]]
    assert scored.answer_P_G.tolist() == [[1.0, 0.0, 1.0]]
    assert scored.rewards_P_G[0, 0] == pytest.approx(1.0)


def test_the_estimate_counts_the_prompts_the_loop_sends(tokenizer, gsm8k_dir):
    config = parse_config(
        [
            "--n_grpo_steps=3",
            "--rollout_batch_size=5",
            "--group_size=4",
            "--eval_every=2",
            "--eval_n=7",
            "--sampling_max_tokens=200",
            "--seed=4",
        ]
    )
    # A slice of the train split keeps the test quick; the plan takes any problem list.
    train_problems = load_gsm8k("train", gsm8k_dir)[:300]
    test_problems = load_gsm8k("test", gsm8k_dir)
    plan = plan_run(config, tokenizer, train_problems, test_problems)

    def sent(problems) -> int:
        prompts = encode_prompts(
            tokenizer, [format_prompt(p.question, "r1_zero") for p in problems]
        )
        responses = [tinker.SampleResponse(sequences=[]) for _ in prompts]
        return sampling_tokens(prompts, responses).prefill

    cursor, rollout = BatchCursor(), 0
    for _ in range(config.n_grpo_steps):
        indices, cursor = next_batch(cursor, len(train_problems), 5, config.seed)
        rollout += sent([train_problems[i] for i in indices])
    validation = sent([test_problems[i] for i in validation_subset(len(test_problems), 7, 4)])
    assert plan.rollout_prompt_tokens == rollout
    assert plan.validation_prompt_tokens == validation
    assert plan.validations == 3  # steps 0 and 2, and the final one
    assert plan.prefill == rollout + 3 * validation
    assert plan.upper == Tokens(
        prefill=plan.prefill,
        sampled=(3 * 5 * 4 + 3 * 7) * 200,
        trained=4 * rollout + 3 * 5 * 4 * 199,
    )
    assert plan.lower == Tokens(prefill=plan.prefill, sampled=3 * 5 * 4 + 3 * 7, trained=0)
    solutions = [len(tokenizer.encode(p.answer)) for p in train_problems]
    assert plan.assumed_response_tokens == pytest.approx(np.mean(solutions))


@pytest.mark.slow
def test_a_tiny_model_of_qwen3s_vocabulary_trains_through_the_local_server(tmp_path, gsm8k_dir):
    shape = tiny_model.ModelShape(
        hidden=8, layers=1, heads=2, kv_heads=1, head_dim=4, intermediate=16
    )
    model_dir = tmp_path / "tiny-qwen3-vocab"
    model = tiny_model.save_random_model(QWEN3_TOKENIZER_DIR, model_dir, shape, seed=0)
    assert model.config.vocab_size == 151_680 and model.config.eos_token_id == IM_END
    log_path = tmp_path / "run"
    flags = [
        "--backend=local-server",
        f"--model_name={model_dir}",
        f"--dataset_path={gsm8k_dir}",
        f"--log_path={log_path}",
        "--n_grpo_steps=2",
        "--rollout_batch_size=4",
        "--group_size=2",
        "--sampling_max_tokens=12",
        "--eval_every=2",
        "--eval_n=3",
        "--learning_rate=1e-2",
    ]
    assert main(flags, reward_fn=varied_reward) == 0
    rows = read_json_lines(log_path / "metrics.jsonl")
    assert [row["progress/grpo_step"] for row in rows] == [0, 1, 2]
    trained = [row for row in rows[:-1] if row["train/datums"] > 0]
    assert trained, "the varied reward gives groups with reward variance"
    for row in trained:
        assert abs(row["train/kl_sampler_trainer"]) < 1e-4
    # Validation prompts (3) and rollouts (4 x 2 samples) of up to 12 tokens each.
    assert rows[0]["tokens/sampled"] <= (3 + 8) * 12
    records = read_json_lines(log_path / "eval" / "step_000000.jsonl")
    assert all(r["prompt_tokens"] > 100 for r in records)  # R1-Zero prompts in Qwen3's vocabulary
