"""Random state: seeding, DataLoader workers, and the RNG snapshot a checkpoint carries."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: seed Python and NumPy from the worker's torch seed, which
    the loader draws from its own generator, so workers repeat from run to run."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def capture_rng() -> dict:
    """The Python, NumPy, torch and CUDA generator states, in a form ``torch.save`` keeps."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    numpy_state = np.random.get_state()
    state["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Undo :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
