"""Plugged functions: imported like CS336's tests import adapters.py, checked before any call."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import tests.support  # noqa: F401  this repository's `tests`, which a student's must not replace
from harness.data import load_gsm8k
from harness.grpo import compute_group_normalized_rewards
from harness.plugins import (
    ADAPTER_FUNCTION,
    PluginError,
    check_advantages,
    check_reward,
    checked_advantages,
    load_function,
    probe_responses,
    probe_rewards,
)
from tests.support.adapters import POPULATION_STD, adapters_file, formula_adapters

REPO = Path(__file__).resolve().parent.parent
STUDENT = REPO / "examples" / "cs336_student"
ADAPTERS = STUDENT / "tests" / "adapters.py"
GRADER = STUDENT / "cs336_alignment" / "drgrpo_grader.py"
TRUTHS = [p.ground_truth for p in load_gsm8k("train", REPO / "fixtures" / "gsm8k")[:4]]


def load_adapters(path: Path):
    return load_function("--adapters", str(path), ADAPTER_FUNCTION)


def test_an_adapters_file_imports_with_its_package_and_leaves_the_import_system_as_it_was():
    path_before, finders_before = list(sys.path), list(sys.meta_path)
    tests_package = sys.modules["tests"]
    plugged = load_adapters(ADAPTERS)
    assert sys.path == path_before and sys.meta_path == finders_before
    assert sys.modules["tests"] is tests_package  # this repository's tests got their name back
    assert plugged.function.__module__ == "tests.adapters"
    assert "examples/cs336_student/cs336_alignment/grpo.py" in plugged.sources
    rewards = [1.0, 0.0, 0.5, 0.5]
    result = plugged.function(
        lambda r, t: {"reward": rewards[int(r)]}, ["0", "1", "2", "3"], ["t"] * 4, 2, 1e-6, True
    )
    assert torch.allclose(result[0], torch.tensor([0.7071, -0.7071, 0.0, 0.0]), atol=1e-4)


def test_the_digest_follows_the_sources(tmp_path):
    path = adapters_file(
        tmp_path / "a", "from harness.grpo import compute_group_normalized_rewards"
    )
    body = "from harness.grpo import compute_group_normalized_rewards as "
    first = load_function("--adapters", f"{path}:compute_group_normalized_rewards")
    path.write_text(f"import torch\n{body}{ADAPTER_FUNCTION}\n")
    second = load_adapters(path)
    assert first.digest != second.digest and len(second.digest) == 64


def test_module_function_specs_import_from_the_working_directory(monkeypatch):
    plugged = load_function("--reward_fn", "harness.rewards:gsm8k_reward_fn")
    assert plugged.function("\\boxed{72}", "72", False)["answer_reward"] == 1.0
    monkeypatch.chdir(STUDENT)  # the assignment's root, its package not installed
    grader = load_function("--reward_fn", "cs336_alignment.drgrpo_grader:r1_zero_reward_fn")
    assert grader.name == "cs336_alignment.drgrpo_grader:r1_zero_reward_fn"
    assert grader.sources == ("cs336_alignment/drgrpo_grader.py",)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("no/such/adapters.py", "--adapters=no/such/adapters.py: no such file"),
        (f"{ADAPTERS}:missing", "has no function missing"),
        ("no_such_module:f", "importing no_such_module failed: ModuleNotFoundError"),
    ],
)
def test_specs_that_do_not_load_are_one_line_errors(spec, message):
    with pytest.raises(PluginError, match=message) as error:
        load_function("--adapters", spec, ADAPTER_FUNCTION)
    assert "\n" not in str(error.value)


def test_a_file_failing_as_it_imports_is_a_one_line_error(tmp_path):
    path = adapters_file(tmp_path, "import cs336_alignment_not_installed\n")
    with pytest.raises(PluginError, match="ModuleNotFoundError") as error:
        load_adapters(path)
    assert "\n" not in str(error.value)


def test_the_students_own_implementation_and_a_reexport_pass_without_a_warning(tmp_path):
    reexport = adapters_file(
        tmp_path,
        f"from harness.grpo import compute_group_normalized_rewards as {ADAPTER_FUNCTION}\n",
    )
    for path in (ADAPTERS, reexport):
        for group_size in (2, 8):
            for normalize in (True, False):
                assert check_advantages(load_adapters(path), group_size, 1e-6, normalize) == []


WRONG = {
    "population std": (
        POPULATION_STD,
        True,
        "group 0 (rewards [0, 1]): yours [-1, 1], the harness's [-0.7071, 0.7071]",
    ),
    "std without eps": (
        "(g - g.mean(1, keepdim=True)) / g.std(1, keepdim=True)",
        True,
        "group 2 (rewards [0, 1e-06]): yours [-0.7071, 0.7071], the harness's [-0.2929, 0.2929]",
    ),
    "mean of the whole batch": (
        "(g - g.mean()) / (g.std(1, keepdim=True) + eps)",
        True,
        "group 0 (rewards [0, 1]):",
    ),
    "no baseline": ("g", False, "the harness's [-0.5, 0.5]; they sum to 1, not ~0"),
    "normalize_by_std ignored": (
        "(g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)",
        False,
        "with normalize_by_std=False (this run's), advantage_eps=1e-06",
    ),
}


@pytest.mark.parametrize("mistake", list(WRONG))
def test_a_wrong_implementation_is_warned_about_naming_the_group_and_both_values(mistake, tmp_path):
    formula, normalize, expected = WRONG[mistake]
    path = formula_adapters(tmp_path, formula)
    warnings = check_advantages(load_adapters(path), 2, 1e-6, normalize)
    assert warnings, mistake
    assert warnings[0].startswith(f"--adapters={path}: {ADAPTER_FUNCTION} with normalize_by_std=")
    assert expected in warnings[0]
    assert "differs from the harness's compute_group_normalized_rewards" in warnings[0]


def test_an_adapter_that_raises_is_one_line_naming_it_and_where(tmp_path):
    path = adapters_file(
        tmp_path,
        f"""
        def {ADAPTER_FUNCTION}(reward_fn, responses, truths, group_size, eps, normalize_by_std):
            raise NotImplementedError
        """,
    )
    with pytest.raises(PluginError) as error:
        check_advantages(load_adapters(path), 2, 1e-6, True)
    message = str(error.value)
    assert (
        message == f"--adapters={path}: {ADAPTER_FUNCTION} raised NotImplementedError at {path}:6"
    )


@pytest.mark.parametrize(
    ("returned", "message"),
    [
        ("raw", "not the tuple (advantages, raw_rewards, metadata)"),
        ("raw.view(-1, group_size), raw, {}", "advantages of shape (4, 2), not"),
        ("raw.long(), raw, {}", "advantages as a torch.int64 tensor"),
        ("raw.tolist(), raw, {}", "advantages as a list, not a float tensor"),
        ("raw, raw, None", "metadata as a NoneType"),
        ("raw / 0, raw, {}", "non-finite advantages [nan, inf] for group 0"),
    ],
)
def test_outputs_the_run_cannot_use_stop_it(returned, message, tmp_path):
    path = adapters_file(
        tmp_path,
        f"""
        def {ADAPTER_FUNCTION}(reward_fn, responses, truths, group_size, eps, normalize_by_std):
            raw = torch.tensor([reward_fn(r, t)["reward"] for r, t in zip(responses, truths)])
            return {returned}
        """,
    )
    with pytest.raises(PluginError, match=re.escape(message)):
        check_advantages(load_adapters(path), 2, 1e-6, True)


def test_groups_without_reward_variance_get_zero_advantages_whatever_the_function_says():
    rewards_P_G = torch.tensor([[0.0, 0.0], [1.0, 0.0]]).numpy()
    nan_in_constant_group = (torch.tensor([float("nan"), float("nan"), 0.7, -0.7]), None, {})
    with pytest.raises(PluginError, match="raw_rewards as a NoneType"):
        checked_advantages("f", nan_in_constant_group, rewards_P_G)
    result = (nan_in_constant_group[0], torch.zeros(4), {})
    advantages_P_G, _ = checked_advantages("f", result, rewards_P_G)
    assert advantages_P_G.tolist() == [[0.0, 0.0], [pytest.approx(0.7), pytest.approx(-0.7)]]


def test_probe_groups_each_have_reward_variance_and_harness_advantages_sum_to_zero():
    for group_size in (2, 3, 8):
        rewards_P_G = torch.from_numpy(probe_rewards(group_size))
        assert (rewards_P_G.amax(1) > rewards_P_G.amin(1)).all()
        advantages, _, _ = compute_group_normalized_rewards(
            lambda r, t: {"reward": float(r)},
            [str(v) for v in rewards_P_G.flatten().tolist()],
            ["t"] * rewards_P_G.numel(),
            group_size,
            1e-6,
            True,
        )
        assert advantages.view(-1, group_size).sum(1).abs().max() < 1e-5


def test_a_cs336_style_grader_passes_and_scores_the_probes_as_expected():
    grader = load_function("--reward_fn", f"{GRADER}:r1_zero_reward_fn")
    assert check_reward(grader, TRUTHS, use_r1_zero_format=True) == []
    right, wrong, unformatted, _ = probe_responses(TRUTHS[0], use_r1_zero_format=True)
    assert grader.function(right, TRUTHS[0])["reward"] == 1.0
    assert grader.function(wrong, TRUTHS[0]) == {
        "format_reward": 1.0,
        "answer_reward": 0.0,
        "reward": 0.0,
    }
    assert grader.function(unformatted, TRUTHS[0])["format_reward"] == 0.0


def reward_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "my_reward.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_reward_returning_the_wrong_keys_is_a_one_line_error(tmp_path):
    path = reward_file(
        tmp_path,
        """
        def reward(response, ground_truth):
            return {"score": 1.0, "format_reward": 0.0}
        """,
    )
    plugged = load_function("--reward_fn", f"{path}:reward")
    with pytest.raises(PluginError) as error:
        check_reward(plugged, TRUTHS, use_r1_zero_format=True)
    assert str(error.value) == (
        f"--reward_fn={path}:reward: reward returned the keys ['format_reward', 'score'],"
        " without reward, answer_reward (a reward function returns reward, format_reward,"
        " answer_reward)"
    )


def test_a_reward_that_raises_or_never_varies_is_reported(tmp_path):
    path = reward_file(
        tmp_path,
        """
        def broken(response, ground_truth):
            return {"reward": float(ground_truth.split("####")[1])}

        def constant(response, ground_truth):
            return {"reward": 0.0, "format_reward": 0.0, "answer_reward": 0.0}
        """,
    )
    with pytest.raises(PluginError, match=r"broken raised IndexError: list index out of range at"):
        check_reward(load_function("--reward_fn", f"{path}:broken"), TRUTHS, True)
    (warning,) = check_reward(load_function("--reward_fn", f"{path}:constant"), TRUTHS, True)
    assert "every probe response got the reward 0.0" in warning
