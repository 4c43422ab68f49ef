"""Throughput of the local backend: batched sampling versus `model.generate`, and training.

Run from the repository root:

    python scripts/bench_local.py

For the tiny fixture and for a ~11M-parameter Qwen3 built at run time (random weights, the
fixture's tokenizer) it prints sampled tokens/s for P prompts x G samples x T tokens through the
backend (all requests in flight, as the GRPO loop sends them) and through one `model.generate`
call per prompt, and training tokens/s for a ppo `forward_backward` + `optim_step` on N
sequences of prompt + T tokens.
"""

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tyro
from tinker import types
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.backends.local import LocalServiceClient
from harness.data.gsm8k import read_jsonl_problems
from harness.datums import rollout_to_datum
from harness.prompts import format_prompt
from harness.tiny_model import ModelShape, count_parameters, save_random_model

REPO_ROOT = Path(__file__).resolve().parent.parent
TINY = REPO_ROOT / "fixtures" / "tiny-qwen3"
SHAPE_11M = ModelShape(hidden=320, layers=8, heads=8, kv_heads=4, head_dim=40, intermediate=1024)


@dataclass
class Args:
    prompts: int = 64
    samples: int = 8
    tokens: int = 128
    train_sequences: int = 512
    lora_rank: int = 32
    skip_generate: bool = False
    """Skip the `model.generate` baseline (it is the slow part)."""


def prompt_tokens(tokenizer, count: int) -> list[list[int]]:
    problems = read_jsonl_problems(REPO_ROOT / "fixtures" / "gsm8k" / "train.jsonl")[:count]
    return [tokenizer.encode(format_prompt(p.question, "r1_zero")) for p in problems]


def bench_backend_sampling(sampler, prompts, args: Args) -> tuple[float, int, list]:
    # stop=[] turns off EOS, so every sample is exactly `tokens` long, like min_new_tokens below.
    params = types.SamplingParams(max_tokens=args.tokens, temperature=1.0, stop=[])
    start = time.perf_counter()
    futures = [sampler.sample(types.ModelInput.from_ints(p), args.samples, params) for p in prompts]
    responses = [f.result() for f in futures]
    seconds = time.perf_counter() - start
    count = sum(len(s.tokens) for r in responses for s in r.sequences)
    return seconds, count, responses


def bench_generate(model_dir: Path, prompts, args: Args) -> tuple[float, int]:
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    start = time.perf_counter()
    count = 0
    with torch.inference_mode():
        for prompt in prompts:
            output = model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=True,
                temperature=1.0,
                top_k=0,
                top_p=1.0,
                num_return_sequences=args.samples,
                max_new_tokens=args.tokens,
                min_new_tokens=args.tokens,
                pad_token_id=0,
            )
            count += output[:, len(prompt) :].numel()
    return time.perf_counter() - start, count


def training_data(prompts, responses, count: int) -> list[types.Datum]:
    rng = np.random.default_rng(0)
    rollouts = [
        (prompt, sequence)
        for prompt, response in zip(prompts, responses, strict=True)
        for sequence in response.sequences
    ]
    return [
        rollout_to_datum(prompt, s.tokens, s.logprobs, float(rng.normal()))
        for prompt, s in (rollouts * (count // len(rollouts) + 1))[:count]
    ]


def bench_training(client, data: list[types.Datum]) -> tuple[float, int]:
    config = {"clip_low_threshold": 0.8, "clip_high_threshold": 1.2}
    start = time.perf_counter()
    fwd_bwd = client.forward_backward(data, "ppo", config)
    optim = client.optim_step(types.AdamParams(learning_rate=1e-5))
    fwd_bwd.result(), optim.result()
    return time.perf_counter() - start, sum(d.model_input.length for d in data)


def call_latency_ms(client, datum: types.Datum, repeats: int = 20) -> float:
    """Wall time of one forward_backward + optim_step on a single datum."""
    start = time.perf_counter()
    for _ in range(repeats):
        client.forward_backward([datum], "ppo")
        client.optim_step(types.AdamParams(learning_rate=1e-5)).result()
    return 1000 * (time.perf_counter() - start) / repeats


def truncated(datum: types.Datum, length: int) -> types.Datum:
    return types.Datum(
        model_input=types.ModelInput.from_ints(datum.model_input.to_ints()[:length]),
        loss_fn_inputs={k: v.to_numpy()[:length] for k, v in datum.loss_fn_inputs.items()},
    )


def bench(name: str, model_dir: Path, storage: Path, args: Args) -> None:
    service = LocalServiceClient(storage, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = prompt_tokens(tokenizer, args.prompts)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    print(
        f"\n== {name}: {count_parameters(model) / 1e6:.2f}M parameters, torch threads "
        f"{torch.get_num_threads()}, mean prompt {np.mean([len(p) for p in prompts]):.0f} tokens"
    )
    base_sampler = service.create_sampling_client(base_model=str(model_dir)).result()
    bench_backend_sampling(base_sampler, prompts[:2], Args(prompts=2, samples=2, tokens=4))
    seconds, count, _ = bench_backend_sampling(base_sampler, prompts, args)
    backend_rate = count / seconds
    print(
        f"sampling, backend (base weights): {count} tokens in {seconds:.2f} s = "
        f"{backend_rate:,.0f} tokens/s"
    )
    client = service.create_lora_training_client(str(model_dir), rank=args.lora_rank, seed=0)
    client = client.result()
    sampler = client.save_weights_and_get_sampling_client().result()
    seconds, count, responses = bench_backend_sampling(sampler, prompts, args)
    print(
        f"sampling, backend (LoRA rank {args.lora_rank}): {count} tokens in {seconds:.2f} s "
        f"= {count / seconds:,.0f} tokens/s"
    )
    if not args.skip_generate:
        seconds, count = bench_generate(model_dir, prompts, args)
        print(
            f"sampling, model.generate per prompt: {count} tokens in {seconds:.2f} s = "
            f"{count / seconds:,.0f} tokens/s; backend speed-up "
            f"{backend_rate / (count / seconds):.1f}x"
        )
    data = training_data(prompts, responses, args.train_sequences)
    bench_training(client, data[:4])
    seconds, count = bench_training(client, data)
    print(
        f"training, ppo forward_backward + optim_step on {len(data)} sequences: {count} tokens"
        f" in {seconds:.2f} s = {count / seconds:,.0f} tokens/s"
    )
    for length in (8, data[0].model_input.length):
        latency = call_latency_ms(client, truncated(data[0], length))
        print(f"one {length}-token datum, forward_backward + optim_step: {latency:.1f} ms")
    service.close()


def main(args: Args) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        scratch_dir = Path(scratch)
        bench("tiny fixture", TINY, scratch_dir / "storage-tiny", args)
        model_11m = scratch_dir / "qwen3-11m"
        save_random_model(TINY, model_11m, SHAPE_11M)
        bench("random 11M Qwen3", model_11m, scratch_dir / "storage-11m", args)


if __name__ == "__main__":
    main(tyro.cli(Args))
