"""Build the tiny random Qwen3 model and GSM8K tokenizer used as an offline test fixture.

Run from the repository root:

    python scripts/make_tiny_model.py --out fixtures/tiny-qwen3 --seed 0

The pieces (the tokenizer's training, `build_model`, `ModelShape`) are `harness.tiny_model`'s.
"""

import shlex
from dataclasses import asdict, dataclass
from pathlib import Path

import tyro
from transformers import PreTrainedTokenizerFast, Qwen3ForCausalLM

from harness.data.gsm8k import read_jsonl_problems
from harness.tiny_model import (
    EOS_TOKEN,
    VOCAB_MULTIPLE,
    ModelShape,
    build_model,
    count_parameters,
    tokenizer_corpus,
    train_tokenizer,
    wrap_tokenizer,
)


@dataclass(frozen=True)
class Args:
    """Build a tiny random Qwen3 model and its GSM8K tokenizer into one directory."""

    out: Path = Path("fixtures/tiny-qwen3")
    """Directory for tokenizer, model, generation config and README."""
    seed: int = 0
    """Seed of the random weights."""
    vocab_size: int = 2000
    """BPE target size before the four tag tokens; the model rounds up to a multiple of 64."""
    gsm8k_train: Path = Path("fixtures/gsm8k/train.jsonl")
    """GSM8K train jsonl the tokenizer is trained on."""
    shape: tyro.conf.OmitArgPrefixes[ModelShape] = ModelShape()  # noqa: RUF009 (frozen)
    """Model size."""


def reproduce_command(args: Args) -> str:
    """The full command line that rebuilds `args.out`, every flag spelled out."""
    flags = {"out": args.out, "seed": args.seed, "vocab-size": args.vocab_size}
    flags |= {"gsm8k-train": args.gsm8k_train}
    flags |= {name.replace("_", "-"): value for name, value in asdict(args.shape).items()}
    parts = ["python", "scripts/make_tiny_model.py"]
    parts += [f"--{name} {shlex.quote(str(value))}" for name, value in flags.items()]
    return " ".join(parts)


def readme_text(args: Args, model: Qwen3ForCausalLM, tokenizer: PreTrainedTokenizerFast) -> str:
    c = model.config
    return f"""# tiny-qwen3

A randomly initialised `Qwen3ForCausalLM` and a byte-level BPE tokenizer trained on GSM8K, for
offline tests of the local backend. The model has never been trained: its outputs are noise.

Made by (from the repository root; the same flags give byte-identical files):

    {reproduce_command(args)}

## Model

- {count_parameters(model):,} parameters, float32, tied input and output embeddings.
- Hidden {c.hidden_size}, {c.num_hidden_layers} layers, {c.num_attention_heads} attention heads
  ({c.num_key_value_heads} KV heads) of dimension {c.head_dim}, MLP {c.intermediate_size},
  {c.max_position_embeddings} positions.
- Vocabulary {c.vocab_size}: the tokenizer's {len(tokenizer)} tokens rounded up to a multiple of
  {VOCAB_MULTIPLE}.

## Tokenizer

- Trained on the GSM8K train answers and questions, the latter inside the R1-Zero and boxed
  prompt templates.
- Qwen's pre-tokenizer, so every digit is its own token; the 256-byte alphabet makes any unicode
  string round-trip losslessly.
- `{EOS_TOKEN}` (id {tokenizer.eos_token_id}) is EOS and padding; no BOS. `<|im_start|>` and
  `<|im_end|>` are special tokens. `<think>`, `</think>`, `<answer>`, `</answer>` are single added
  tokens that are not special, so decoding with `skip_special_tokens=True` keeps them.
"""


def main(args: Args) -> None:
    tokenizer = wrap_tokenizer(
        train_tokenizer(tokenizer_corpus(read_jsonl_problems(args.gsm8k_train)), args.vocab_size),
        args.shape.max_positions,
    )
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(args.out)
    model = build_model(args.out, args.shape, args.seed)
    model.save_pretrained(args.out)
    (args.out / "README.md").write_text(readme_text(args, model, tokenizer), encoding="utf-8")
    print(
        f"wrote {args.out}: {count_parameters(model):,} parameters, "
        f"tokenizer {len(tokenizer)} tokens, model vocabulary {model.config.vocab_size}"
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
