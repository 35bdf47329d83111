"""What a stress test of the command line and the page found: each fault a user or the machine
can cause ends in one sentence (exit code 2 where the run cannot go on) and leaves nothing
behind. A full disk and a read-only folder are real mounts where the machine allows them
(root, or a user allowed to mount), and skipped with a sentence where it does not."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import get_miou
import predict
import train
from tests.conftest import base_argv
from utils.images import read_image, to_8_bits
from utils.inference.segmenter import KEEP, Options, Segmenter, find_models
from utils.training.checkpoint import read_training_checkpoint

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def mounted(folder: Path, *options: str):
    """A tmpfs mounted on ``folder`` with ``options`` (size=..., ro), unmounted after."""
    folder.mkdir(parents=True, exist_ok=True)
    mount = subprocess.run(["mount", "-t", "tmpfs", "-o", ",".join(options), "tmpfs", str(folder)],
                           capture_output=True, text=True)  # fmt: skip
    if mount.returncode != 0:
        pytest.skip(f"this machine does not let the tests mount a tmpfs ({mount.stderr.strip()})")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def one_line_error(err: str) -> str:
    """The error, which must be one line (beside the progress bars) and no traceback."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.slow
def test_a_full_disk_stops_training_with_a_sentence_and_leaves_no_temporary_file(
    data_root, tmp_path, cli
):
    # the weights (94 MB) fit in 150 MiB, the checkpoint beside them (with Adam's state) does not
    with mounted(tmp_path / "small", "size=150m") as small:
        argv = base_argv(data_root, small, "--no-freeze-train", "--unfreeze-epoch", "2",
                         "--no-eval-flag")  # fmt: skip
        code, _, err = cli(train.main, argv)
        left = sorted(p.name for p in small.rglob("*.tmp"))
    assert code == 2
    assert f"no space left in '{small}'" in one_line_error(err)
    assert not left


def test_a_read_only_save_folder_is_refused_before_training(data_root, tmp_path, cli):
    with mounted(tmp_path / "ro", "ro", "size=1m") as read_only:
        code, out, err = cli(train.main, base_argv(data_root, read_only / "run"))
    assert code == 2 and "Epoch" not in out
    assert f"--save-dir '{read_only / 'run'}' cannot be written" in one_line_error(err)


@pytest.mark.parametrize("script", ["train", "predict", "get_miou"])
def test_an_empty_weights_file_is_named_in_every_script(script, data_root, tmp_path, cli):
    empty = tmp_path / "e.pth"
    empty.write_bytes(b"")
    weights = ["--model-path", str(empty), "--device", "cpu"]
    argv = {
        "train": [*base_argv(data_root, tmp_path / "run"), "--resume", str(empty)],
        "predict": ["--mode", "dir_predict", "--dir-origin-path", str(data_root), *weights],
        "get_miou": ["--dataset-path", str(data_root), "--num-classes", "4", *weights],
    }[script]
    main = {"train": train.main, "predict": predict.main, "get_miou": get_miou.main}[script]
    code, _, err = cli(main, argv)
    assert code == 2
    assert f"'{empty}' is empty (0 bytes)" in one_line_error(err)


def child_pids(pid: int) -> set[int]:
    """The processes ``pid`` started (its DataLoader workers), read from /proc."""
    found = set()
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found.update(int(p) for p in (task / "children").read_text().split())
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_training_as_ctrl_c_does(signum, data_root, tmp_path):
    """Sent mid-run, after the first checkpoint: the resume line, the conventional exit code, no
    worker outliving the run, a whole checkpoint that resumes."""
    run = tmp_path / "run"
    argv = base_argv(data_root, run, "--no-freeze-train", "--unfreeze-epoch", "50",
                     "--no-eval-flag", "--num-workers", "1")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "train.py", *argv], cwd=ROOT, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            if (run / "checkpoint_last.pth").exists() and child_pids(process.pid):
                break
            time.sleep(0.05)
        workers = child_pids(process.pid)
        assert workers, process.stderr.read().decode()[-2000:]
        process.send_signal(signum)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    err = err.decode()
    assert process.returncode == 128 + signum, err[-2000:]
    name = signal.Signals(signum).name
    assert f"{name} at epoch " in err and "resume with: python train.py --resume" in err
    assert "Traceback" not in err
    time.sleep(0.5)
    assert not [pid for pid in workers if alive(pid)]
    assert read_training_checkpoint(run / "checkpoint_last.pth")["epoch"] >= 1
    assert not list(run.rglob("*.tmp"))


@pytest.fixture
def bad_folder(data_root, tmp_path):
    """Four readable images, and beside them: a decompression bomb (over Pillow's limit, made
    small by lowering the limit), a 4000x2 strip, a damaged file, a broken link and a .gif."""
    folder = tmp_path / "images"
    folder.mkdir()
    jpegs = sorted((data_root / "VOC2007/JPEGImages").glob("*.jpg"))[:4]
    for path in jpegs:
        (folder / path.name).write_bytes(path.read_bytes())
    Image.new("RGB", (300, 300), (90, 120, 30)).save(folder / "bomb.png")
    Image.fromarray(np.full((2, 4000, 3), 200, np.uint8)).save(folder / "strip.png")
    (folder / "damaged.jpg").write_bytes(jpegs[0].read_bytes()[:200])
    (folder / "gone.jpg").symlink_to(tmp_path / "nowhere.jpg")
    Image.open(jpegs[1]).save(folder / "anim.gif")
    return folder


def test_dir_predict_goes_on_past_every_bad_image_and_lists_each_reason(
    trained, bad_folder, tmp_path, cli, monkeypatch
):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # bomb.png (90000 px) is over 2x
    out = tmp_path / "out"
    argv = ["--mode", "dir_predict", "--dir-origin-path", str(bad_folder), "--dir-save-path",
            str(out), "--model-path", str(trained[1] / "last_epoch_weights.pth"),
            "--device", "cpu", "--num-workers", "0"]  # fmt: skip
    code, stdout, err = cli(predict.main, argv)
    assert code == 0, err
    assert "Traceback" not in stdout + err
    assert f"saved 6 of 9 to {out}" in stdout  # 4 jpegs, the strip and the gif
    summary = stdout[stdout.index("skipped 3:") :]
    assert "bomb.png' is too large to open" in summary
    assert "damaged.jpg' cannot be read" in summary
    assert "gone.jpg' does not exist; restore it (a broken link?)" in summary
    assert "split file" not in summary
    assert Image.open(out / "strip.png").size == (4000, 2)


def test_get_miou_scores_the_images_it_can_read_and_names_the_others(trained, tmp_path, cli):
    root = Path(shutil.copytree(trained[0], tmp_path / "VOCdevkit"))
    val = (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    (root / f"VOC2007/JPEGImages/{val[0]}.jpg").write_bytes(b"not a jpeg")
    weights = str(trained[1] / "last_epoch_weights.pth")
    argv = ["--dataset-path", str(root), "--model-path", weights, "--device", "cpu",
            "--num-workers", "0", "--miou-out-path", str(tmp_path / "miou")]  # fmt: skip
    code, stdout, err = cli(get_miou.main, argv)
    assert code == 0, err
    assert f"skipped 1 of {len(val)} images:" in stdout
    assert f"{val[0]}.jpg' cannot be read" in stdout
    assert f"Get miou done: over {len(val) - 1} images." in stdout


def test_16_bit_and_float_images_are_scaled_to_8_bits_never_clipped(tmp_path):
    ramp = np.linspace(0, 65535, 256 * 4).reshape(4, 256).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "sixteen.png")
    image = read_image(tmp_path / "sixteen.png")
    assert image.mode == "RGB"
    grey = np.asarray(image)[..., 0]
    assert grey.min() == 0 and grey.max() == 255 and (grey == 255).mean() < 0.01
    assert np.array_equal(grey, np.rint(ramp / 257).astype(np.uint8))
    unit = Image.fromarray(np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8), mode="F")
    assert np.asarray(to_8_bits(unit)).max() == 255
    wide = Image.fromarray(np.linspace(-5, 900, 64, dtype=np.float32).reshape(8, 8), mode="F")
    stretched = np.asarray(to_8_bits(wide))
    assert stretched.min() == 0 and stretched.max() == 255
    eight = Image.new("L", (4, 4), 7)
    assert to_8_bits(eight) is eight


class FakePredictor:
    """A predictor that labels every pixel 0: the page's cache is what is under test."""

    def __init__(self, **_):
        pass

    def labels(self, image):
        return np.zeros((image.height, image.width), np.uint8)


def test_the_page_keeps_the_files_of_its_last_predictions_only(tmp_path):
    segmenter = Segmenter(tmp_path / "page", 10**7, FakePredictor)
    (tmp_path / "page").mkdir()
    for i in range(KEEP + 5):
        image = tmp_path / f"{i}.png"
        Image.new("RGB", (8, 8), (i, i, i)).save(image)
        segmenter.predict("model.pth", Options(device="cpu"), str(image))
    assert len(list((tmp_path / "page").iterdir())) == KEEP


def test_a_given_model_found_again_under_logs_is_listed_once(tmp_path):
    weights = tmp_path / "logs/demo/last_epoch_weights.pth"
    weights.parent.mkdir(parents=True)
    weights.touch()
    models = find_models(tmp_path / "logs", [str(weights)])
    assert list(models.values()) == [str(weights)]
