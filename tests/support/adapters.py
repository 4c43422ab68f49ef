"""CS336-style `tests/adapters.py` files for the plugged-function tests."""

import textwrap
from pathlib import Path

ADAPTER = "run_compute_group_normalized_rewards"


def adapters_file(folder: Path, body: str) -> Path:
    """`folder/tests/adapters.py` in a package `tests`, as in an assignment checkout: `import
    torch`, two blank lines, then `body` (dedented)."""
    (folder / "tests").mkdir(parents=True)
    (folder / "tests" / "__init__.py").write_text("")
    path = folder / "tests" / "adapters.py"
    path.write_text("import torch\n\n\n" + textwrap.dedent(body))
    return path


def formula_adapters(folder: Path, formula: str) -> Path:
    """An adapters file whose advantages are `formula` of the (P, G) rewards `g` and `eps`."""
    return adapters_file(
        folder,
        f"""
        def {ADAPTER}(reward_fn, responses, truths, group_size, eps, normalize_by_std):
            raw = torch.tensor([reward_fn(r, t)["reward"] for r, t in zip(responses, truths)])
            g = raw.view(-1, group_size)
            return ({formula}).flatten(), raw, {{}}
        """,
    )


POPULATION_STD = "(g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True, correction=0) + eps)"
