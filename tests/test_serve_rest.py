"""Checkpoint lifetimes and the REST calls of `tinker.RestClient`, through the real SDK: TTLs
run out on an injected clock (the checkpoint is then gone, and using it is the SDK's own
error), checkpoints can be deleted and their TTL changed, and training runs and checkpoints
are listed as the SDK reads them."""

from __future__ import annotations

from pathlib import Path

import pytest
import tinker
from tinker import types

from tests.support.serve import KEY, MODEL, sdk_session, serving

TIMEOUT_S = 30
HOUR = 3600


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clock() -> Clock:
    return Clock()


@pytest.fixture(scope="module")
def storage(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("storage")


@pytest.fixture(scope="module")
def server(storage, clock):
    with serving(storage, clock=clock) as server:
        yield server


@pytest.fixture(scope="module")
def sdk(server):
    with sdk_session(server) as client:
        yield client


@pytest.fixture(scope="module")
def rest(server) -> tinker.RestClient:
    return tinker.RestClient(base_url=server.base_url, api_key=KEY)


@pytest.fixture
def trainer(sdk):
    return sdk.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)


def run_of(path: str) -> str:
    return types.ParsedCheckpointTinkerPath.from_tinker_path(path).training_run_id


def directory(storage: Path, path: str) -> Path:
    return storage / path.removeprefix("tinker://")


def test_a_checkpoint_past_its_ttl_is_gone_and_using_it_is_the_sdks_error(
    sdk, rest, trainer, clock, storage
):
    state = trainer.save_state("short", ttl_seconds=HOUR).result(TIMEOUT_S).path
    sampler = trainer.save_weights_for_sampler("short", ttl_seconds=2 * HOUR).result(TIMEOUT_S)
    kept = trainer.save_state("kept").result(TIMEOUT_S).path  # no TTL: never expires
    listed = {c.tinker_path: c for c in rest.list_checkpoints(run_of(state)).result().checkpoints}
    assert listed[state].expires_at.timestamp() == pytest.approx(clock.now + HOUR)
    assert listed[kept].expires_at is None

    clock.now += HOUR + 1
    with pytest.raises(tinker.RequestFailedError, match=f"checkpoint {state} expired at"):
        sdk.create_training_client_from_state_with_optimizer(state).result(TIMEOUT_S)
    assert not directory(storage, state).exists()
    sdk.create_sampling_client(model_path=sampler.path).result(TIMEOUT_S)  # an hour to go
    clock.now += HOUR
    with pytest.raises(tinker.NotFoundError, match="expired"):
        sdk.create_sampling_client(model_path=sampler.path).result(TIMEOUT_S)
    assert [c.tinker_path for c in rest.list_checkpoints(run_of(state)).result().checkpoints] == [
        kept
    ]


def test_a_ttl_below_tinkers_minimum_is_refused_and_saves_nothing(trainer, storage):
    with pytest.raises(tinker.RequestFailedError, match="ttl_seconds must be at least 3600"):
        trainer.save_state("too-short", ttl_seconds=60).result(TIMEOUT_S)
    assert not list(storage.rglob("*too-short*"))


def test_delete_and_set_ttl_of_a_checkpoint(trainer, rest, clock, storage):
    path = trainer.save_state("doomed").result(TIMEOUT_S).path
    other = trainer.save_weights_for_sampler("other").result(TIMEOUT_S).path
    rest.delete_checkpoint_from_tinker_path(path).result()
    assert not directory(storage, path).exists()
    with pytest.raises(tinker.NotFoundError, match=f"no checkpoint at {path}"):
        rest.delete_checkpoint_from_tinker_path(path).result()
    rest.set_checkpoint_ttl_from_tinker_path(other, 2 * HOUR).result()
    (checkpoint,) = rest.list_checkpoints(run_of(other)).result().checkpoints
    assert checkpoint.expires_at.timestamp() == pytest.approx(clock.now + 2 * HOUR)
    clock.now += 2 * HOUR
    assert rest.list_checkpoints(run_of(other)).result().checkpoints == []
    assert not directory(storage, other).exists()


def test_training_runs_and_checkpoints_are_listed_as_the_sdk_reads_them(sdk, rest, clock):
    first = sdk.create_lora_training_client(base_model=MODEL, rank=3, seed=0).result(TIMEOUT_S)
    second = sdk.create_lora_training_client(base_model=MODEL, rank=2, seed=0).result(TIMEOUT_S)
    state = first.save_state("a", user_metadata={"step": "1"}).result(TIMEOUT_S).path
    clock.now += 1
    sampler = first.save_weights_for_sampler("a").result(TIMEOUT_S).path
    clock.now += 1
    newest = second.save_state("b").result(TIMEOUT_S).path

    run = rest.get_training_run(run_of(state)).result()
    assert (run.training_run_id, run.base_model, run.is_lora, run.lora_rank) == (
        run_of(state),
        MODEL,
        True,
        3,
    )
    assert run.last_checkpoint.tinker_path == state
    assert run.last_checkpoint.user_metadata == {"step": "1"}
    assert run.last_sampler_checkpoint.tinker_path == sampler
    assert run.last_sampler_checkpoint.checkpoint_type == "sampler"
    assert run.last_request_time.timestamp() == pytest.approx(clock.now - 1)
    assert rest.get_training_run_by_tinker_path(sampler).result() == run

    listed = rest.list_checkpoints(run_of(state)).result().checkpoints
    assert [(c.checkpoint_id, c.checkpoint_type) for c in listed] == [
        ("sampler_weights/a", "sampler"),
        ("weights/a", "training"),
    ]
    assert all(c.size_bytes > 0 for c in listed)

    runs = rest.list_training_runs(limit=1).result()
    assert [r.training_run_id for r in runs.training_runs] == [run_of(newest)]  # newest first
    assert runs.cursor.limit == 1 and runs.cursor.total_count >= 2
    page = rest.list_training_runs(limit=runs.cursor.total_count).result().training_runs
    assert {run_of(state), run_of(newest)} <= {r.training_run_id for r in page}

    mine = rest.list_user_checkpoints(limit=2).result()
    assert [c.tinker_path for c in mine.checkpoints] == [newest, sampler]
    assert mine.cursor.total_count >= 3
    with pytest.raises(tinker.NotFoundError, match="has no checkpoints on this server"):
        rest.get_training_run("no-such-run").result()
