"""Shared fixtures: small synthetic data sets written to temporary folders, and the ``cuda``
marker's skip on machines without a GPU."""

import multiprocessing
import os
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from utils.data.demo_data import make_demo_dataset
from utils.device import CUBLAS_WORKSPACE_CONFIG, cpu_has_native_bf16

# train.py --deterministic sets it before CUDA starts; in one pytest process, set it first.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE_CONFIG)
# Under pytest-xdist (make test runs 2 processes) the processes share the cores instead of each
# starting a thread per core: the tests' tiny models gain nothing from more threads.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // _WORKERS))
    # An xdist process runs a thread of its own (execnet's), and a DataLoader worker forked
    # beside it can inherit a lock that thread held, and wait on it forever: the workers start
    # from a clean server process instead (what a script, with one thread, never needs).
    multiprocessing.set_start_method("forkserver", force=True)
    multiprocessing.set_forkserver_preload(
        ["torch", "numpy", "cv2", "PIL.Image", "utils.inference.pipeline"]
    )

#: ``../shared/data``, or where ``UNET_SHARED_DATA`` says (a copy on a GPU machine).
SHARED_DATA = Path(
    os.environ.get("UNET_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)


#: Free space the whole suite needs in its temporary folder, in GB: it peaked at 5.1 GB (VGG
#: weights of 95 MB and checkpoints of 285 MB in its shared fixtures and tests), a margin added.
NEEDED_GB = 6


def free_space_problem(folder: Path, free_bytes: int | None = None) -> str | None:
    """The sentence that stops the run before its first test where ``folder`` (the temporary
    folder's disk) has too little space, else None: on a full disk a third of the tests once
    failed at once, each in its own way (a truncated checkpoint, an unreadable ONNX file...)."""
    if free_bytes is None:
        existing = next(p for p in (folder, *folder.parents) if p.exists())
        free_bytes = shutil.disk_usage(existing).free
    if free_bytes >= NEEDED_GB * 2**30:
        return None
    return (
        f"the tests need about {NEEDED_GB} GB free in {folder}, which has "
        f"{free_bytes / 2**30:.1f} GB: free some space (earlier runs' folders are in "
        f"{Path(tempfile.gettempdir())}/pytest-of-*) or give --basetemp a folder on a larger disk."
    )


def pytest_configure(config):
    if hasattr(config, "workerinput"):  # an xdist worker: the controller has checked
        return
    folder = Path(config.option.basetemp or tempfile.gettempdir())
    problem = free_space_problem(folder)
    if problem is not None:
        pytest.exit(problem, returncode=2)


@pytest.hookimpl(tryfirst=True)  # before -m "not slow" deselects
def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a GPU: skip them cleanly without one (``make test-gpu`` stops
    with a sentence instead). Tests marked ``bf16`` count as slow where the CPU emulates bf16
    (AVX2, AVX-512 without AVX512-BF16): there they take 20 times as long, so ``make test``
    leaves them to ``make test-all``."""
    emulated_bf16 = not cpu_has_native_bf16()
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run them with make test-gpu on one)")
    for item in items:
        # the markers, not a test or parameter named cuda or bf16
        if item.get_closest_marker("cuda") and not torch.cuda.is_available():
            item.add_marker(skip)
        if item.get_closest_marker("bf16") and emulated_bf16:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _outputs_stay_in_tmp_path(tmp_path, monkeypatch):
    """Every test runs in its own temporary folder, so whatever a script writes to its default
    place (img_out/, miou_out/, logs/) lands there and never in the working tree."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def _no_sigchld_handler_outlives_its_test():
    """A multi-worker DataLoader installs a SIGCHLD handler and keeps it for the process's life.
    In a test process that handler runs on the small alternate stack pytest's faulthandler gives
    the main thread, and on a CPU with AMX, once the main thread has run AMX kernels, the
    kernel's signal frame (8 KB of tile data more) no longer fits there: the next child to exit
    (any later test's subprocess) killed the process with SIGSEGV. A script enables no
    faulthandler and is not affected."""
    before = signal.getsignal(signal.SIGCHLD)
    yield
    if signal.getsignal(signal.SIGCHLD) is not before:
        signal.signal(signal.SIGCHLD, before)


def shared_data(*parts: str) -> Path:
    """A path under ``../shared/data``; the test is skipped when that data is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture
def voc_root(tmp_path) -> Path:
    """A 10-image demo VOC data set (4 classes, 255 borders) with its split files."""
    return make_demo_dataset(tmp_path / "VOCdevkit", num_images=10, size=(80, 60))


def write_voc_pair(root: Path, name: str, image: np.ndarray, label: np.ndarray) -> None:
    """Write one JPEG image and PNG label into a VOC layout under ``root``."""
    voc = root / "VOC2007"
    (voc / "JPEGImages").mkdir(parents=True, exist_ok=True)
    (voc / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(voc / "JPEGImages" / f"{name}.jpg", quality=95)
    Image.fromarray(label).save(voc / "SegmentationClass" / f"{name}.png")


def write_video(path: Path, frames: int, fps: float = 5, size: tuple[int, int] = (48, 32)) -> Path:
    """A short MJPG video of ``frames`` flat grey frames of ``size`` (width, height)."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        writer.write(np.full((size[1], size[0], 3), 30 * i % 256, np.uint8))
    writer.release()
    return path


def save_random_weights(path: Path, num_classes: int, backbone: str = "vgg") -> Path:
    """Write the state dict of a seeded, kaiming-initialised UNet (busy, non-trivial maps)."""
    from nets.unet import Unet
    from nets.unet_training import weights_init

    torch.manual_seed(0)
    model = Unet(num_classes=num_classes, backbone=backbone)
    weights_init(model, "kaiming")
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture
def cli(capsys):
    """Run a CLI's ``main(argv)`` in-process: ``cli(main, argv) -> (exit code, stdout, stderr)``."""

    def run(main, argv: list[str]) -> tuple[int, str, str]:
        try:
            main(argv)
            code = 0
        except SystemExit as exit_:
            code = exit_.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


@pytest.fixture
def binary_root(tmp_path) -> Path:
    """Three 8x8 VOC pairs whose labels hold only 0 and 255 (a two-class task saved as 0/255)."""
    root = tmp_path / "VOCdevkit"
    label = np.zeros((8, 8), np.uint8)
    label[2:6, 2:6] = 255
    for name in ("a", "b", "c"):
        write_voc_pair(root, name, np.zeros((8, 8, 3), np.uint8), label)
    return root


@pytest.fixture
def answer_prompts(monkeypatch):
    """``answer_prompts([...])``: ``input()`` returns these, then raises EOFError (Ctrl-D)."""

    def answer(replies: list[str]) -> None:
        replies = iter(replies)

        def fake_input(prompt: str = "") -> str:
            try:
                return next(replies)
            except StopIteration:
                raise EOFError from None

        monkeypatch.setattr("builtins.input", fake_input)

    return answer


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """12 demo images (4 classes): 8 train, 4 val; shared by the training tests, read-only."""
    root = make_demo_dataset(tmp_path_factory.mktemp("data") / "VOCdevkit", 12, size=(48, 40))
    splits = root / "VOC2007/ImageSets/Segmentation"
    ids = [f"{i:04d}" for i in range(12)]
    (splits / "train.txt").write_text("\n".join(ids[:8]) + "\n")
    (splits / "val.txt").write_text("\n".join(ids[8:]) + "\n")
    return root


def base_argv(data_root, save_dir, *extra) -> list[str]:
    return [
        "--dataset-path", str(data_root), "--num-classes", "4", "--model-path", "",
        "--input-shape", "32", "32", "--num-workers", "0", "--save-dir", str(save_dir),
        "--freeze-batch-size", "2", "--unfreeze-batch-size", "2", "--dice-loss",
        "--device", "cpu", *extra,
    ]  # fmt: skip


#: The class names the ``trained`` model was given at training time.
TRAINED_NAMES = ["bg", "square", "circle", "triangle"]


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``(data root, logs)``: two epochs of a 4-class VGG UNet at 32x32 on 12 demo images, with
    named classes and an mIoU each epoch; shared by the tests, read-only."""
    import train

    base = tmp_path_factory.mktemp("trained")
    root = make_demo_dataset(base / "VOCdevkit", 12, size=(48, 40))
    train.main([
        "--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
        "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "2",
        "--unfreeze-batch-size", "2", "--num-workers", "0", "--device", "cpu",
        "--eval-period", "1", "--name-classes", *TRAINED_NAMES, "--save-dir", str(base / "logs"),
    ])  # fmt: skip
    return root, base / "logs"


@pytest.fixture(scope="session")
def onnx_files(trained, tmp_path_factory):
    """The ``trained`` model exported once: ``static.onnx``, ``dynamic.onnx`` and the text the
    static export printed (``export.txt``)."""
    pytest.importorskip("onnxruntime")
    import contextlib
    import io

    import predict

    weights = trained[1] / "last_epoch_weights.pth"
    folder = tmp_path_factory.mktemp("onnx")
    for name, extra in (("static", []), ("dynamic", ["--dynamic"])):
        printed = io.StringIO()
        argv = ["--mode", "export_onnx", "--model-path", str(weights), "--device", "cpu",
                "--onnx-save-path", str(folder / f"{name}.onnx"), *extra]  # fmt: skip
        with contextlib.redirect_stdout(printed):
            predict.main(argv)
        if name == "static":
            (folder / "export.txt").write_text(printed.getvalue())
    return folder


@pytest.fixture
def without_openvino(monkeypatch):
    """The engine table without OpenVINO, for fps tables that test something else: each of its
    rows costs a compile (tests/test_engines.py times it)."""
    from utils.inference.engines import ENGINES

    monkeypatch.delitem(ENGINES, "openvino", raising=False)
