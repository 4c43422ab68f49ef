"""Training the local backend's LoRA client directly: Datums, a step, and what to look at."""

from __future__ import annotations

import numpy as np
import torch
from tinker import types

ADAM = types.AdamParams(learning_rate=0.02, weight_decay=0.1, grad_clip_norm=5.0)


def ppo_datum(tokens: list[int], seed: int) -> types.Datum:
    rng = np.random.default_rng(seed)
    n = len(tokens) - 1
    return types.Datum(
        model_input=types.ModelInput.from_ints(tokens[:-1]),
        loss_fn_inputs={
            "target_tokens": np.asarray(tokens[1:], dtype=np.int64),
            "logprobs": rng.uniform(-8, -7, size=n).astype(np.float32),
            "advantages": rng.normal(size=n).astype(np.float32),
        },
    )


def batch(seed: int, count: int = 3) -> list[types.Datum]:
    rng = np.random.default_rng(seed)
    return [
        ppo_datum(rng.integers(1, 2000, size=rng.integers(4, 12)).tolist(), seed * 100 + i)
        for i in range(count)
    ]


PROBE = batch(99)


def probe_logprobs(client) -> np.ndarray:
    output = client.forward(PROBE, "ppo").result()
    return np.concatenate([out["logprobs"].to_numpy() for out in output.loss_fn_outputs])


def adapted_modules(client) -> set[str]:
    """Names of the modules with LoRA weights (`...q_proj.lora_A.default.weight` -> q_proj)."""
    return {n.split(".")[-4] for n, p in client.model.named_parameters() if p.requires_grad}


def adapter(client) -> list[torch.Tensor]:
    return [p.detach().clone() for p in client.model.parameters() if p.requires_grad]


def step(client, data) -> float:
    loss = client.forward_backward(data, "ppo").result().metrics["loss:sum"]
    client.optim_step(ADAM).result()
    return loss
