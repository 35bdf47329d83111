"""What every script's command line shares: --help shows every default at one width and keeps
the examples as written, and every option of train.py, predict.py and get_miou.py is passed by
some test."""

import argparse
import importlib
import re
from pathlib import Path

import pytest

from utils.settings.cli import HELP_WIDTH

SCRIPTS = ["train", "train_medical", "predict", "get_miou", "summary", "voc_annotation",
           "json_to_dataset", "utils.data.demo_data"]  # fmt: skip
TESTS = Path(__file__).resolve().parent


def option_blocks(help_text: str) -> dict[str, str]:
    """Each option's help, as the real parser prints it: from its flag to the next flag."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        found = re.match(r"  (-{1,2}[\w-]+)", line)
        if found:
            current = found.group(1)
            blocks[current] = ""
        if current:
            blocks[current] += line + "\n"
    return blocks


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_every_default_at_one_width_and_the_examples_as_written(name, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # a wide terminal must not widen the help
    module = importlib.import_module(name)
    parser = module.get_parser()
    text = parser.format_help()
    blocks = option_blocks(text)
    options = [a.option_strings[0] for a in parser._actions
               if a.option_strings and a.dest != "help"]  # fmt: skip
    missing = [flag for flag in options if "default" not in blocks.get(flag, "")]
    assert not missing, f"{name}: no default shown for {missing}"
    assert max(len(line) for line in text.splitlines()) <= HELP_WIDTH
    examples = [line for line in (module.__doc__ or "").splitlines() if line.startswith("    ")]
    lines = text.splitlines()
    assert all(example in lines for example in examples), f"{name}: an example was re-wrapped"


def exercised_text() -> str:
    return "\n".join(p.read_text() for p in TESTS.glob("*.py") if p.name != Path(__file__).name)


@pytest.mark.parametrize("name", ["train", "predict", "get_miou"])
def test_every_option_is_passed_by_some_test(name):
    """Fails when a new option has no test: each one (or its --no- form) must appear quoted in
    a test that runs the script with it."""
    text = exercised_text()
    parser = importlib.import_module(name).get_parser()
    untested = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        spellings = [s for s in action.option_strings if s.startswith("--")]
        if spellings and not any(f'"{spelling}"' in text for spelling in spellings):
            untested.append(spellings[0])
    assert not untested, f"{name}.py options no test passes: {untested}"


def test_train_medical_help_shows_the_medical_defaults():
    blocks = option_blocks(importlib.import_module("train_medical").get_parser().format_help())
    assert "(default: medical)" in blocks["--dataset-format"]
    assert "(default: 2)" in blocks["--num-classes"]
    assert "(default: Medical_Datasets)" in blocks["--dataset-path"]
