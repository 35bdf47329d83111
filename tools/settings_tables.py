"""The settings tables of the docs, and recipes/voc.yaml, generated from the declarations in
``utils/config.py``; tests/test_config.py checks that the committed files are up to date::

    python -m tools.settings_tables table       # docs/training.md's table of every setting
    python -m tools.settings_tables originals   # docs/migrating.md's table of the constants
    python -m tools.settings_tables voc > recipes/voc.yaml
"""

from __future__ import annotations

import sys

from utils.config import SECTIONS, SETTINGS, setting_names
from utils.recipes import voc_recipe


def markdown_table(originals_only: bool = False) -> str:
    """The docs' table of settings: key, flag, default and help, or (``originals_only``) the
    original's constants with the key and flag that replace each."""
    if originals_only:
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


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def main(argv: list[str] | None = None) -> None:
    """Print a docs table, or recipes/voc.yaml."""
    what = (argv if argv is not None else sys.argv[1:]) or ["voc"]
    if what[0] == "table":
        print(markdown_table(), end="")
    elif what[0] == "originals":
        print(markdown_table(originals_only=True), end="")
    else:
        print(voc_recipe(), end="")


if __name__ == "__main__":
    main()
