"""Functions a user plugs into the run: a CS336 `tests/adapters.py`'s advantages, any reward.

A spec names one function: `PATH.py:function`, `module:function`, or (for the adapters) a bare
`PATH.py` whose `run_compute_group_normalized_rewards` is taken. A file is imported the way
CS336's own tests import `tests/adapters.py` from the assignment's root: as a module of the
packages around it (every folder above it holding an `__init__.py`), top-level imports found
first in the folder above those while it imports, so the student's package beside `tests/`
imports too. A module name is imported as is, or else from the working directory.

Everything is checked before the first paid call (`preflight`): an import or a call that
raises, or output of the wrong shape, dtype or keys, stops the run with one line naming the
function and its file; advantages that differ from the harness's own are a warning naming the
first differing group, with both values.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib
import importlib.abc
import importlib.machinery
import inspect
import math
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.config import Config, ConfigError
from harness.grpo import compute_group_normalized_rewards, zero_variance_groups
from harness.rewards import RewardFn, parse_ground_truth

AdvantagesFn = Callable[..., Any]
"""`compute_group_normalized_rewards`'s signature: (reward_fn, rollout_responses,
repeated_ground_truths, group_size, advantage_eps, normalize_by_std) -> (advantages,
raw_rewards, metadata)."""

ADAPTER_FUNCTION = "run_compute_group_normalized_rewards"
REWARD_KEYS = ("reward", "format_reward", "answer_reward")
# The rewards of `probe_rewards`, the tolerance of comparisons with the harness's advantages.
RTOL, ATOL = 1e-4, 1e-6


class PluginError(ConfigError):
    """A plugged function that cannot run; its message is one line naming the function."""


@dataclasses.dataclass(frozen=True)
class Plugged:
    """One plugged function, and what identifies its implementation."""

    flag: str
    """The flag and its value, e.g. `--adapters=tests/adapters.py`."""
    function: Callable[..., Any]
    name: str
    """`file:function` or `module:function`, for messages."""
    sources: tuple[str, ...]
    """The source files it came from: its own and every file its import loaded beside it."""
    digest: str
    """sha256 of those files' contents, in that order."""

    @property
    def label(self) -> str:
        """The flag and the function's name (`--reward_fn=r.py:grade: grade`), for messages."""
        return f"{self.flag}: {self.name.rpartition(':')[2]}"

    def header(self) -> dict[str, Any]:
        """What a cassette's header says of it."""
        return {"function": self.name, "sources": list(self.sources), "sha256": self.digest}

    def guarded(self) -> Callable[..., Any]:
        """The function, raising a one-line PluginError naming it in place of its errors."""

        def call(*arguments: Any) -> Any:
            return call_plugged(self, *arguments)

        call.__qualname__ = self.label
        return call

    def reward(self) -> RewardFn:
        """The function as a reward whose every result is checked (keys, finite floats)."""

        def reward(response: str, ground_truth: str) -> dict[str, float]:
            return checked_reward(self.label, call_plugged(self, response, ground_truth))

        reward.__qualname__ = self.label
        return reward


# -- loading ----------------------------------------------------------------------------------


def load_function(flag: str, spec: str, default_attribute: str | None = None) -> Plugged:
    """The function `spec` names (see the module's docstring); PluginError when it cannot."""
    location, _, attribute = spec.rpartition(":") if ":" in spec else (spec, "", "")
    attribute = attribute or default_attribute or ""
    if not attribute:
        raise PluginError(f"{flag}={spec}: name a function, as module:function or PATH.py:function")
    is_file = location.endswith(".py") or os.sep in location or "/" in location
    before = set(sys.modules)
    try:
        if is_file:
            path = Path(location)
            if not path.is_file():
                raise PluginError(f"{flag}={spec}: no such file {location}")
            module, root = _import_file(path.resolve())
        else:
            module, root = import_module(location), None
    except PluginError:
        raise
    except Exception as error:  # the user's module failing as it imports
        raise PluginError(
            f"{flag}={spec}: importing {location} failed: {_one_line(error)}"
        ) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise PluginError(f"{flag}={spec}: {location} has no function {attribute}")
    name = f"{location}:{attribute}"
    imported = [sys.modules[m] for m in set(sys.modules) - before]
    sources = _sources(function, module, root, imported)
    return Plugged(f"{flag}={spec}", function, name, sources, _digest(sources))


def import_module(name: str) -> Any:
    """`name` imported as is, or else from the working directory (the root of a repository
    whose packages are not installed, as a script's `sys.path` leaves it out)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name.split(".")[0]:
            raise
    with _importable_from(Path.cwd(), name.split(".")[0]):
        return importlib.import_module(name)


def _import_file(path: Path) -> tuple[Any, Path]:
    """The file as a module of its packages, as `from tests.adapters import ...` would give it,
    and the folder above those packages it was imported from."""
    parts = [path.stem]
    root = path.parent
    while (root / "__init__.py").is_file():
        parts.insert(0, root.name)
        root = root.parent
    with _importable_from(root, parts[0]):
        return importlib.import_module(".".join(parts)), root


class _FromRoot(importlib.abc.MetaPathFinder):
    """Finds top-level modules and packages in one folder (and nowhere else)."""

    def __init__(self, root: Path):
        self._root = str(root)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if path is not None:  # a submodule: its package's own __path__ finds it
            return None
        return importlib.machinery.PathFinder.find_spec(fullname, [self._root])


@contextlib.contextmanager
def _importable_from(root: Path, top_level: str) -> Iterator[None]:
    """Top-level imports found in `root` first while the block imports (a finder of its own,
    so `sys.path` stays as it is). A package of the same top-level name already imported from
    elsewhere (this repository's `tests`, say) steps aside meanwhile and gets its name back
    after; the modules imported from `root` stay referenced by what imported them."""
    loaded = sys.modules.get(top_level)
    shadowed = {}
    if loaded is not None and not _comes_from(loaded, root / top_level):
        shadowed = {name: sys.modules.pop(name) for name in _tree(top_level)}
    finder = _FromRoot(root)
    sys.meta_path.insert(0, finder)
    importlib.invalidate_caches()
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if shadowed:
            for name in _tree(top_level):
                del sys.modules[name]
            sys.modules.update(shadowed)


def _tree(top_level: str) -> list[str]:
    return [name for name in sys.modules if name.split(".")[0] == top_level]


def _comes_from(module: Any, location: Path) -> bool:
    """Whether `module` is the package folder or module file at `location` (no suffix)."""
    places = [*getattr(module, "__path__", []), getattr(module, "__file__", None) or ""]
    wanted = {location.resolve(), location.with_suffix(".py").resolve()}
    return any(
        Path(place).resolve() in wanted or Path(place).resolve().parent in wanted
        for place in places
        if place
    )


def _sources(
    function: Any, module: Any, root: Path | None, imported: Sequence[Any]
) -> tuple[str, ...]:
    """The function's file, its module's, and the files its import loaded from beneath `root`
    (a student's package beside `tests/`), as paths relative to the working directory."""
    files = [inspect.getsourcefile(function) or "", getattr(module, "__file__", None) or ""]
    for other in sorted(imported, key=lambda m: m.__name__):
        other_file = getattr(other, "__file__", None)
        if other_file and root and Path(other_file).resolve().is_relative_to(root):
            files.append(other_file)
    unique = dict.fromkeys(_shown(Path(f)) for f in files if f and Path(f).is_file())
    return tuple(unique)


def _shown(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _digest(sources: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for source in sources:
        digest.update(Path(source).read_bytes())
    return digest.hexdigest()


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# -- checking outputs -------------------------------------------------------------------------


def checked_reward(plugged_name: str, score: Any) -> dict[str, float]:
    """A reward function's result as floats: the three keys, finite values."""
    if not isinstance(score, Mapping):
        raise PluginError(
            f"{plugged_name} returned a {type(score).__name__}, not a dict with"
            f" {', '.join(REWARD_KEYS)}"
        )
    missing = [key for key in REWARD_KEYS if key not in score]
    if missing:
        raise PluginError(
            f"{plugged_name} returned the keys {sorted(map(str, score))}, without"
            f" {', '.join(missing)} (a reward function returns {', '.join(REWARD_KEYS)})"
        )
    values = {}
    for key in REWARD_KEYS:
        try:
            values[key] = float(score[key])
        except (TypeError, ValueError):
            raise PluginError(
                f"{plugged_name} returned {key}={score[key]!r}, not a number"
            ) from None
        if not math.isfinite(values[key]):
            raise PluginError(f"{plugged_name} returned {key}={values[key]}, not a finite number")
    return values


def checked_advantages(
    plugged_name: str, result: Any, rewards_P_G: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(advantages, raw_rewards), each (P, G) float32, from an advantages function's result;
    the advantages of groups whose rewards are all equal are zero (they train nothing)."""
    if not isinstance(result, tuple | list) or len(result) != 3:
        raise PluginError(
            f"{plugged_name} returned a {type(result).__name__}, not the tuple (advantages,"
            " raw_rewards, metadata)"
        )
    shape = rewards_P_G.shape
    arrays = []
    for what, value in zip(("advantages", "raw_rewards"), result[:2], strict=True):
        tensor = value if isinstance(value, torch.Tensor) else None
        if tensor is None or not tensor.is_floating_point():
            kind = f"a {tensor.dtype} tensor" if tensor is not None else f"a {type(value).__name__}"
            raise PluginError(f"{plugged_name} returned {what} as {kind}, not a float tensor")
        if tuple(tensor.shape) != (math.prod(shape),):
            raise PluginError(
                f"{plugged_name} returned {what} of shape {tuple(tensor.shape)}, not"
                f" (rollout_batch_size,) = ({math.prod(shape)},)"
            )
        arrays.append(tensor.detach().to(torch.float32).cpu().numpy().reshape(shape))
    if not isinstance(result[2], Mapping):
        raise PluginError(
            f"{plugged_name} returned metadata as a {type(result[2]).__name__}, not a dict"
        )
    advantages_P_G, raw_P_G = arrays
    zero_variance_P = zero_variance_groups(torch.from_numpy(rewards_P_G)).numpy()
    advantages_P_G = np.where(zero_variance_P[:, None], np.float32(0), advantages_P_G)
    bad = ~np.isfinite(advantages_P_G).all(axis=1)
    if bad.any():
        p = int(np.argmax(bad))
        raise PluginError(
            f"{plugged_name} returned non-finite advantages {_values(advantages_P_G[p])} for"
            f" group {p}, whose rewards are {_values(rewards_P_G[p])}"
        )
    return advantages_P_G, raw_P_G


def _values(row: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in row.tolist()) + "]"


# -- the pre-flight check -----------------------------------------------------------------------


def probe_rewards(group_size: int) -> np.ndarray:
    """Rewards of a synthetic batch, (4, G), each group with its own spread: 0/1 (mean 1/2), four
    levels (another mean), steps of 1e-6 (where eps matters), and 5, 6, ... (a large mean)."""
    g = np.arange(group_size)
    levels = np.array([0.2, 1.0, 0.0, 0.8])
    return np.stack([g % 2, levels[g % 4], g * 1e-6, 5.0 + g]).astype(np.float32)


def check_advantages(
    plugged: Plugged, group_size: int, advantage_eps: float, normalize_by_std: bool
) -> list[str]:
    """Call the advantages function on the probe batch under the run's settings (and with
    normalize_by_std flipped) next to the harness's; warnings for the first group that differs.
    PluginError when it raises or returns something the run cannot use."""
    rewards_P_G = probe_rewards(group_size)
    responses = [
        f"probe response {p}.{g}" for p in range(len(rewards_P_G)) for g in range(group_size)
    ]
    truths = [f"probe truth {p}" for p in range(len(rewards_P_G)) for _ in range(group_size)]
    by_response = dict(zip(responses, rewards_P_G.ravel().tolist(), strict=True))

    def probe_reward(response: str, ground_truth: str) -> dict[str, float]:
        reward = by_response[response]
        return {"reward": reward, "format_reward": 0.0, "answer_reward": 0.0}

    settings = [normalize_by_std] + ([not normalize_by_std] if group_size >= 2 else [])
    warnings = []
    for normalize in settings:
        arguments = (probe_reward, responses, truths, group_size, advantage_eps, normalize)
        whose = "this run's" if normalize == normalize_by_std else "not this run's"
        call = (
            f"{plugged.label} with normalize_by_std={normalize} ({whose}),"
            f" advantage_eps={advantage_eps}"
        )
        result = call_plugged(plugged, *arguments)
        advantages_P_G, raw_P_G = checked_advantages(plugged.label, result, rewards_P_G)
        reference = compute_group_normalized_rewards(*arguments)
        reference_P_G = reference[0].numpy().reshape(rewards_P_G.shape)
        difference = first_differing_group(advantages_P_G, reference_P_G)
        if not np.allclose(raw_P_G, rewards_P_G, rtol=RTOL, atol=ATOL):
            p = first_differing_group(raw_P_G, rewards_P_G)
            warnings.append(
                f"{call} returns raw_rewards {_values(raw_P_G[p])} for group {p},"
                f" whose reward_fn gave {_values(rewards_P_G[p])}"
            )
        elif difference is not None:
            p = difference
            warnings.append(
                f"{call} differs from the harness's"
                f" compute_group_normalized_rewards, first in group {p} (rewards"
                f" {_values(rewards_P_G[p])}): yours {_values(advantages_P_G[p])}, the"
                f" harness's {_values(reference_P_G[p])}{_sum_note(advantages_P_G[p])}"
            )
    return warnings


def first_differing_group(values_P_G: np.ndarray, reference_P_G: np.ndarray) -> int | None:
    close_P = np.isclose(values_P_G, reference_P_G, rtol=RTOL, atol=ATOL).all(axis=1)
    return None if close_P.all() else int(np.argmin(close_P))


def _sum_note(advantages_G: np.ndarray) -> str:
    total = float(advantages_G.astype(np.float64).sum())
    scale = max(1.0, float(np.abs(advantages_G).sum()))
    return (
        f"; they sum to {total:.4g}, not ~0 (no group baseline?)"
        if abs(total) > RTOL * scale
        else ""
    )


def probe_responses(ground_truth: str, use_r1_zero_format: bool) -> list[str]:
    """Responses to a question of this ground truth: right and wrong answers, with and without
    the prompt's format, and an empty one."""
    value = parse_ground_truth(ground_truth)
    right = str(value.numerator) if value.denominator == 1 else str(float(value))
    wrong = str(value.numerator + 1) if value.denominator == 1 else "0"

    def formatted(answer: str) -> str:
        if use_r1_zero_format:
            return f"The total is {answer}.</think> <answer>{answer}</answer>"
        return f"The total is {answer}. \\boxed{{{answer}}}"

    return [formatted(right), formatted(wrong), f"The total is {right}.", ""]


def check_reward(
    plugged: Plugged, ground_truths: Sequence[str], use_r1_zero_format: bool
) -> list[str]:
    """Call the reward function on probe responses to real questions' ground truths; a warning
    when it gives them all one reward (no group would ever train)."""
    rewards = set()
    for truth in ground_truths:
        for response in probe_responses(truth, use_r1_zero_format):
            rewards.add(
                checked_reward(plugged.label, call_plugged(plugged, response, truth))["reward"]
            )
    if len(rewards) > 1:
        return []
    return [
        f"{plugged.flag}: every probe response got the reward {rewards.pop()}, a right answer in"
        " the prompt's format included: no group would train (it receives the final answer,"
        " e.g. '72', as ground_truth)"
    ]


def call_plugged(plugged: Plugged, *arguments: Any) -> Any:
    """The plugged function's result; PluginError naming it and where it raised, if it raises."""
    try:
        return plugged.function(*arguments)
    except Exception as error:
        raise PluginError(f"{plugged.label} raised {_where(error)}") from None


def _where(error: BaseException) -> str:
    """The error in one line, and the last line outside the harness it came from."""
    frames = [
        (filename, line)
        for filename, line in _traceback_lines(error)
        if not Path(filename).resolve().is_relative_to(_HARNESS)
    ]
    at = f" at {_shown(Path(frames[-1][0]))}:{frames[-1][1]}" if frames else ""
    return f"{_one_line(error)}{at}"


def _traceback_lines(error: BaseException) -> list[tuple[str, int]]:
    lines, trace = [], error.__traceback__
    while trace is not None:
        lines.append((trace.tb_frame.f_code.co_filename, trace.tb_lineno))
        trace = trace.tb_next
    return lines


_HARNESS = Path(__file__).resolve().parent


# -- a run's plugged functions ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunFunctions:
    """The functions a run's flags plug in; None where the harness's own serve."""

    adapters: Plugged | None = None
    reward_fn: Plugged | None = None
    eval_reward_fn: Plugged | None = None

    def plugged(self) -> dict[str, Plugged]:
        fields = dataclasses.fields(self)
        return {f.name: getattr(self, f.name) for f in fields if getattr(self, f.name)}

    def header(self) -> dict[str, Any]:
        """What a cassette's header records of them: function, source files, digest."""
        return {name: plugged.header() for name, plugged in self.plugged().items()}

    def training_reward(self) -> RewardFn | None:
        return self.reward_fn and self.reward_fn.reward()

    def validation_reward(self) -> RewardFn | None:
        return self.eval_reward_fn and self.eval_reward_fn.reward()

    def advantages(self) -> AdvantagesFn:
        """The student's, or the harness's own `compute_group_normalized_rewards`."""
        return self.adapters.guarded() if self.adapters else compute_group_normalized_rewards


def load_run_functions(config: Config) -> RunFunctions:
    """The functions `--adapters`, `--reward_fn` and `--eval_reward_fn` name, imported."""
    return RunFunctions(
        adapters=_load("--adapters", config.adapters, ADAPTER_FUNCTION),
        reward_fn=_load("--reward_fn", config.reward_fn),
        eval_reward_fn=_load("--eval_reward_fn", config.eval_reward_fn),
    )


def _load(flag: str, spec: str | None, default_attribute: str | None = None) -> Plugged | None:
    return None if spec is None else load_function(flag, spec, default_attribute)


def preflight(functions: RunFunctions, config: Config, ground_truths: Sequence[str]) -> list[str]:
    """Every plugged function called on probe inputs before any paid call: PluginError for one
    the run cannot use, warnings for one that differs from the harness's reference."""
    warnings = []
    for reward in (functions.reward_fn, functions.eval_reward_fn):
        if reward is not None:
            warnings += check_reward(reward, ground_truths, config.use_r1_zero_format)
    if functions.adapters is not None:
        warnings += check_advantages(
            functions.adapters,
            config.group_size,
            config.advantage_eps,
            config.use_std_normalization,
        )
    return warnings


def changed_since_recording(functions: RunFunctions, recorded: Mapping[str, Any]) -> list[str]:
    """Warnings for each plugged function whose sources differ from those a cassette recorded."""
    warnings = []
    for name, plugged in functions.plugged().items():
        was = recorded.get(name)
        if was is not None and was.get("sha256") != plugged.digest:
            warnings.append(
                f"{plugged.flag}: its sources ({', '.join(plugged.sources)}, sha256"
                f" {plugged.digest[:12]}) differ from the recorded run's (sha256"
                f" {str(was.get('sha256'))[:12]}); the replay stops at the first step whose"
                " rewards or advantages differ"
            )
    return warnings
