"""What every script's command line shares: --help shows every default, at one width."""

import importlib

import pytest

from utils.cli import HELP_WIDTH, HelpFormatter

SCRIPTS = ["train", "predict", "get_miou", "summary", "voc_annotation", "json_to_dataset",
           "utils.demo_data"]  # fmt: skip


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_shows_every_default_at_one_width(name):
    parser = importlib.import_module(name).get_parser()
    formatter = HelpFormatter(parser.prog)
    missing = [
        action.option_strings[0]
        for action in parser._actions
        if action.option_strings and action.dest != "help"
        and "default" not in formatter._get_help_string(action)
    ]  # fmt: skip
    assert not missing, f"{name}: no default shown for {missing}"
    assert max(len(line) for line in parser.format_help().splitlines()) <= HELP_WIDTH
