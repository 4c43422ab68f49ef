"""`optim_step(AdamParams)`: AdamW with decoupled weight decay and optional grad-norm clipping."""

import math
from collections.abc import Sequence

import torch
from tinker import types


def new_optimizer(params: Sequence[torch.nn.Parameter]) -> torch.optim.AdamW:
    """AdamW over `params`; every hyperparameter is set per step from `AdamParams`."""
    defaults = types.AdamParams()
    return torch.optim.AdamW(
        params,
        lr=defaults.learning_rate,
        betas=(defaults.beta1, defaults.beta2),
        eps=defaults.eps,
        weight_decay=defaults.weight_decay,
    )


def check_adam_params(adam_params: types.AdamParams) -> None:
    checks = {
        "learning_rate": adam_params.learning_rate >= 0,
        "beta1": 0 <= adam_params.beta1 < 1,
        "beta2": 0 <= adam_params.beta2 < 1,
        "eps": adam_params.eps >= 0,
        "weight_decay": adam_params.weight_decay >= 0,
        "grad_clip_norm": adam_params.grad_clip_norm >= 0,
    }
    values = adam_params.model_dump()
    bad = [f"{name}={values[name]}" for name, ok in checks.items() if not ok]
    if bad or not all(math.isfinite(v) for v in values.values()):
        raise ValueError(f"invalid AdamParams: {', '.join(bad) or values}")


def adam_step(
    optimizer: torch.optim.AdamW,
    params: Sequence[torch.nn.Parameter],
    adam_params: types.AdamParams,
) -> dict[str, float]:
    """Clip (when grad_clip_norm > 0), step, zero the gradients; return metrics."""
    check_adam_params(adam_params)
    for group in optimizer.param_groups:
        group["lr"] = adam_params.learning_rate
        group["betas"] = (adam_params.beta1, adam_params.beta2)
        group["eps"] = adam_params.eps
        group["weight_decay"] = adam_params.weight_decay
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads) if grads else torch.tensor(0.0)
    if grads and adam_params.grad_clip_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, adam_params.grad_clip_norm, grad_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return {
        "grad_norm:mean": float(grad_norm),
        "learning_rate:mean": adam_params.learning_rate,
    }
