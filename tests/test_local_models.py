"""Models for the local backend: where they come from, and the merged export."""

import json

import numpy as np
import pytest
import torch
from tinker import types
from transformers import AutoModelForCausalLM, AutoTokenizer

from harness.backends.local import LocalServiceClient


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> LocalServiceClient:
    return LocalServiceClient(tmp_path_factory.mktemp("storage"), seed=0)


def test_a_missing_model_directory_fails_at_once(service, tmp_path):
    future = service.create_lora_training_client(str(tmp_path / "no-such-model"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        future.result(timeout=10)
    with pytest.raises(FileNotFoundError, match=r"no config\.json"):
        service.create_lora_training_client(str(tmp_path)).result(timeout=10)


def test_an_uncached_hub_id_fails_at_once_naming_the_offline_alternative(service):
    future = service.create_sampling_client(base_model="no-such-org/no-such-model-3b")
    with pytest.raises(FileNotFoundError, match="hub") as error:
        future.result(timeout=10)
    assert "local Hugging Face model directory" in str(error.value)


def test_tokenizer_comes_from_the_model_directory(service, tiny_model_dir):
    client = service.create_lora_training_client(str(tiny_model_dir), rank=2).result()
    tokenizer = client.get_tokenizer()
    assert tokenizer.decode(tokenizer.encode("Natalia sold 48 clips")) == "Natalia sold 48 clips"


def test_export_merges_the_adapter_into_a_plain_model(service, tiny_model_dir, tmp_path):
    client = service.create_lora_training_client(str(tiny_model_dir), rank=4, seed=1).result()
    tokens = list(range(20, 40))
    datum = types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={"target_tokens": tokens[1:], "weights": [1.0] * 19},
    )
    for _ in range(3):
        client.forward_backward([datum], "cross_entropy")
        client.optim_step(types.AdamParams(learning_rate=0.05))
    path = client.save_weights_for_sampler("final").result().path
    expected = client.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"]

    out_dir = service.export_merged_model(path, tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(out_dir, dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = merged(input_ids=torch.tensor([tokens[:-1]])).logits[0]
    got = torch.log_softmax(logits, -1).gather(-1, torch.tensor(tokens[1:])[:, None])[:, 0]
    np.testing.assert_allclose(got.numpy(), expected.to_numpy(), atol=1e-5)
    # The unembedding was adapted, so export unties it; the input embedding is the base's.
    assert not json.loads((out_dir / "config.json").read_text())["tie_word_embeddings"]
    assert torch.equal(merged.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert not torch.equal(
        merged.get_output_embeddings().weight, base.get_output_embeddings().weight
    )
    assert AutoTokenizer.from_pretrained(out_dir).encode("12") == client.get_tokenizer().encode(
        "12"
    )
    # It is a base model like any other.
    reloaded = service.create_lora_training_client(str(out_dir), rank=2).result()
    again = reloaded.forward([datum], "cross_entropy").result().loss_fn_outputs[0]["logprobs"]
    np.testing.assert_allclose(again.to_numpy(), expected.to_numpy(), atol=1e-5)
