"""What the likelihood estimators and the samplers share about rows: per-request noise, the device.

Noise comes from a generator seeded by a request's own tokens, so a result never depends on which
other requests share its batch, their order, or the batch size.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

import torch
from torch import nn


def request_generator(prompt: Sequence[int], continuation: Sequence[int], seed: int) -> torch.Generator:
    """A CPU generator seeded from the request's own tokens and `seed`: batch-independent noise."""
    payload = json.dumps([int(seed), [int(t) for t in prompt], [int(t) for t in continuation]])
    digest = hashlib.sha256(payload.encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") >> 1)


def model_device(model: nn.Module) -> torch.device:
    """Where the model's parameters live (CPU for a parameterless oracle)."""
    return next(model.parameters(), torch.empty(0)).device
