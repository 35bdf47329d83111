"""The settings tables of the docs, and recipes/voc.yaml, generated from the declarations in
``utils/settings/config.py``; tests/test_config.py checks that the committed files are up to date::

    python -m tools.settings_tables table       # docs/training.md's table of every setting
    python -m tools.settings_tables originals   # docs/migrating.md's table of the constants
    python -m tools.settings_tables voc > recipes/voc.yaml
"""

from __future__ import annotations

import sys

from utils.settings.config import SECTIONS, SETTINGS, setting_names
from utils.settings.recipes import defaults, render_yaml


def settings_table() -> str:
    """docs/training.md's table: every setting's key, flag, default and help, by section."""
    rows = []
    for section in SECTIONS.values():
        rows += [
            "",
            f"**{section.__doc__}**",
            "",
            "| setting (recipe key) | flag | default | what it does |",
            "| --- | --- | --- | --- |",
        ]
        for name in setting_names(section):
            info = SETTINGS[name]
            rows.append(
                f"| `{name}` | `{info.flag}` | {_cell(info.shown_default())} | {_cell(info.help)} |"
            )
    return "\n".join(rows).lstrip("\n") + "\n"


def originals_table() -> str:
    """docs/migrating.md's table: each of the original's constants and what replaces it."""
    rows = [
        "| the original's constant | setting (recipe key) | flag | default |",
        "| --- | --- | --- | --- |",
    ]
    for info in SETTINGS.values():
        if info.options.get("original"):
            rows.append(
                f"| `{info.options['original']}` | `{info.name}` | `{info.flag}` | "
                f"{_cell(info.shown_default())} |"
            )
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


#: The head of recipes/voc.yaml, which :func:`voc_recipe` writes whole.
VOC_RECIPE_HEADER = """\
The original's train.py, every constant at its default, one comment each: the block of
constants its users edit. Copy this file, change what you need, and run
    python train.py --config my_recipe.yaml
Flags given with --config win over the file. Each setting's flag is its name in kebab-case
(num_classes -> --num-classes); docs/migrating.md maps the original's constant names.
This file is generated: python -m tools.settings_tables voc > recipes/voc.yaml"""


def voc_recipe() -> str:
    """recipes/voc.yaml: every setting at its default, under its help."""
    return render_yaml(defaults(), VOC_RECIPE_HEADER, show_defaults=False)


#: What ``python -m tools.settings_tables WHAT`` prints.
OUTPUTS = {"table": settings_table, "originals": originals_table, "voc": voc_recipe}


def main(argv: list[str] | None = None) -> None:
    """Print a docs table, or recipes/voc.yaml."""
    what = (argv if argv is not None else sys.argv[1:]) or ["voc"]
    if what[0] not in OUTPUTS:
        sys.exit(f"python -m tools.settings_tables: say one of {', '.join(OUTPUTS)}.")
    print(OUTPUTS[what[0]](), end="")


if __name__ == "__main__":
    main()
