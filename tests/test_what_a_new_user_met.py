"""What a new user met on a first afternoon: files overwritten behind their back, messages that
pointed the wrong way, help that was not true, and the friction of the demo. One test each."""

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
import train
from tests.conftest import base_argv, save_random_weights
from utils import progress
from utils.settings.recipes import read_config_file, resolve_config
from utils.training.log import TrainingLog
from utils.training.lr_schedule import describe_lr
from utils.utils_metrics import show_results

ROOT = Path(__file__).resolve().parents[1]


def files_of(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``folder`` with its size and modification time."""
    return {
        str(path.relative_to(folder)): (path.stat().st_size, path.stat().st_mtime_ns)
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.slow
def test_resuming_a_copied_run_writes_into_the_copy_and_says_so_first(data_root, tmp_path, cli):
    first = tmp_path / "intr"
    argv = base_argv(data_root, first, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    copy = tmp_path / "copy"
    shutil.copytree(first, copy)
    before = files_of(first)
    resume = str(copy / "checkpoint_last.pth")
    code, out, err = cli(train.main, ["--resume", resume, "--unfreeze-epoch", "2"])
    assert code == 0, err
    assert out.splitlines()[0] == (
        f"Resuming {resume}, writing to {copy}/ (the checkpoint's folder; --save-dir writes "
        "elsewhere)"
    )
    assert files_of(first) == before  # the first run's folder is untouched
    assert torch.load(copy / "checkpoint_last.pth", weights_only=True)["epoch"] == 2
    assert f"save_dir: {copy}" in (copy / "config.yaml").read_text()
    logs = [path for path in copy.iterdir() if path.name.startswith("loss_")]
    assert len(logs) == 1 and len((logs[0] / "epoch_loss.txt").read_text().split()) == 2


def test_dir_predict_never_overwrites_outputs_whose_stems_collide(tmp_path, cli):
    weights = save_random_weights(tmp_path / "w.pth", num_classes=3)
    folder = tmp_path / "in"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    for name in ("a.jpg", "a.jpeg", "a.png", "gray.png"):
        Image.fromarray(pixels).convert("L" if name == "gray.png" else "RGB").save(folder / name)
    out = tmp_path / "out"
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(folder), "--dir-save-path",
            str(out), "--model-path", str(weights), "--num-classes", "3", "--input-shape",
            "32", "32", "--device", "cpu"]  # fmt: skip
    code, stdout, err = cli(predict.main, argv)
    assert code == 0, err
    drawn = sorted(path.name for path in out.iterdir() if path.name != "legend.png")
    assert drawn == ["a.jpeg.png", "a.jpg.png", "a.png.png", "gray.png"]
    assert f"saved 4 of 4 to {out}" in stdout


def test_a_script_writing_to_its_default_folder_writes_into_the_tests_own(tmp_path, cli):
    weights = save_random_weights(tmp_path / "w.pth", num_classes=3)
    picture = tmp_path / "unique_name_of_this_test.png"
    Image.new("RGB", (20, 16), (10, 200, 30)).save(picture)
    argv = [str(picture), "--model-path", str(weights), "--num-classes", "3", "--input-shape",
            "32", "32", "--device", "cpu"]  # fmt: skip
    assert cli(predict.main, argv)[0] == 0
    assert Path.cwd() == tmp_path and (tmp_path / "img_out" / picture.name).is_file()
    assert not (ROOT / "img_out" / picture.name).exists()


def test_get_miou_with_another_class_count_blames_the_class_count(trained, tmp_path, cli):
    root, logs = trained
    argv = ["--dataset-path", str(root), "--model-path", str(logs / "last_epoch_weights.pth"),
            "--num-classes", "3", "--device", "cpu", "--miou-out-path", str(tmp_path)]  # fmt: skip
    for mode in ("0", "2"):
        code, _, err = cli(get_miou.main, [*argv, "--miou-mode", mode])
        assert code == 2 and "Traceback" not in err
        assert "the model has 4 classes" in err and "num_classes (--num-classes) is 3" in err
        assert "--name-classes has" not in err and "drop --num-classes" in err


def test_a_folder_given_as_an_image_points_to_dir_predict(tmp_path, cli):
    weights = save_random_weights(tmp_path / "w.pth", num_classes=3)
    argv = [str(tmp_path), "--model-path", str(weights), "--num-classes", "3", "--device", "cpu"]
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "Traceback" not in err and "Errno" not in err
    assert f"'{tmp_path}' is a folder" in err
    assert f"--mode dir_predict --dir-origin-path {tmp_path}" in err


@pytest.mark.parametrize("mode", ["predict", "predict_onnx"])
def test_a_folder_given_to_predict_modes_points_to_dir_predict_instead_of_prompting(
    mode, tmp_path, cli, monkeypatch
):
    monkeypatch.setattr("builtins.input", lambda *_: pytest.fail("it asked for a file name"))
    code, _, err = cli(predict.main, ["--mode", mode, "--dir-origin-path", str(tmp_path)])
    assert code == 2 and "--dir-origin-path is read by --mode dir_predict" in err
    expected = " --onnx-path model_data/models.onnx" if mode == "predict_onnx" else ""
    assert f"run --mode dir_predict{expected} --dir-origin-path {tmp_path}." in err


def test_fps_with_an_onnx_path_times_that_model(onnx_files, tmp_path, cli):
    argv = ["--mode", "fps", "--onnx-path", str(onnx_files / "static.onnx"), "--test-interval",
            "1", "--fps-batch-size", "1", "--device", "cpu"]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    rows = [line.split("  ")[0] for line in out.splitlines() if line.endswith((" s", " -"))]
    assert "onnxruntime fp32" in rows and not any(row.startswith("torch") for row in rows)
    code, _, err = cli(predict.main, ["--mode", "fps", "--model-path", str(tmp_path / "no.pth")])
    assert code == 2 and "does not exist" in err and "train.py" not in err


def test_make_venv_torch_cpu_stops_with_a_sentence_when_the_cpu_wheels_fail(tmp_path):
    fake = tmp_path / "python"  # a python whose pip cannot reach the CPU wheel index
    fake.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/calls\nexit 1\n')
    fake.chmod(0o755)
    result = subprocess.run(["make", "-s", "venv", "TORCH=cpu", f"VENV={tmp_path}/venv",
                             f"PY={fake}"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode != 0
    assert "make venv TORCH=cpu: PyTorch's CPU wheels could not be installed" in result.stderr
    assert "run make venv without TORCH=cpu: PyPI's CUDA build runs on a CPU too" in result.stderr
    calls = (tmp_path / "calls").read_text()
    assert "--timeout 20 --retries 1" in calls and "-r requirements.txt" not in calls


def test_the_help_says_which_defaults_are_not_the_originals_and_mentions_no_scaler_outside_train():
    text = " ".join(train.get_parser().format_help().split())
    assert "Every setting defaults to the original's value, but init_type (--init-type) is " \
        "kaiming, not the original's normal:" in text  # fmt: skip
    for parser in (predict.get_parser(), get_miou.get_parser()):
        assert "GradScaler" not in parser.format_help()


def test_get_miou_help_has_each_section_once():
    titles = [line for line in get_miou.get_parser().format_help().splitlines()
              if line.endswith(":") and not line.startswith(" ")]  # fmt: skip
    assert len(titles) == len(set(titles)) and "data and model:" in titles


def test_the_miou_curve_is_the_val_miou_and_its_legend_leaves_the_last_point_clear(tmp_path):
    pytest.importorskip("matplotlib").use("Agg")
    log = TrainingLog(tmp_path, class_names=["a", "b"])
    for epoch, miou in enumerate([20.0, 45.0, 60.0, 71.0, 78.0], start=1):
        log.append_miou(epoch, miou)
    log.close()
    fig = log.miou_figure()
    fig.canvas.draw()
    axes = fig.axes[0]
    legend = axes.get_legend()
    assert [text.get_text() for text in legend.get_texts()] == ["val mIoU"]
    last = axes.transData.transform((5, 78.0))
    assert not legend.get_window_extent().contains(*last)
    assert (tmp_path / "epoch_miou.png").is_file()


def test_a_progress_line_ends_once_with_the_final_figures(monkeypatch, capsys):
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)  # a line at every update
    bar = progress.LineProgress(total=3, desc="Epoch 1/1")
    for step in range(3):
        bar.update()
        bar.set_postfix(loss=f"{step}")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" [")[0] for line in lines] == ["Epoch 1/1: 1/3", "Epoch 1/1: 2/3",
                                                       "Epoch 1/1: 3/3"]  # fmt: skip
    assert lines[-1].endswith("loss=2")


def test_the_confusion_matrix_csv_says_rows_are_labels(tmp_path):
    hist = np.array([[5, 1], [2, 7]])
    show_results(tmp_path, hist, np.ones(2), np.ones(2), np.ones(2), ["bg", "cell"])
    rows = (tmp_path / "confusion_matrix.csv").read_text().splitlines()
    assert rows[0] == "label \\ prediction,bg,cell" and rows[1] == "bg,5,1"


def test_the_demo_recipe_builds_on_the_from_scratch_recipe_without_a_clamp():
    demo = read_config_file(ROOT / "recipes/demo.yaml")
    scratch = read_config_file(ROOT / "recipes/scratch.yaml")
    assert {key: demo.get(key) for key in scratch} == scratch
    config = resolve_config(demo)
    opt = config.optimizer
    warning = describe_lr(opt.init_lr, opt.final_lr, config.schedule.unfreeze_batch_size,
                          opt.optimizer_type, opt.lr_fit)[1]  # fmt: skip
    assert warning is None


def test_save_period_zero_keeps_no_periodic_weights(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag", "--save-period", "0")  # fmt: skip
    assert cli(train.main, argv)[0] == 0
    names = sorted(path.name for path in tmp_path.glob("*.pth"))
    assert names == ["best_epoch_weights.pth", "checkpoint_last.pth", "last_epoch_weights.pth"]
    assert os.path.samefile(tmp_path / names[0], tmp_path / names[2])  # one file, two names


def test_output_names_never_collide_even_where_case_does_not_count():
    from utils.images import distinct_names

    names = distinct_names(["in/a.jpg", "in/A.png", "in/b.png", "other/b.png", "c.JPG"])
    assert names == ["a.jpg.png", "A.png.png", "b.png.png", "b.png-2.png", "c.png"]
    assert len({name.lower() for name in names}) == len(names)
    # a numbered name that is also another input's own name moves on to the next number
    names = distinct_names(["d1/a.jpg", "d2/a.jpg", "d3/a.jpg-2.jpg"])
    assert names == ["a.jpg.png", "a.jpg-2.png", "a.jpg-2-2.png"]


def test_a_video_whose_frames_fail_to_decode_stops_with_the_error_instead_of_hanging():
    from utils.inference.video import read_frames

    class Broken:
        def read(self):
            raise RuntimeError("the camera went away")

    with pytest.raises(RuntimeError, match="the camera went away"):
        list(read_frames(Broken(), (32, 32), 2))
