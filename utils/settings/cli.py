"""What every command-line script shares: one help layout, at one width, showing every default."""

from __future__ import annotations

import argparse
import difflib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from utils.inference.engines import ENGINES
from utils.inference.pipeline import TTA_MODES
from utils.settings.config import SETTINGS, format_value

HELP_WIDTH = 100


def argument_group(parser: argparse.ArgumentParser, title: str) -> argparse._ArgumentGroup:
    """The parser's section called ``title``, made the first time: one section per title."""
    found = next((group for group in parser._action_groups if group.title == title), None)
    return found or parser.add_argument_group(title)


def add_setting_flags(
    parser: argparse.ArgumentParser, names: list[str] | None = None, **shown: str
) -> None:
    """Add the flags of ``names`` (default: every setting) to ``parser``, by group.

    Their defaults are ``argparse.SUPPRESS``, so the parsed namespace holds only what the
    command line gave (see :func:`utils.settings.recipes.resolve_config`); --help shows the declared
    default, or ``shown[name]`` where the caller's default differs (predict.py's "from the
    weights").
    """
    for name in names or list(SETTINGS):
        info = SETTINGS[name]
        group = argument_group(parser, info.group)
        default = shown.get(name, info.shown_default())
        unset = "; none unsets it" if info.optional and name not in shown else ""
        kwargs: dict[str, Any] = {
            "default": argparse.SUPPRESS,
            "help": f"{info.help}{unset} (default: {default.replace('%', '%%')})",
        }
        if info.value_type is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs.update(
                type=_or_none(info.item_type) if info.optional else info.item_type,
                choices=info.options.get("choices"),
                metavar=info.options.get("metavar"),
            )
            if info.is_list and info.optional:
                kwargs.update(nargs="+", action=_list_or_none(info.length))
            elif info.is_list:
                kwargs["nargs"] = info.length or "+"
        group.add_argument(info.flag, **kwargs)
        if name == "precision":
            group.add_argument(
                "--fp16",
                dest="precision",
                action="store_const",
                const="fp16",
                default=argparse.SUPPRESS,
                help="the original's switch: the same as --precision fp16 (default: off)",
            )


def _or_none(kind: type):
    """An argparse type: ``none`` (or ``null``) is None, for settings whose default is None, so
    a flag can unset what a recipe file or a resumed run set."""

    def parse(text: str):
        return None if text.lower() in ("none", "null") else kind(text)

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _list_or_none(length: int | None) -> type[argparse.Action]:
    """The argparse action of an optional list setting: ``length`` values (any number when
    None), or ``none`` alone for None (``--train-crop none``)."""

    class ListOrNone(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            if values == [None]:
                values = None
            elif None in values or (length and len(values) != length):
                count = f"{length} values" if length else "values"
                parser.error(f"argument {option_string}: expected {count}, or none alone")
            setattr(namespace, self.dest, values)

    return ListOrNone


def differing_defaults() -> str:
    """The sentence that names each default that is not the original's value, and why."""
    parts = [
        f"{info.describe()} is {format_value(info.default)}, not the original's "
        f"{format_value(info.options['original_value'][0])}: {info.options['original_value'][1]}"
        for info in SETTINGS.values()
        if "original_value" in info.options
    ]
    return "Every setting defaults to the original's value, but " + "; ".join(parts) + "."


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


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, whose "unrecognized arguments" names the flag each misspelt one is
    closest to, as a misspelt recipe key is answered; and whose flags with an optional choice
    (``--tta [flip|d4]``) leave the next word alone when it is a file (``--tta image.jpg``
    keeps the image), so that only a word meant as the choice is checked as one
    (``--tta d8``: invalid choice)."""

    def parse_known_args(self, args=None, namespace=None):
        words = list(sys.argv[1:] if args is None else args)
        for action in self._actions:
            if action.nargs != "?" or not action.choices or action.const is None:
                continue
            for i, word in enumerate(words):
                after = words[i + 1] if i + 1 < len(words) else "-"
                not_a_choice = after.startswith("-") or Path(after).suffix or Path(after).exists()
                if word in action.option_strings and not_a_choice:
                    words[i] = f"{word}={action.const}"
        return super().parse_known_args(words, namespace)

    def error(self, message: str):
        if message.startswith("unrecognized arguments:"):
            flags = [option for option in self._option_string_actions if option.startswith("--")]
            hints = []
            for word in message.split(":", 1)[1].split():
                close = difflib.get_close_matches(word.split("=")[0], flags, n=1, cutoff=0.6)
                if word.startswith("-") and close:
                    hints.append(f"{word}: did you mean {close[0]}?")
            message = "; ".join([message, *hints])
        super().error(message)


def argument_parser(description: str | None) -> argparse.ArgumentParser:
    """An :class:`ArgumentParser` with :class:`HelpFormatter`."""
    return ArgumentParser(description=description, formatter_class=HelpFormatter)


#: What --precision defaults to in the predicting scripts.
ENGINE_PRECISION = (
    "the engine's: fp32 for torch (the original's), as exported for onnxruntime, bf16 for "
    "openvino where the CPU has it natively, else fp32"
)
#: How the predicting scripts show the defaults of the settings that come with the weights.
FROM_WEIGHTS = "from the settings file beside the weights, else {}"


def add_weights_setting_flags(parser: argparse.ArgumentParser, names: Sequence[str]) -> None:
    """The flags of settings that come with the weights (``names``, of
    :data:`~utils.settings.config.MODEL_KEYS`): None when not given, so the settings file beside the
    weights, else the original's default, fills them in (see
    :meth:`utils.settings.model.ModelSettings.resolve`)."""
    shown = {name: FROM_WEIGHTS.format(SETTINGS[name].shown_default()) for name in names}
    add_setting_flags(parser, list(names), **shown)
    parser.set_defaults(**dict.fromkeys(names))


def add_model_flags(parser: argparse.ArgumentParser, names: tuple[str, ...]) -> None:
    """The flags that build a predictor (predict.py, get_miou.py): --model-path, the settings
    ``names`` that come with the weights (:data:`~utils.settings.config.MODEL_KEYS`), the runtime
    settings, --channels-last and --tta. Settings not given are None: the predictor then takes
    them from the settings file beside the weights."""
    flag = argument_group(parser, SETTINGS["model_path"].group).add_argument
    flag(
        "--model-path",
        help="trained weights (.pth), an ONNX export (.onnx, run in onnxruntime) or an OpenVINO "
        f"model (.xml) (default: {SETTINGS['model_path'].default})",
    )
    engines = "; ".join(f"{name}: {engine.summary}" for name, engine in ENGINES.items())
    defaults = ", ".join(
        f"{engine.name} for {'/'.join(engine.default_for)}"
        for engine in ENGINES.values()
        if engine.default_for
    )
    flag(
        "--engine",
        choices=list(ENGINES),
        help=f"what runs the network: {engines} (default: {defaults}, else torch)",
    )
    add_weights_setting_flags(parser, names)
    add_setting_flags(parser, ["device", "precision", "tf32"], precision=ENGINE_PRECISION)
    parser.set_defaults(
        device=SETTINGS["device"].default,
        precision=None,
        tf32=SETTINGS["tf32"].default,
    )
    flag(
        "--num-threads",
        type=int,
        default=None,
        help="CPU threads of the network, in every engine (default: torch's, the machine's cores)",
    )
    flag(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="channels-last memory layout for the network (default: on, faster for prediction "
        "on CUDA and on every CPU kind measured; torch engine only)",
    )
    flag(
        "--tta",
        nargs="?",
        const="flip",
        choices=TTA_MODES,
        default=None,
        help="test-time augmentation: --tta (flip) averages with the mirrored prediction; "
        "--tta d4 with the 8 turns and mirrors, each turned back (default: off)",
    )


def add_batch_flags(parser: argparse.ArgumentParser, batch_size: int | None = None) -> None:
    """``--batch-size`` and ``--num-workers`` for predicting many images (None: by device, see
    :func:`utils.inference.pipeline.default_batching`)."""
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
