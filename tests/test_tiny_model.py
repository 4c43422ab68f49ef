"""The committed tiny Qwen3 fixture: offline, small, and tokenizing GSM8K as the harness needs."""

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness import tiny_model
from harness.data.gsm8k import read_jsonl_problems
from scripts.make_tiny_model import Args

TAGS = ("<think>", "</think>", "<answer>", "</answer>")
ODD_UNICODE = (
    "🙂👩‍👩‍👧 emoji with a zero-width joiner",
    "你好，世界！数学题：３＋４＝？",
    "مرحبا بالعالم",
    "e\u0301 combining accent, \u00a0 no-break space, \u200b zero width",
    "tabs\tand\r\nwindows newlines\n\n\nand trailing spaces   ",
    "\x00\x07 control bytes \U0010ffff",
    "  leading spaces, $1,234.50 and 18.0% and -7/3",
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path):
    return AutoTokenizer.from_pretrained(tiny_model_dir, local_files_only=True)


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path):
    return AutoModelForCausalLM.from_pretrained(tiny_model_dir, local_files_only=True).eval()


@pytest.fixture(scope="module")
def gsm8k_texts(gsm8k_dir: Path) -> list[str]:
    """Questions and answers of the first 300 GSM8K test rows."""
    with (gsm8k_dir / "test.jsonl").open(encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(300), f, strict=False)]
    return [text for row in rows for text in (row["question"], row["answer"])]


def test_model_is_small_float32_qwen3(model) -> None:
    assert model.config.model_type == "qwen3"
    assert model.dtype == torch.float32
    assert model.config.tie_word_embeddings
    assert 0 < sum(p.numel() for p in model.parameters()) < 1_000_000


def test_fixture_directory_is_a_few_megabytes(tiny_model_dir: Path) -> None:
    assert sum(f.stat().st_size for f in tiny_model_dir.iterdir()) < 4 * 2**20


def test_model_vocabulary_covers_tokenizer(model, tokenizer) -> None:
    assert len(tokenizer) <= model.config.vocab_size
    assert max(tokenizer.get_vocab().values()) < model.config.vocab_size


def test_special_ids_agree_between_tokenizer_and_model(model, tokenizer) -> None:
    assert tokenizer.eos_token == "<|endoftext|>"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    assert tokenizer.bos_token is None
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.generation_config.eos_token_id == tokenizer.eos_token_id
    for token in ("<|im_start|>", "<|im_end|>"):
        assert tokenizer.convert_tokens_to_ids(token) in tokenizer.all_special_ids
    chat_ids = tokenizer.encode("<|im_start|>hi<|im_end|><|endoftext|>")
    assert tokenizer.decode(chat_ids, skip_special_tokens=True) == "hi"


def test_encoding_adds_no_bos_or_eos(tokenizer) -> None:
    ids = tokenizer.encode("7")
    assert tokenizer.convert_ids_to_tokens(ids) == ["7"]


def test_every_digit_is_its_own_token(tokenizer) -> None:
    ids = tokenizer.encode("Natalia sold 48/2 = <<48/2=24>>24 clips, $1,234.05 total.")
    digits = [t for t in tokenizer.convert_ids_to_tokens(ids) if any(c.isdigit() for c in t)]
    assert "".join(digits) == "4824822424123405"
    assert all(len(t) == 1 for t in digits)
    # No vocabulary entry can ever merge a digit with anything else.
    assert all(len(t) == 1 for t in tokenizer.get_vocab() if any(c.isdigit() for c in t))


def test_tags_are_single_non_special_tokens(tokenizer) -> None:
    text = "<think> 3 + 4 = 7 </think> <answer>7</answer>"
    ids = tokenizer.encode(text)
    for tag in TAGS:
        assert len(tokenizer.encode(tag)) == 1
        assert tokenizer.convert_tokens_to_ids(tag) in ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_round_trip_is_lossless_on_gsm8k_and_odd_unicode(tokenizer, gsm8k_texts) -> None:
    for text in [*gsm8k_texts, *ODD_UNICODE]:
        assert tokenizer.decode(tokenizer.encode(text)) == text


@settings(max_examples=300, deadline=None)
@given(text=st.text())
def test_round_trip_is_lossless_on_any_string(tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_model_gives_finite_logits_of_the_right_shape(model, tokenizer) -> None:
    batch = tokenizer(["What is 2 + 3?", "<think> 5 </think> <answer>5</answer>"], padding=True)
    input_ids_BT = torch.tensor(batch["input_ids"])
    with torch.no_grad():
        logits_BTV = model(
            input_ids=input_ids_BT, attention_mask=torch.tensor(batch["attention_mask"])
        ).logits
    assert logits_BTV.shape == (*input_ids_BT.shape, model.config.vocab_size)
    assert torch.isfinite(logits_BTV).all()


def test_committed_weights_are_what_the_script_builds(tiny_model_dir, model):
    rebuilt = tiny_model.build_model(tiny_model_dir, seed=Args().seed).state_dict()
    committed = model.state_dict()
    assert rebuilt.keys() == committed.keys()
    assert all(torch.equal(rebuilt[k], committed[k]) for k in committed)
    reseeded = tiny_model.build_model(tiny_model_dir, seed=1).state_dict()
    assert not torch.equal(reseeded["lm_head.weight"], committed["lm_head.weight"])


def test_build_model_takes_other_shapes(tiny_model_dir, tokenizer) -> None:
    shape = tiny_model.ModelShape(hidden=32, layers=1, heads=2, kv_heads=1, head_dim=8)
    model = tiny_model.build_model(tiny_model_dir, shape)
    assert model.config.num_hidden_layers == 1
    assert model.config.hidden_size == 32
    assert model.config.vocab_size >= len(tokenizer)


def test_model_shape_rejects_bad_sizes() -> None:
    with pytest.raises(ValueError, match="kv_heads"):
        tiny_model.ModelShape(heads=4, kv_heads=3)
    with pytest.raises(ValueError, match="layers"):
        tiny_model.ModelShape(layers=0)


def test_committed_tokenizer_is_what_training_gives(tiny_model_dir, gsm8k_dir):
    problems = read_jsonl_problems(gsm8k_dir / "train.jsonl")
    corpus = tiny_model.tokenizer_corpus(problems)
    trained = json.loads(tiny_model.train_tokenizer(corpus, Args().vocab_size).to_str())
    committed = json.loads((tiny_model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    for part in ("model", "added_tokens", "normalizer", "pre_tokenizer", "decoder"):
        assert trained[part] == committed[part], part


def test_tokenizer_training_rejects_a_vocabulary_below_the_byte_alphabet():
    with pytest.raises(ValueError, match="vocab_size"):
        tiny_model.train_tokenizer(["1 + 1 = 2"], vocab_size=100)
