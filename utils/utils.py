"""The original's path for its helpers: ``cvtColor`` lives in :mod:`utils.images`,
``seed_everything`` in :mod:`utils.seeding`, ``get_lr`` with the training steps in
:mod:`utils.training.epochs`."""

from utils.images import cvtColor
from utils.seeding import seed_everything
from utils.training.epochs import get_lr

__all__ = ["cvtColor", "get_lr", "seed_everything"]
