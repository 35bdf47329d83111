"""Random state: seeding, DataLoader workers (and their OpenCV threads), and the RNG snapshot a
checkpoint carries."""

from __future__ import annotations

import random

import cv2
import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """A DataLoader ``worker_init_fn``: one OpenCV thread where the worker did not inherit it
    (spawn and forkserver start fresh processes, whose pool has not run, so setting it is safe;
    see :func:`one_opencv_thread_per_worker`), and Python and NumPy seeded from the worker's
    torch seed, which the loader draws from its own generator, so workers repeat from run to
    run."""
    if cv2.getNumThreads() != 1:
        cv2.setNumThreads(1)
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def one_opencv_thread_per_worker(num_workers: int) -> None:
    """Before a DataLoader starts ``num_workers`` worker processes: one OpenCV thread in each,
    where each would otherwise start a pool as large as the machine, and 8 workers oversubscribe
    its cores. It is set here, in the process that forks them, and inherited: set in a worker
    whose parent's OpenCV pool had already run, ``cv2.setNumThreads`` waits forever on threads
    that the fork did not copy. The main process then runs OpenCV on one thread too; it mostly
    waits for the workers."""
    if num_workers > 0:
        cv2.setNumThreads(1)


def capture_rng(device: torch.device | None = None) -> dict:
    """The Python, NumPy, torch and (on CUDA) ``device``'s generator states, in a form
    ``torch.save`` keeps. Only the run's own GPU: a resume may see another number of GPUs."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    numpy_state = np.random.get_state()
    state["numpy"] = (numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:])
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, device: torch.device | None = None) -> None:
    """Undo :func:`capture_rng`, the CUDA state onto ``device`` (when it is a GPU)."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), *rest))
    cuda = state.get("cuda")
    if cuda is not None and device is not None and device.type == "cuda":
        if isinstance(cuda, list | tuple):  # older checkpoints kept every visible GPU's state
            cuda = cuda[0]
        torch.cuda.set_rng_state(cuda, device)
