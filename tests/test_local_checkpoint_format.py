"""The local checkpoint on disk (`checkpoint_format`), the memory budget (`budget`) and the
training client's collaborators: checkpoints of the layout before format versions still load,
a damaged or foreign one fails in one line, and a training client works without a service."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from tinker import types

from harness.backends.local import LocalServiceClient, LocalTrainingClient
from harness.backends.local.budget import (
    MIN_TRAIN_TOKENS_PER_CHUNK,
    train_bytes_per_token,
    train_tokens_per_chunk,
)
from harness.backends.local.checkpoint_format import (
    FORMAT_VERSION,
    META_FILE,
    OPTIMIZER_FILE,
    CheckpointFormatError,
    CheckpointMeta,
    read_meta,
    write_checkpoint,
    write_meta,
)
from harness.backends.local.models import LoraSpec, adapted, load_base_model
from harness.backends.local.optimizer import new_optimizer
from harness.backends.local.storage import CheckpointStore, TinkerPath, saved_optimizer_steps
from harness.backends.local.weather import Calm
from harness.serve import rest

ADAM = types.AdamParams(learning_rate=0.02)
SPEC = {"rank": 4, "seed": 3, "train_mlp": True, "train_attn": True, "train_unembed": True}


def datum(tokens: list[int]) -> types.Datum:
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
            "logprobs": np.full(n, -7.0, dtype=np.float32),
            "advantages": np.linspace(-1, 1, n, dtype=np.float32),
        },
    )


DATA = [datum([5, 9, 14, 2, 7, 30]), datum([11, 3, 8, 21]), datum(list(range(40, 90)))]


def logprobs(client) -> np.ndarray:
    output = client.forward(DATA, "ppo").result()
    return np.concatenate([out["logprobs"].to_numpy() for out in output.loss_fn_outputs])


def trained(service: LocalServiceClient, base: str, steps: int = 2):
    client = service.create_lora_training_client(base, **{k: SPEC[k] for k in ("rank", "seed")})
    client = client.result()
    for _ in range(steps):
        client.forward_backward(DATA, "ppo").result()
        client.optim_step(ADAM).result()
    return client


def directory_of(service: LocalServiceClient, path: str) -> Path:
    return service.store.resolve(path)


# -- the layout before format versions ------------------------------------------------------------


def previous_layout(kind: str, base: str, storage: Path, saved_at: float) -> dict:
    """`checkpoint.json` as the code before `checkpoint_format` wrote it: no format version."""
    return {
        "kind": kind,
        "base_model": base,
        "model_dir": os.path.relpath(Path(base).resolve(), storage.resolve()),
        "lora": SPEC,
        "user_metadata": {"note": "old"},
        "ttl_seconds": None,
        "saved_at": saved_at,
        "expires_at": None,
    }


def first_layout(kind: str, base: str) -> dict:
    """`checkpoint.json` as the local backend's first version wrote it: an absolute model
    directory, no lifetimes, no user metadata."""
    return {"kind": kind, "base_model": base, "model_dir": str(Path(base).resolve()), "lora": SPEC}


@pytest.mark.parametrize("layout", ["previous", "first"])
def test_a_checkpoint_written_before_format_versions_loads_samples_and_lists(
    tmp_path, tiny_model_dir, layout
):
    base = str(tiny_model_dir)
    service = LocalServiceClient(tmp_path / "storage", seed=0)
    client = trained(service, base)
    state_path = client.save_state("old").result().path
    sampler_path = client.save_weights_for_sampler("old").result().path
    for path, kind in ((state_path, "weights"), (sampler_path, "sampler_weights")):
        meta = (
            previous_layout(kind, base, service.store.root, saved_at=1000.0)
            if layout == "previous"
            else first_layout(kind, base)
        )
        # As the old code's write_meta wrote it.
        (directory_of(service, path) / META_FILE).write_text(
            json.dumps(meta, indent=2, sort_keys=True)
        )

    fresh = LocalServiceClient(tmp_path / "storage", seed=0)  # as a new process would
    resumed = fresh.create_training_client_from_state_with_optimizer(state_path).result()
    np.testing.assert_allclose(logprobs(resumed), logprobs(client), atol=1e-6)
    assert saved_optimizer_steps(tmp_path / "storage", state_path) == 2
    # The AdamW moments came along: the next step is the one the original takes.
    for each in (resumed, client):
        each.forward_backward(DATA, "ppo").result()
        each.optim_step(ADAM).result()
    np.testing.assert_allclose(logprobs(resumed), logprobs(client), atol=1e-6)

    sampler = fresh.create_sampling_client(model_path=sampler_path).result()
    assert sampler.get_base_model() == base
    records = fresh.store.saved()
    assert {record.meta.format_version for record in records} == {0}
    run = rest.training_run(client.model_id, records)
    assert (run.base_model, run.is_lora, run.lora_rank) == (base, True, 4)
    expected = {"note": "old"} if layout == "previous" else None
    assert [c.user_metadata for c in rest.checkpoints_newest_first(records)] == [expected] * 2

    # Changing its lifetime keeps the rest of what it says.
    fresh.store.set_ttl(sampler_path, 7200)
    changed = read_meta(directory_of(fresh, sampler_path))
    assert changed.lora == LoraSpec(**SPEC) and changed.base_model == base
    assert changed.expires_at is not None


# -- the record ---------------------------------------------------------------------------------


def test_the_metadata_round_trips_and_carries_its_format_version(tmp_path):
    meta = CheckpointMeta(
        kind="weights",
        base_model="fixtures/tiny-qwen3",
        model_dir="../fixtures/tiny-qwen3",
        lora=LoraSpec(**SPEC),
        user_metadata={"step": "3"},
        ttl_seconds=3600,
        saved_at=10.5,
        expires_at=3610.5,
    )
    write_meta(tmp_path, meta)
    assert read_meta(tmp_path) == meta
    written = json.loads((tmp_path / META_FILE).read_text())
    assert written["format_version"] == FORMAT_VERSION == 1
    assert written["lora"] == SPEC
    full = CheckpointMeta("sampler_weights", "m", "m", lora=None)
    write_meta(tmp_path, full)
    assert read_meta(tmp_path) == full


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("{not json", "not JSON: Expecting property name enclosed in double quotes at line 1"),
        (b"\xff\xfe", "not text"),
        ("[1, 2]", "a JSON list, not an object"),
        (json.dumps({"kind": "weights", "base_model": "m"}), "lacks model_dir, lora"),
        (json.dumps({**first_layout("adapter", "m"), "lora": None}), "kind 'adapter'"),
        (json.dumps({**first_layout("weights", "m"), "lora": {"rank": 4}}), "not a LoRA spec"),
        (json.dumps({**first_layout("weights", "m"), "ttl_seconds": "soon"}), "not an integer"),
        (json.dumps({**first_layout("weights", "m"), "base_model": 7}), "base_model 7"),
        (
            json.dumps({**first_layout("weights", "m"), "format_version": FORMAT_VERSION + 1}),
            f"checkpoint format {FORMAT_VERSION + 1}, newer than the {FORMAT_VERSION}"
            " this harness reads: upgrade the harness",
        ),
    ],
)
def test_a_damaged_or_foreign_checkpoint_fails_in_one_line_naming_its_file(
    tmp_path, content, reason
):
    service = LocalServiceClient(tmp_path, seed=0)
    path = TinkerPath("local-someone-train-0", "weights", "bad")
    directory = service.store.directory(path)
    directory.mkdir(parents=True)
    file = directory / META_FILE
    file.write_bytes(content) if isinstance(content, bytes) else file.write_text(content)
    for load in (
        service.create_training_client_from_state,
        service.create_training_client_from_state_with_optimizer,
        lambda p: service.create_sampling_client(model_path=p),
    ):
        with pytest.raises(CheckpointFormatError) as raised:
            load(str(path)).result()
        message = str(raised.value)
        assert "\n" not in message and reason in message
        assert message.startswith("unreadable checkpoint (")
        assert message.endswith(f"): {directory / META_FILE}")
    assert directory.is_dir()  # nothing is deleted for being unreadable


# -- writing ------------------------------------------------------------------------------------


def test_a_write_that_fails_leaves_the_checkpoint_it_replaces_whole(
    tmp_path, tiny_model_dir, monkeypatch
):
    from harness.backends.local import checkpoint_format

    model = adapted(load_base_model(tiny_model_dir, torch.device("cpu"), torch.float32), None)
    optimizer = new_optimizer([p for p in model.parameters() if p.requires_grad])
    directory = tmp_path / "run" / "weights" / "ckpt"
    meta = CheckpointMeta("weights", "m", "m", lora=None, saved_at=1.0)
    write_checkpoint(directory, meta, model, optimizer, "tinker://run/weights/ckpt")
    before = {f.name: f.read_bytes() for f in directory.iterdir()}
    assert set(before) == {META_FILE, OPTIMIZER_FILE, "model.safetensors"}

    def full_disk(model, staging):
        (staging / "model.safetensors").write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoint_format, "save_weights", full_disk)
    with pytest.raises(OSError, match=r"^\[Errno 28\] no space left writing tinker://run/"):
        write_checkpoint(directory, meta, model, optimizer, "tinker://run/weights/ckpt")
    assert {f.name: f.read_bytes() for f in directory.iterdir()} == before
    assert sorted(p.name for p in directory.parent.iterdir()) == ["ckpt"]  # no staging left


# -- the budget and the training client's collaborators -------------------------------------------


def test_the_training_chunk_fits_the_budget_and_never_drops_below_its_floor(tiny_model_dir):
    model = load_base_model(tiny_model_dir, torch.device("cpu"), torch.float32)
    per_token = train_bytes_per_token(model, model.get_output_embeddings().weight.shape[0])
    assert train_tokens_per_chunk(model, 1) == MIN_TRAIN_TOKENS_PER_CHUNK
    for tokens in (100, 1000, 12345):
        budget = tokens * per_token + per_token - 1
        assert train_tokens_per_chunk(model, budget) == tokens


def test_a_training_client_works_with_the_collaborators_it_is_handed_and_no_service(
    tmp_path, tiny_model_dir
):
    base = load_base_model(tiny_model_dir, torch.device("cpu"), torch.float32)
    store = CheckpointStore(tmp_path)
    handed: list = []

    def client(budget: int) -> LocalTrainingClient:
        return LocalTrainingClient(
            "local-test-train-0",
            str(tiny_model_dir),
            Path(tiny_model_dir).resolve(),
            adapted(base, LoraSpec(**SPEC)),
            LoraSpec(**SPEC),
            store=store,
            weather=Calm(),
            memory_budget_bytes=budget,
            sampler_for=lambda model: handed.append(("snapshot", model)) or "sampler",
            sampler_at=lambda path: handed.append(("at", path)) or "sampler at path",
            tokenizer=lambda: "tokenizer",
        )

    # A budget of one byte chunks every datum alone: the same logprobs, the same gradient.
    small, large = client(1), client(1 << 30)
    np.testing.assert_allclose(logprobs(small), logprobs(large), rtol=0, atol=1e-6)
    for each in (small, large):
        each.forward_backward(DATA, "ppo").result()
        each.optim_step(ADAM).result()
    np.testing.assert_allclose(logprobs(small), logprobs(large), rtol=0, atol=1e-5)

    path = small.save_state("here").result().path
    assert store.find(TinkerPath("local-test-train-0", "weights", "here")) is not None
    assert saved_optimizer_steps(tmp_path, path) == 1
    assert small.save_weights_and_get_sampling_client().result() == "sampler"
    assert handed[0][0] == "snapshot" and handed[0][1] is not small.model
    assert small.create_sampling_client(path) == "sampler at path"
    assert handed[1] == ("at", path)
    assert small.get_tokenizer() == "tokenizer"
    small.close()
    large.close()
