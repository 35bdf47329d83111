"""ImageNet backbone weights: a file in ``model_data/`` first, a download otherwise."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.hub import load_state_dict_from_url

from nets.errors import UserError

MODEL_DIR = "model_data"


def load_backbone_state_dict(url: str, model_dir: str = MODEL_DIR) -> dict[str, torch.Tensor]:
    """Return the state dict behind ``url``, read from ``model_dir`` when the file is there.

    ``model_dir`` is relative to the working directory, as in the reference. Without the file
    and without network the user is told which file to place where.
    """
    file_name = url.rsplit("/", 1)[-1]
    path = Path(model_dir) / file_name
    if path.is_file():
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # a truncated download or an unrelated file
            raise UserError(
                f"{path} is not a readable PyTorch weights file ({error}); "
                f"download it again from {url}."
            ) from error
    try:
        return load_state_dict_from_url(url, model_dir=model_dir, map_location="cpu")
    except OSError as error:  # URLError, socket and HTTP errors are all OSErrors
        raise UserError(
            f"the ImageNet weights {file_name} are not in {model_dir}/ and could not be "
            f"downloaded ({error}); download {url} and place it at {path}, "
            "or train without --pretrained."
        ) from error


def load_pretrained(module: nn.Module, url: str, keep: Callable[[str], bool]) -> None:
    """Load the keys of ``url``'s weights that ``keep`` selects into ``module``, strictly."""
    state_dict = {k: v for k, v in load_backbone_state_dict(url).items() if keep(k)}
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        file_name = url.rsplit("/", 1)[-1]
        raise UserError(
            f"{Path(MODEL_DIR) / file_name} does not hold the expected backbone weights "
            f"({str(error).splitlines()[0]}); download it again from {url}."
        ) from error
