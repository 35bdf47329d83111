"""What every command-line script shares: one help layout, at one width, showing every default."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from utils.config import SETTINGS, add_setting_flags

HELP_WIDTH = 100


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written; each flag's help ends with its default (on/off for
    switches), unless the help already says what happens by default."""

    def __init__(self, prog: str):
        super().__init__(prog, width=HELP_WIDTH, max_help_position=30)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "%(default)" in text
            or "(default:" in text
            or action.default in (None, argparse.SUPPRESS)
            or not action.option_strings
            or action.dest == "help"
        ):
            return text
        default = action.default
        if isinstance(default, bool):
            shown = "on" if default else "off"
        elif isinstance(default, list | tuple):
            shown = " ".join(str(value) for value in default)
        else:
            shown = str(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """An ``ArgumentParser`` with :class:`HelpFormatter`."""
    return argparse.ArgumentParser(description=description, formatter_class=HelpFormatter)


#: How the predicting scripts show the defaults of the settings that come with the weights.
FROM_WEIGHTS = "from the settings file beside the weights, else {}"


def add_weights_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The flags of settings that come with the weights (``names``, of
    :data:`~utils.config.MODEL_KEYS`): None when not given, so the settings file beside the
    weights, else the original's default, fills them in (see
    :func:`utils.checkpoint.model_settings`)."""
    shown = {name: FROM_WEIGHTS.format(SETTINGS[name].shown_default()) for name in names}
    add_setting_flags(parser, list(names), **shown)
    parser.set_defaults(**dict.fromkeys(names))


def add_model_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The flags that build a predictor (predict.py, get_miou.py): --model-path, the settings
    ``names`` that come with the weights (:data:`~utils.config.MODEL_KEYS`), the runtime
    settings, --channels-last and --tta. Settings not given are None: the predictor then takes
    them from the settings file beside the weights."""
    flag = parser.add_argument_group("model").add_argument
    flag(
        "--model-path",
        default=SETTINGS["model_path"].default,
        help="trained weights (default: %(default)s)",
    )
    add_weights_setting_flags(parser, names)
    add_setting_flags(parser, ["device", "precision", "tf32"])
    parser.set_defaults(
        device=SETTINGS["device"].default,
        precision=SETTINGS["precision"].default,
        tf32=SETTINGS["tf32"].default,
    )
    flag(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory layout for the network (default: on with CUDA or an "
        "AVX-512 CPU, where it is faster; off otherwise)",
    )
    flag("--tta", action="store_true", help="average with the mirrored prediction (default: off)")


def add_batch_flags(parser: argparse.ArgumentParser, batch_size: int | None = None) -> None:
    """``--batch-size`` and ``--num-workers`` for predicting many images (None: by device, see
    :func:`utils.inference.default_batching`)."""
    flag = parser.add_argument_group("batching").add_argument
    shown = batch_size if batch_size else "8 on CUDA, 1 on the CPU"
    flag(
        "--batch-size",
        type=int,
        default=batch_size,
        help=f"images per forward pass; each is still post-processed at its own size "
        f"(default: {shown})",
    )
    flag(
        "--num-workers",
        type=int,
        default=None,
        help="processes that read and letterbox images ahead of the network; 0 reads in the "
        "main process (default: up to 4 on CUDA, 0 on the CPU, where the network already "
        "uses every core)",
    )


def predictor_kwargs(args: argparse.Namespace, predictor: type, **extra) -> dict:
    """The keyword arguments of ``predictor`` (``unet.Unet`` or ``unet.Unet_ONNX``) that the
    parsed command line holds, plus ``extra``."""
    known = vars(args)
    return {**{k: known[k] for k in predictor._defaults if k in known}, **extra}
