import dataclasses
import socket

import pytest

from harness.cli import main, parse_config
from harness.config import Config, ConfigError, check_config, resolve_backend

ORIGINAL_README_DEFAULTS = {
    "model_name": "Qwen/Qwen3-8B",
    "base_url": None,
    "lora_rank": 32,
    "n_grpo_steps": 200,
    "learning_rate": 1e-5,
    "rollout_batch_size": 256,
    "group_size": 8,
    "advantage_eps": 1e-6,
    "use_std_normalization": True,
    "cliprange": 0.2,
    "sampling_temperature": 1.0,
    "sampling_max_tokens": 1024,
    "use_r1_zero_format": True,
    "log_path": "/tmp/grpo-tinker",
    "save_every": 20,
    "eval_every": 20,
    "wandb_project": None,
    "wandb_name": None,
}


def test_every_flag_of_the_original_readme_has_its_default():
    config = parse_config([])
    for name, default in ORIGINAL_README_DEFAULTS.items():
        assert getattr(config, name) == default, name
    assert (config.backend, config.dataset_path, config.eval_n) == ("auto", None, 100)
    assert (config.eval_temperature, config.eval_num_samples) == (0.0, 1)  # greedy validation


def test_flags_parse_in_the_readme_style():
    config = parse_config(
        [
            "--n_grpo_steps=5",
            "--rollout_batch_size=8",
            "--group_size=2",
            "--use_std_normalization=False",
            "--use_r1_zero_format=False",
            "--learning_rate=3e-4",
            "--base_url=http://127.0.0.1:8000",
        ]
    )
    assert config.n_grpo_steps == 5 and config.rollout_batch_size == 8 and config.group_size == 2
    assert config.use_std_normalization is False and config.use_r1_zero_format is False
    assert config.learning_rate == 3e-4 and config.base_url == "http://127.0.0.1:8000"


@pytest.mark.parametrize(
    ("environ", "base_url", "backend", "expected"),
    [
        ({}, None, "auto", "local"),
        ({"TINKER_API_KEY": "tml-x"}, None, "auto", "tinker"),
        ({}, "http://127.0.0.1:1", "auto", "tinker"),
        ({"TINKER_API_KEY": "tml-x"}, None, "local", "local"),
    ],
)
def test_auto_backend(environ, base_url, backend, expected):
    config = Config(base_url=base_url, backend=backend)
    assert resolve_backend(config, environ) == expected


def local(tiny_model_dir, gsm8k_dir, **changes):
    fields = {"backend": "local", "model_name": str(tiny_model_dir), "dataset_path": str(gsm8k_dir)}
    return Config(**(fields | changes))


def test_a_good_local_config_passes(tiny_model_dir, gsm8k_dir):
    check_config(local(tiny_model_dir, gsm8k_dir), environ={})


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"group_size": 1}, "--group_size=1 with --use_std_normalization=True"),
        ({"group_size": 0}, "--group_size must be positive"),
        ({"n_grpo_steps": 0}, "--n_grpo_steps must be positive"),
        ({"rollout_batch_size": -3}, "--rollout_batch_size must be positive"),
        ({"eval_n": 0}, "--eval_n must be positive"),
        ({"cliprange": 1.0}, "--cliprange must lie in (0, 1)"),
        ({"cliprange": 0.0}, "--cliprange must lie in (0, 1)"),
        ({"learning_rate": 0.0}, "--learning_rate must be positive"),
        ({"sampling_temperature": -1.0}, "--sampling_temperature must be >= 0"),
        ({"eval_temperature": -0.5}, "--eval_temperature must be >= 0"),
        ({"eval_num_samples": 0}, "--eval_num_samples must be positive"),
        ({"eval_num_samples": 4}, "--eval_num_samples=4 at --eval_temperature=0 would draw 4"),
        ({"dataset_path": "no/such/folder"}, "--dataset_path=no/such/folder: no such folder"),
        ({"model_name": "no/such-model-dir"}, "--model_name=no/such-model-dir: no such model"),
    ],
)
def test_mistakes_give_one_line_errors(tiny_model_dir, gsm8k_dir, changes, message):
    with pytest.raises(ConfigError) as info:
        check_config(local(tiny_model_dir, gsm8k_dir, **changes), environ={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_group_size_one_is_fine_without_std_normalization(tiny_model_dir, gsm8k_dir):
    check_config(
        local(tiny_model_dir, gsm8k_dir, group_size=1, use_std_normalization=False), environ={}
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"config.json": "{not json"}, "config.json is not valid JSON"),
        ({"config.json": '{"vocab_size": 10}'}, "config.json has no model_type"),
        ({"config.json": '{"model_type": "qwen3"}'}, "the folder holds no weights"),
    ],
)
def test_a_broken_model_folder_is_one_line(tmp_path, gsm8k_dir, files, message):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(ConfigError) as info:
        check_config(local(tmp_path, gsm8k_dir), environ={})
    assert message in str(info.value) and "\n" not in str(info.value)


def test_dataset_folder_must_hold_both_splits(tmp_path, tiny_model_dir):
    (tmp_path / "train.jsonl").write_text("{}\n")
    config = Config(backend="local", model_name=str(tiny_model_dir), dataset_path=str(tmp_path))
    with pytest.raises(ConfigError, match=r"missing test\.jsonl"):
        check_config(config, environ={})


def test_tinker_backend_needs_a_key():
    with pytest.raises(ConfigError, match="TINKER_API_KEY is not set"):
        check_config(Config(backend="tinker"), environ={})
    check_config(Config(backend="tinker"), environ={"TINKER_API_KEY": "tml-x"})


def test_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().group_size = 3  # type: ignore[misc]


def test_a_key_without_a_reachable_service_is_one_line_before_any_call(
    gsm8k_dir, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("TINKER_API_KEY", "tml-unreachable-test")
    port = socket.socket()
    port.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused at once
    url = f"http://127.0.0.1:{port.getsockname()[1]}"
    flags = [f"--base_url={url}", f"--dataset_path={gsm8k_dir}", f"--log_path={tmp_path}"]
    assert main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the Tinker service at {url}")
    assert err.count("\n") == 1 and not (tmp_path / "config.json").exists()
    port.close()
