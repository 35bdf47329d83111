"""One declaration per setting: recipe files, their precedence, the config.yaml a run writes,
the sentences for mistakes, the docs' tables, and the shape of the code around them."""

import ast
import re
import sys
from pathlib import Path

import pytest
import torch

import train
from tools.settings_tables import originals_table, settings_table, voc_recipe
from utils.errors import UserError
from utils.settings.config import (
    FIXED_ON_RESUME,
    MODEL_KEYS,
    SETTINGS,
    TrainConfig,
)
from utils.settings.recipes import load_yaml, read_config_file, resolve_config, yaml_value
from utils.settings.validation import validate

yaml = pytest.importorskip("yaml")  # recipe files need PyYAML; the GPU check may run without

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {"train", "train_medical", "predict", "get_miou", "voc_annotation", "summary",
           "json_to_dataset", "unet"}  # fmt: skip


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_flags_beat_the_recipe_files_which_beat_the_defaults(tmp_path):
    first = write(tmp_path / "a.yaml", "num_classes: 4\ninit_lr: 1e-3\nfreeze_epoch: 7\n")
    second = write(tmp_path / "b.yaml", "freeze_epoch: 9\ninput_shape: [64, 96]\n")
    argv = ["--config", str(first), "--config", str(second), "--init-lr", "0.01"]
    config, _, _ = train.get_config(argv)
    assert config.optimizer.init_lr == 0.01  # the flag over the file
    assert config.data.num_classes == 4  # the file over the default
    assert config.schedule.freeze_epoch == 9  # the later file over the earlier
    assert config.data.input_shape == [64, 96]
    assert config.schedule.unfreeze_epoch == 100 and config.data.backbone == "vgg"  # defaults


def test_a_recipe_gives_the_defaults_that_a_checkpoint_and_flags_override(tmp_path):
    recipe = write(tmp_path / "medical.yaml", "dataset_format: medical\nnum_classes: 2\n")
    config, _, _ = train.get_config(["--num-classes", "3"], recipe=recipe)
    assert (config.data.dataset_format, config.data.num_classes) == ("medical", 3)


@pytest.mark.slow
def test_the_written_config_trains_the_same_weights_again(data_root, tmp_path, cli):
    argv = ["--dataset-path", str(data_root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "2",
            "--unfreeze-batch-size", "2", "--init-lr", "1e-3", "--no-lr-fit", "--dice-loss",
            "--augment", "flip", "--num-workers", "0", "--device", "cpu", "--no-eval-flag",
            "--save-dir", str(tmp_path / "first")]  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    written = tmp_path / "first" / "config.yaml"
    again = ["--config", str(written), "--save-dir", str(tmp_path / "again")]
    assert cli(train.main, again)[0] == 0
    first, second = (torch.load(tmp_path / run / "last_epoch_weights.pth", weights_only=True)
                     for run in ("first", "again"))  # fmt: skip
    assert all(torch.equal(first[key], second[key]) for key in first)
    saved = [read_config_file(tmp_path / run / "config.yaml") for run in ("first", "again")]
    assert saved[1] == {**saved[0], "save_dir": str(tmp_path / "again")}
    assert saved[0]["init_lr"] == 1e-3 and saved[0]["min_lr"] is None  # nothing rewritten
    checkpoint = torch.load(tmp_path / "first" / "checkpoint_last.pth", weights_only=True)
    assert checkpoint["config"] == saved[0]


@pytest.mark.parametrize(
    ("text", "message"),
    [("num_clases: 4\n", "set 'num_clases', which is not a setting of train.py; did you mean "
      "'num_classes'?"),
     ("Init_lr: 0.01\n", "did you mean 'init_lr'?"),
     ("input_shape: 512\n", "input_shape must be 2 values, each a whole number, not 512; write "
      "it as a list, e.g. input_shape: [512, 512]."),
     ("init_lr: fast\n", "init_lr must be a number, not 'fast'; e.g. init_lr: 0.0001."),
     ("num_classes: 2.5\n", "num_classes must be a whole number, not 2.5"),
     ("dice_loss: 1\n", "dice_loss must be true or false, not 1"),
     ("num_classes: null\n", "num_classes must be a whole number, not None"),
     ("- 1\n- 2\n", "must be a mapping of 'setting: value' lines, not a list"),
     ("num_classes: [4\n", "is not valid YAML at line"),
     ("backbone: resnet\n", "backbone (--backbone) is 'resnet'; use one of vgg, resnet50, "),
     ("num_classes: 1\n", "num_classes (--num-classes) must be at least 2, not 1.")],
)  # fmt: skip
def test_a_mistake_in_a_recipe_file_is_one_sentence_naming_it(tmp_path, cli, text, message):
    recipe = write(tmp_path / "recipe.yaml", text)
    code, out, err = cli(train.main, ["--config", str(recipe), "--device", "cpu"])
    assert code == 2 and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1 and not out


def test_a_missing_recipe_file_is_named(cli):
    code, _, err = cli(train.main, ["--config", "no/such.yaml"])
    assert code == 2 and "--config 'no/such.yaml' does not exist" in err


@pytest.mark.slow
def test_a_resumed_run_refuses_a_recipe_that_changes_the_models_shape(data_root, tmp_path, cli):
    argv = ["--dataset-path", str(data_root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
            "--num-workers", "0", "--device", "cpu", "--no-eval-flag",
            "--save-dir", str(tmp_path)]  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    recipe = write(tmp_path / "wider.yaml", "input_shape: [64, 64]\nunfreeze_epoch: 2\n")
    resume = ["--resume", str(tmp_path / "checkpoint_last.pth"), "--config", str(recipe)]
    code, _, err = cli(train.main, resume)
    assert code == 2
    assert "input_shape (--input-shape) 64 64 differs from the checkpoint's 32 32" in err


def test_every_recipe_is_a_valid_set_of_settings():
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert {p.relative_to(ROOT / "recipes").as_posix() for p in recipes} >= {
        "voc.yaml", "scratch.yaml", "demo.yaml", "medical.yaml", "isbi2012/cpu.yaml",
        "isbi2012/gpu.yaml",
    }  # fmt: skip
    for path in recipes:
        validate(resolve_config(read_config_file(path)))


def test_voc_recipe_is_the_originals_train_py_with_a_comment_for_every_constant():
    text = (ROOT / "recipes/voc.yaml").read_text()
    regenerate = "python -m tools.settings_tables voc > recipes/voc.yaml"
    assert text == voc_recipe(), f"regenerate it: {regenerate}"
    values = read_config_file(ROOT / "recipes/voc.yaml")
    assert list(values) == list(SETTINGS)  # every setting, in declaration order
    assert values == {name: info.default for name, info in SETTINGS.items()}
    lines = text.splitlines()
    for name in SETTINGS:
        above = lines[lines.index(f"{name}: {yaml_value(values[name])}") - 1]
        assert above.startswith("# "), name


TRICKY = ["VOCdevkit", "", "yes", "1e-3", "12", "a b", "it's", 'say "hi"', "x # y", "a:b", 1e-06,
          0.001, -3, True, None, [512, 512], ["on", "x, y"], float("inf")]  # fmt: skip


def test_without_pyyaml_flat_recipes_read_as_pyyaml_reads_them(tmp_path, monkeypatch):
    lines = [f"k{i}: {yaml_value(v)}  # a comment\n" for i, v in enumerate(TRICKY)]
    tricky = write(tmp_path / "tricky.yaml", "".join(lines) + "bare: 1e-3\n")
    files = [*sorted((ROOT / "recipes").rglob("*.yaml")), tricky]
    expected = [yaml.safe_load(path.read_text()) for path in files]
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml fails, as on a bare GPU machine
    assert [load_yaml(path) for path in files] == expected
    nested = write(tmp_path / "nested.yaml", "input_shape:\n  - 512\n  - 512\n")
    with pytest.raises(UserError, match="line 2 is more than 'setting: value'; reading it needs "
                                        "PyYAML: pip install pyyaml."):  # fmt: skip
        load_yaml(nested)


def test_a_flag_can_unset_what_a_recipe_set(tmp_path):
    recipe = write(tmp_path / "r.yaml", "tile: 64\ntrain_crop: [64, 64]\nmin_lr: 1e-6\n")
    argv = ["--config", str(recipe), "--tile", "none", "--train-crop", "none", "--min-lr", "none"]
    config, _, _ = train.get_config(argv)
    assert (config.evaluation.tile, config.data.train_crop, config.optimizer.min_lr) == (
        None, None, None)  # fmt: skip
    assert config.optimizer.final_lr == pytest.approx(1e-6)  # init_lr * 0.01 again


def test_the_derived_lists_come_from_the_declarations():
    assert MODEL_KEYS == ("dataset_format", "num_classes", "name_classes", "backbone",
                          "width_mult", "input_shape", "tile", "stride")  # fmt: skip
    assert FIXED_ON_RESUME == ("dataset_format", "num_classes", "backbone", "width_mult",
                               "input_shape")  # fmt: skip
    config = TrainConfig.from_flat({"num_classes": 4, "tile": 64})
    assert config.model_settings() == {
        "dataset_format": "voc", "num_classes": 4, "name_classes": None, "backbone": "vgg",
        "width_mult": 1.0, "input_shape": [512, 512], "tile": 64, "stride": None,
    }  # fmt: skip


def test_every_setting_has_a_flag_a_default_and_help_in_train_py():
    help_text = train.get_parser().format_help()
    for name, info in SETTINGS.items():
        assert info.flag in help_text and info.help, name
        assert info.flag == "--" + name.replace("_", "-")


@pytest.mark.parametrize(("page", "marker", "originals"),
                         [("docs/migrating.md", "originals", True),
                          ("docs/training.md", "all", False)])  # fmt: skip
def test_the_docs_tables_are_the_declarations(page, marker, originals):
    text = (ROOT / page).read_text()
    found = re.search(
        rf"<!-- settings-table: {marker} -->\n(.*?)<!-- /settings-table -->", text, re.DOTALL
    )
    assert found, f"{page} has no settings table between its markers"
    which = marker if originals else "table"
    assert found.group(1) == (originals_table() if originals else settings_table()), (
        f"{page} is out of date: paste `python -m tools.settings_tables {which}`"
    )


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_imports_run_one_way():
    for path in [*(ROOT / "utils").rglob("*.py"), *(ROOT / "nets").glob("*.py")]:
        scripts = {name.split(".")[0] for name in imports_of(path)} & SCRIPTS
        assert not scripts, f"{path.name} imports the script(s) {scripts}"
    assert "argparse" not in imports_of(ROOT / "unet.py")
    for path in (ROOT / "nets").glob("*.py"):  # the model package needs nothing above it,
        up = {name for name in imports_of(path) if name.split(".")[0] == "utils"}
        if path.name == "unet_training.py":  # but the original's face hands on the LR functions
            up -= {"utils.training.lr_schedule"}
        assert not up, f"nets/{path.name} imports {up}"
    for path in (ROOT / "benchmarks").glob("*.py"):
        assert not any(name.split(".")[0] == "tests" for name in imports_of(path)), path.name
    jobs = ("utils.data", "utils.training", "utils.inference", "utils.settings")
    faces = {"dataloader.py", "utils.py", "utils_fit.py"}  # the original's paths, handing on
    for path in (ROOT / "utils").glob("*.py"):  # the floor stands below every job
        if path.name not in faces:
            up = {name for name in imports_of(path) if name.startswith(jobs)}
            assert not up, f"utils/{path.name} imports {up}"


def product_modules() -> list[Path]:
    """The product's Python files: everything but the tests, benchmarks and the oracle."""
    skip = (".venv", ".git", "tests", "benchmarks", "oracle")
    return [path for path in ROOT.rglob("*.py") if path.relative_to(ROOT).parts[0] not in skip]


def test_no_folder_holds_more_than_30_percent_of_the_product_and_utils_is_by_job():
    lines = {path: len(path.read_text().splitlines()) for path in product_modules()}
    folders: dict[Path, int] = {}
    for path, count in lines.items():
        folders[path.parent] = folders.get(path.parent, 0) + count
    total = sum(lines.values())
    heavy = {str(f.relative_to(ROOT)): f"{n / total:.0%}" for f, n in folders.items()
             if n > 0.30 * total}  # fmt: skip
    assert not heavy, f"folders holding over 30% of the product's {total} lines: {heavy}"
    jobs = {path.name for path in (ROOT / "utils").iterdir() if (path / "__init__.py").exists()}
    assert jobs == {"data", "training", "inference", "settings"}
    # the original's paths stay: each is the real home of its names or a face over it
    from nets.unet_training import CE_Loss, Dice_loss, Focal_Loss, get_lr_scheduler, weights_init
    from utils.dataloader import UnetDataset, unet_dataset_collate
    from utils.utils import cvtColor, get_lr, seed_everything
    from utils.utils_fit import evaluate_loss, train_one_epoch
    from utils.utils_metrics import compute_mIoU, f_score, fast_hist, per_class_iu

    assert all(map(callable, (CE_Loss, Dice_loss, Focal_Loss, get_lr_scheduler, weights_init,
                              UnetDataset, unet_dataset_collate, compute_mIoU, f_score,
                              fast_hist, per_class_iu, cvtColor, get_lr, seed_everything,
                              evaluate_loss, train_one_epoch)))  # fmt: skip


def test_no_function_is_longer_than_60_lines_and_train_py_stays_thin():
    long = []
    for path in ROOT.rglob("*.py"):
        if path.relative_to(ROOT).parts[0] in (".venv", "tests"):  # benchmarks too
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.relative_to(ROOT)}:{node.name} ({length} lines)")
    assert not long
    # deploy/onnx_predict.py is one file by design: copied alone to a machine without torch
    big = [f"{path.relative_to(ROOT)} ({lines})" for path in ROOT.rglob("*.py")
           if path.relative_to(ROOT).parts[0] not in (".venv", "tests", "benchmarks", "oracle")
           and path.relative_to(ROOT) != Path("deploy/onnx_predict.py")
           and (lines := len(path.read_text().splitlines())) > 450]  # fmt: skip
    assert not big, f"product modules over 450 lines: {big}"
    assert len((ROOT / "train.py").read_text().splitlines()) <= 250
    assert len((ROOT / "README.md").read_text().splitlines()) <= 250


def test_an_augmentation_is_registered_once_and_the_flag_and_help_follow():
    from utils.data.augment import AUGMENTATIONS

    info = SETTINGS["augment"]
    names = ("reference", "flip", "d4", "elastic", "shapes", "none")
    assert info.options["choices"] == tuple(AUGMENTATIONS) == names
    text = " ".join(train.get_parser().format_help().split())
    for augmentation in AUGMENTATIONS.values():
        assert f"{augmentation.name} = {augmentation.help}" in text


def test_a_models_settings_are_the_declared_settings_that_travel_with_the_weights():
    import dataclasses

    from utils.settings.model import ModelSettings

    assert tuple(field.name for field in dataclasses.fields(ModelSettings)) == MODEL_KEYS
    assert ModelSettings().to_dict() == {key: SETTINGS[key].default for key in MODEL_KEYS}
