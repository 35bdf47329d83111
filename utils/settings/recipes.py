"""Recipe files: the flat YAML files of settings that ``train.py --config`` reads and that a run
writes as ``config.yaml``, each value checked against its declaration in
:mod:`utils.settings.config`; and a run's settings, layered from the defaults, a resumed
checkpoint, the files and the flags (:func:`resolve_config`).

A recipe file is a flat YAML mapping of setting names (the original's constants in snake_case)
to values, the block of constants the original's users edit at the top of its ``train.py``.
"""

from __future__ import annotations

import json
import math
import re
import textwrap
from pathlib import Path
from typing import Any

from utils.data.classes import CLASSES_FILE, read_classes_file
from utils.data.datasets import DatasetLayout
from utils.errors import UserError
from utils.settings.config import SETTINGS, SettingInfo, TrainConfig, unknown_key_message
from utils.training.writer import write_text_durably


def defaults() -> dict[str, Any]:
    """``{setting name: its declared default}``, a fresh dict."""
    return {name: info.default for name, info in SETTINGS.items()}


def resolve_config(*layers: dict[str, Any]) -> TrainConfig:
    """The declared defaults, overridden by each layer in turn: train.py passes a resumed
    run's saved settings, then the recipe files, then the command line."""
    values = defaults()
    for layer in layers:
        values.update(layer)
    values.update(names_from_dataset(values))
    return TrainConfig.from_flat(values)


def names_from_dataset(values: dict[str, Any]) -> dict[str, Any]:
    """``{"name_classes": [...]}`` from the data set's classes.txt (voc_annotation.py
    --name-classes writes it) when the settings ``values`` name no classes and it names as
    many as they have; else nothing (with a line saying why, where the counts differ)."""
    if values.get("name_classes") is not None or values.get("dataset_format") != "voc":
        return {}
    folder = DatasetLayout.of(values["dataset_path"]).images.parent
    names = read_classes_file(folder)
    if names is None:
        return {}
    if len(names) != values["num_classes"]:
        print(
            f"note: {folder / CLASSES_FILE} names {len(names)} classes but --num-classes is "
            f"{values['num_classes']}; its names are not used."
        )
        return {}
    return {"name_classes": names}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The settings of a recipe file, each checked by name and type, or one sentence."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config '{path}' does not exist; point it at a recipe .yaml file.")
    values = load_yaml(path)
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise UserError(
            f"--config '{path}' must be a mapping of 'setting: value' lines, not a "
            f"{type(values).__name__}."
        )
    out = {}
    for key, value in values.items():
        if key not in SETTINGS:
            raise UserError(unknown_key_message(str(key), f"--config '{path}'"))
        out[key] = coerce(SETTINGS[key], value, f"--config '{path}'")
    return out


def load_yaml(path: Path) -> Any:
    """PyYAML's ``safe_load`` of a recipe file. Without PyYAML, flat ``setting: value`` files,
    which recipes and config.yaml are, are still read as PyYAML would (see
    :func:`read_flat_yaml`)."""
    try:
        import yaml
    except ImportError:
        return read_flat_yaml(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise UserError(
            f"--config '{path}' is not valid YAML{where} ({getattr(error, 'problem', error)}); "
            "write one 'setting: value' per line."
        ) from None


_FLAT_LINE = re.compile(
    r"""([A-Za-z_]\w*):[ \t]*("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|\[[^\]]*\]|[^#]*?)"""
    r"[ \t]*(?:#.*)?"
)
_FLAT_ITEM = re.compile(r"""\s*("(?:[^"\\]|\\.)*"|'(?:[^']|'')*'|[^,\[\]"']*?)\s*(?:,|$)""")
_YAML_CONSTANTS = {"null": None, "~": None, "": None, "true": True, "yes": True, "on": True,
                   "false": False, "no": False, "off": False}  # fmt: skip


def read_flat_yaml(path: Path) -> dict[str, Any]:
    """``key: value`` lines (comments and blank lines aside), each value a YAML scalar or a flow
    list of scalars; anything else needs PyYAML, and says so.

    Kept although PyYAML is pinned: the GPU check runs the recipes with a GPU machine's own
    python, which has torch but not PyYAML."""
    values = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found = _FLAT_LINE.fullmatch(line)
        text = found.group(2) if found else ""
        if not found or (text.startswith("[") != text.endswith("]")):
            raise UserError(
                f"--config '{path}' line {number} is more than 'setting: value'; reading it "
                "needs PyYAML: pip install pyyaml."
            )
        if text.startswith("["):
            items = [m.group(1) for m in _FLAT_ITEM.finditer(text[1:-1]) if m.group(0)]
            values[found.group(1)] = [_flat_scalar(item) for item in items if item]
        else:
            values[found.group(1)] = _flat_scalar(text)
    return values


def _flat_scalar(text: str) -> Any:
    if text.startswith('"'):
        return json.loads(text)
    if text.startswith("'"):
        return text[1:-1].replace("''", "'")
    if text.lower() in _YAML_CONSTANTS:
        return _YAML_CONSTANTS[text.lower()]
    if re.fullmatch(r"[-+]?\d+", text):
        return int(text)
    if re.fullmatch(r"[-+]?(\d*\.\d*([eE][-+]?\d+)?|\.inf|\.nan)", text, re.IGNORECASE):
        return float(text.lower().replace(".inf", "inf").replace(".nan", "nan"))
    return text  # as PyYAML, 1e-3 without a dot stays text (coerce() reads it as a number)


def coerce(info: SettingInfo, value: Any, where: str) -> Any:
    """A value read from a file, checked against the setting's type, or one sentence."""
    if value is None and info.optional:
        return None
    expected = _expected(info)
    problem = f"{where}: {info.name} must be {expected}, not {value!r}"
    if info.is_list:
        if not isinstance(value, list) or (info.length and len(value) != info.length):
            raise UserError(f"{problem}; write it as a list, e.g. {info.name}: {_example(info)}.")
        return [_scalar(info, item, problem) for item in value]
    return _scalar(info, value, problem)


def _scalar(info: SettingInfo, value: Any, problem: str) -> Any:
    kind = info.item_type
    if kind is float and isinstance(value, str):  # PyYAML reads 1e-3 (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UserError(f"{problem}; e.g. {info.name}: {_example(info)}.")
    return value


def _expected(info: SettingInfo) -> str:
    names = {bool: "true or false", int: "a whole number", float: "a number", str: "text"}
    kind = names[info.item_type]
    if info.is_list:
        count = f"{info.length} values" if info.length else "a list of values"
        kind = f"{count}, each {kind}"
    return kind + (" or null" if info.optional else "")


def _example(info: SettingInfo) -> str:
    value = info.default if info.default is not None else _EXAMPLES.get(info.item_type)
    if info.is_list and not isinstance(value, list):
        value = [value] * (info.length or 2)
    return yaml_value(value)


_EXAMPLES = {int: 1, float: 1.0, str: "name", bool: True}


def render_yaml(values: dict[str, Any], header: str = "", show_defaults: bool = True) -> str:
    """A recipe file: every setting of ``values`` under its group, each after its help (and
    its default, with ``show_defaults``)."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    group = None
    for name, value in values.items():
        info = SETTINGS[name]
        if info.group != group:
            group = info.group
            lines += ["", f"## {group}"]
        if show_defaults:
            comment = f"{info.help} (default: {info.shown_default()})"
        elif value is None and "shown" in info.options:
            comment = f"{info.help} (null: {info.options['shown']})"
        else:
            comment = info.help
        lines += textwrap.wrap(
            comment, 99, initial_indent="# ", subsequent_indent="# ", break_on_hyphens=False
        )
        lines.append(f"{name}: {yaml_value(value)}")
    return "\n".join(lines).lstrip("\n") + "\n"


#: Plain YAML scalars that are not text: they must be quoted to stay strings.
_YAML_WORDS = {"null", "true", "false", "yes", "no", "on", "off", "y", "n", "~"}


def yaml_value(value: Any) -> str:
    """One setting's value in YAML's flow style, as PyYAML's ``safe_load`` reads it back; written
    without PyYAML, so training needs it only to read --config files."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        text = repr(value)
        mantissa, e, exponent = text.partition("e")
        if e and "." not in mantissa:  # YAML 1.1 floats need a dot: 1e-06 -> 1.0e-06
            text = f"{mantissa}.0e{exponent}"
        return text if math.isfinite(value) else {"inf": ".inf", "-inf": "-.inf"}.get(text, ".nan")
    if isinstance(value, list | tuple):
        return "[" + ", ".join(yaml_value(item) for item in value) + "]"
    text = str(value)
    plain = re.fullmatch(r"[A-Za-z_./][A-Za-z0-9_./-]*", text) and text.lower() not in _YAML_WORDS
    return text if plain else json.dumps(text)


def write_config(config: TrainConfig, path: str | Path) -> Path:
    """Write the resolved settings as ``config.yaml``, which ``--config`` reads back as is."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        f"The settings of this run, resolved from the defaults, recipe files and flags.\n"
        f"Train again with: python train.py --config {path}"
    )
    return write_text_durably(path, render_yaml(config.flat(), header))
