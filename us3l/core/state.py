"""The content hash of a state dict (keys, dtypes, shapes and bytes): what checkpoints and model
directories record to join accuracy tables, artifacts and heads to the exact weights."""

from __future__ import annotations

import hashlib

import torch


def state_hash(state: dict[str, torch.Tensor]) -> str:
    """sha256 over sorted keys, dtypes, shapes and bytes of a state dict."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous().reshape(-1)
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
