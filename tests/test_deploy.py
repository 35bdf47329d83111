"""deploy/onnx_predict.py: the torch-free ONNX script, checked against the torch pipeline."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("onnxruntime")

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "deploy" / "onnx_predict.py"
#: Labels are compared where the top two classes' probabilities differ by at least this much:
#: two float implementations of softmax and of the bilinear resize (torch's kernels, numpy's
#: expressions) round differently, by about 1e-7, which can tip the argmax of a near-tie.
NEAR_TIE = 1e-4


@pytest.fixture(scope="module")
def script():
    """deploy/onnx_predict.py as a module, to call its ``main`` in-process."""
    spec = importlib.util.spec_from_file_location("onnx_predict", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["onnx_predict"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    yield module
    del sys.modules["onnx_predict"]


@pytest.fixture(scope="module")
def images(trained, tmp_path_factory) -> Path:
    """Demo images of mixed sizes and modes: RGB JPEG, grayscale, palette and RGBA PNGs."""
    sources = sorted((trained[0] / "VOC2007/JPEGImages").glob("*.jpg"))
    rgb = [Image.open(path).convert("RGB") for path in sources[:4]]
    folder = tmp_path_factory.mktemp("deploy_images")
    rgb[0].resize((61, 45)).save(folder / "street.jpg", quality=95)
    rgb[1].resize((37, 50)).convert("L").save(folder / "gray.png")
    rgb[2].convert("P", palette=Image.ADAPTIVE, colors=64).save(folder / "palette.png")
    rgb[3].resize((52, 29)).convert("RGBA").save(folder / "alpha.png")
    return folder


def copy_model(source: Path, target: Path, redraw_head=False, keep_metadata=True, **metadata):
    """A copy of an ONNX model with ``metadata`` set (alone, without ``keep_metadata``); with
    ``redraw_head``, its last 1x1 conv redrawn at random (seeded)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    head = next(node for node in model.graph.node if model.graph.output[0].name in node.output)
    for weights in model.graph.initializer:
        if redraw_head and weights.name == head.input[1]:  # the 1x1 conv's (classes, 64, 1, 1)
            shape = numpy_helper.to_array(weights).shape
            drawn = np.random.default_rng(0).normal(0, 0.5, shape).astype(np.float32)
            weights.CopyFrom(numpy_helper.from_array(drawn, weights.name))
    kept = {p.key: p.value for p in model.metadata_props} if keep_metadata else {}
    kept.update({key: json.dumps(value) for key, value in metadata.items()})
    del model.metadata_props[:]
    for key, value in kept.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(target))
    return target


@pytest.fixture(scope="module")
def busy(onnx_files, tmp_path_factory) -> dict[str, Path]:
    """The exports with a random head: the briefly trained model says background everywhere,
    nearly sure; these draw several classes, with edges and near-ties to get right."""
    folder = tmp_path_factory.mktemp("busy")
    return {
        name: copy_model(onnx_files / f"{name}.onnx", folder / f"{name}.onnx", redraw_head=True)
        for name in ("static", "dynamic")
    }


@pytest.fixture(scope="module")
def busy_predictor(busy):
    """The torch pipeline's predictor on the busy static export."""
    from unet import Unet_ONNX

    return Unet_ONNX(onnx_path=str(busy["static"]), device="cpu")


def stub_modules(folder: Path, *names: str) -> Path:
    """A folder that, first on PYTHONPATH, makes ``import name`` fail for each name."""
    for name in names:
        (folder / name).mkdir(parents=True)
        (folder / name / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{name}'\", name='{name}')\n"
        )
    return folder


def run_script(argv: list, pythonpath: Path | None = None) -> subprocess.CompletedProcess:
    """``python deploy/onnx_predict.py argv`` from the repo root, ``pythonpath`` first."""
    env = {**os.environ, **({"PYTHONPATH": str(pythonpath)} if pythonpath else {})}
    command = [sys.executable, str(SCRIPT), *map(str, argv)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def predict(cli, script, *argv) -> tuple[int, str, str]:
    """The script's ``main`` in-process: (exit code, stdout, stderr)."""
    return cli(script.main, [str(arg) for arg in argv])


def read_mask(path: Path) -> np.ndarray:
    return np.array(Image.open(path))


def assert_same_labels_outside_near_ties(ours: np.ndarray, probs: np.ndarray) -> None:
    top_two = np.sort(probs, axis=-1)[..., -2:]
    near_tie = top_two[..., 1] - top_two[..., 0] < NEAR_TIE
    assert ours.shape == probs.shape[:2]
    assert np.array_equal(ours[~near_tie], probs.argmax(-1)[~near_tie])
    assert near_tie.mean() < 0.01


def test_writes_masks_and_overlays_without_torch_or_cv2(onnx_files, images, tmp_path):
    blocked = stub_modules(tmp_path / "stubs", "torch", "cv2")
    for name in ("torch", "cv2"):
        env = {**os.environ, "PYTHONPATH": str(blocked)}
        probe = subprocess.run(
            [sys.executable, "-c", f"import {name}"], capture_output=True, text=True, env=env
        )
        assert probe.returncode == 1 and f"No module named '{name}'" in probe.stderr
    argv = [images, "--model", onnx_files / "static.onnx", "--out", tmp_path / "out"]
    done = run_script(argv, blocked)
    assert done.returncode == 0, done.stderr
    names = ["alpha.png", "gray.png", "palette.png", "street.png"]
    assert sorted(p.name for p in (tmp_path / "out/masks").iterdir()) == names
    for source, name in zip(sorted(images.iterdir()), names, strict=True):
        size = Image.open(source).size
        mask = Image.open(tmp_path / "out/masks" / name)
        overlay = Image.open(tmp_path / "out/overlays" / name)
        assert (mask.mode, mask.size, overlay.mode, overlay.size) == ("L", size, "RGB", size)
    assert "[4/4]" in done.stdout and "wrote 4 masks" in done.stdout


@pytest.mark.parametrize("case", ["static", "dynamic", "tiled", "tta"])
def test_masks_equal_the_torch_pipeline_outside_near_ties(
    case, busy, busy_predictor, images, script, cli, tmp_path
):
    from unet import Unet_ONNX

    model, options, flags = busy["dynamic" if case == "dynamic" else "static"], {}, []
    if case == "tiled":  # 32-pixel windows, 24 apart: 2 to 6 windows an image
        model = copy_model(model, tmp_path / "tiled.onnx", tile=32, stride=24)
        options = {"tile": 32, "stride": 24}
    if case == "tta":
        options, flags = {"tta": True}, ["--tta"]
    code, _, err = predict(cli, script, images, "--model", model, "--out", tmp_path, *flags)
    assert code == 0, err
    torch_side = busy_predictor
    if case != "static":
        torch_side = Unet_ONNX(onnx_path=str(model), device="cpu", **options)
    classes, changed = set(), 0
    for source in sorted(images.iterdir()):
        image = Image.open(source)
        ours = read_mask(tmp_path / "masks" / f"{source.stem}.png")
        assert_same_labels_outside_near_ties(ours, torch_side.probabilities(image))
        classes.update(np.unique(ours).tolist())
        if case in ("tiled", "tta"):
            changed += np.count_nonzero(ours != busy_predictor.labels(image))
    assert len(classes) > 1
    if case in ("tiled", "tta"):
        assert changed > 0  # they were applied


def test_resize_is_torch_bilinear_without_antialias(script):
    import torch
    import torch.nn.functional as F

    probs = np.random.default_rng(0).random((3, 13, 9), dtype=np.float32)
    for size in [(40, 31), (5, 4), (13, 9), (1, 20)]:
        theirs = F.interpolate(
            torch.from_numpy(probs)[None], size, mode="bilinear", align_corners=False
        )[0].numpy()
        np.testing.assert_allclose(script.resize_bilinear(probs, *size), theirs, atol=1e-6)


def test_overlays_equal_detect_image_where_labels_agree(
    busy, busy_predictor, images, script, cli, tmp_path
):
    assert predict(cli, script, images, "--model", busy["static"], "--out", tmp_path)[0] == 0
    unet = busy_predictor
    assert unet.mix_type == 0
    for source in sorted(images.iterdir()):
        image = Image.open(source)
        labels = read_mask(tmp_path / "masks" / f"{source.stem}.png")
        agree = labels == unet.labels(image)
        ours = np.array(Image.open(tmp_path / "overlays" / f"{source.stem}.png"))
        assert np.array_equal(ours[agree], np.array(unet.detect_image(image))[agree])
        assert agree.mean() > 0.99 and len(np.unique(labels)) > 1


def test_palette_is_the_predictors(script):
    from utils.data.classes import class_colors

    for num_classes in (2, 4, 21, 22, 40):
        assert script.class_colors(num_classes) == class_colors(num_classes)


def test_colliding_stems_get_their_full_names(onnx_files, images, script, cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(images / "street.jpg").save(folder / "a.jpg")
    Image.open(images / "gray.png").save(folder / "a.png")
    model = onnx_files / "static.onnx"
    code, out, err = predict(cli, script, folder, "--model", model, "--out", tmp_path / "out")
    assert code == 0, err
    for kind in ("masks", "overlays"):
        written = {p.name: Image.open(p).size for p in (tmp_path / "out" / kind).iterdir()}
        assert written == {"a.jpg.png": (61, 45), "a.png.png": (37, 50)}
    assert "wrote 2 masks" in out and "2 overlays" in out


def test_unreadable_image_is_skipped_with_a_warning(onnx_files, images, script, cli, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(images / "street.jpg").save(folder / "good.jpg")
    data = (images / "palette.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])
    model = ["--model", onnx_files / "static.onnx", "--out", tmp_path / "out"]
    code, out, err = predict(cli, script, folder, *model)
    assert code == 0 and err.startswith("warning: skipped") and "cut.png" in err
    assert "wrote 1 masks" in out and "(1 skipped)" in out
    assert [p.name for p in (tmp_path / "out/masks").iterdir()] == ["good.png"]
    code, _, err = predict(cli, script, folder / "cut.png", *model)
    assert code == 2 and err.splitlines()[-1].startswith("error: none of the 1 image(s)")


def error_case(case: str, onnx_files: Path, images: Path, tmp_path: Path) -> tuple[list, str]:
    """The arguments of one mistake, and the text its sentence must hold."""
    model = onnx_files / "static.onnx"
    if case == "missing model":
        return [images, "--model", tmp_path / "nope.onnx"], f"'{tmp_path / 'nope.onnx'}' does not"
    if case == "not onnx":
        (tmp_path / "text.onnx").write_text("hello")
        return [images, "--model", tmp_path / "text.onnx"], "text.onnx' is not an ONNX model"
    if case == "missing input":
        return [tmp_path / "nowhere", "--model", model], f"input '{tmp_path / 'nowhere'}' does"
    if case == "empty folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty/notes.txt").write_text("no images here")
        return [tmp_path / "empty", "--model", model], "empty' holds no images"
    if case == "wrong classes":
        return [images, "--model", model, "--num-classes", 3], "but --num-classes is 3"
    if case == "wrong size":
        return [images, "--model", model, "--input-shape", 64, 64], "takes 32x32 inputs"
    bare = copy_model(onnx_files / "dynamic.onnx", tmp_path / "bare.onnx", keep_metadata=False)
    expected = "has no settings from our export and a dynamic input; give --input-shape H W"
    return [images, "--model", bare], expected


@pytest.mark.parametrize(
    "case",
    ["missing model", "not onnx", "missing input", "empty folder", "wrong classes", "wrong size",
     "no settings"],
)  # fmt: skip
def test_each_mistake_is_one_sentence_and_exit_code_2(
    case, onnx_files, images, script, cli, tmp_path
):
    argv, expected = error_case(case, onnx_files, images, tmp_path)
    code, _, err = predict(cli, script, *argv, "--out", tmp_path / "out")
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and expected in err and "Traceback" not in err


def test_a_size_the_model_cannot_take_is_one_sentence(onnx_files, images, tmp_path):
    argv = [images / "street.jpg", "--model", onnx_files / "dynamic.onnx", "--input-shape", 30, 30]
    done = run_script([*argv, "--out", tmp_path / "out"])  # onnxruntime logs to fd 2 itself
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("error: the model fails on a 30x30 input (")


def test_a_model_without_settings_runs_with_input_shape(busy, images, script, cli, tmp_path):
    bare = copy_model(busy["dynamic"], tmp_path / "bare.onnx", keep_metadata=False)
    runs = {"bare": [bare, "--input-shape", 32, 32], "ours": [busy["dynamic"]]}
    for out, model in runs.items():
        argv = [images / "street.jpg", "--out", tmp_path / out, "--model", *model]
        code, _, err = predict(cli, script, *argv)
        assert code == 0, err
    bare_mask = read_mask(tmp_path / "bare/masks/street.png")
    assert np.array_equal(bare_mask, read_mask(tmp_path / "ours/masks/street.png"))
    assert len(np.unique(bare_mask)) > 1


def test_missing_onnxruntime_gives_the_pip_command(images, tmp_path):
    blocked = stub_modules(tmp_path / "stubs", "onnxruntime")
    done = run_script([images, "--model", "m.onnx", "--out", tmp_path / "out"], blocked)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
    assert "No module named 'onnxruntime'" in done.stderr
    assert "pip install -r deploy/requirements.txt" in done.stderr
    assert "pip install onnxruntime numpy pillow" in done.stderr
