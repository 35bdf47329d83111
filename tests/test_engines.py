"""The table of engines: a new engine is one class and one row; each engine and precision
against torch fp32 on a trained model; OpenVINO's files, cache, threads and faults."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
from tests.conftest import write_video
from tests.numerics import assert_labels_agree
from unet import Unet
from utils.data.datasets import DatasetLayout, read_class_label, read_split
from utils.device import cpu_has_native_bf16
from utils.errors import UserError
from utils.inference.engines import ENGINES, OpenVinoEngine, TorchEngine
from utils.inference.segmenter import engine_choices
from utils.inference.speed import command_for
from utils.utils_metrics import ConfusionMatrix

ROOT = Path(__file__).resolve().parents[1]
needs_openvino = pytest.mark.skipif(
    not OpenVinoEngine.available(), reason="openvino is not installed (pip install openvino)"
)
needs_native_bf16 = pytest.mark.skipif(
    not cpu_has_native_bf16(), reason="this CPU emulates bf16 (no AVX512-BF16 or AMX)"
)


def weights(trained) -> Path:
    return trained[1] / "last_epoch_weights.pth"


def labelled(trained) -> tuple[list[Path], list[np.ndarray]]:
    """Every demo image of the ``trained`` model and its class labels."""
    root = trained[0]
    names = read_split(root, "trainval")
    layout = DatasetLayout.of(root)
    labels = [read_class_label(path, 4) for path in layout.label_files(names)]
    return layout.image_files(names), labels


def scored(unet: Unet, images: list[Path], labels: list[np.ndarray]) -> tuple[float, list]:
    """mIoU (%) of a predictor over the images, and its class maps."""
    matrix, maps = ConfusionMatrix(4), []
    for result, label in zip(unet.predict_files(images), labels, strict=True):
        matrix.update(label, result.labels)
        maps.append(result.labels)
    return matrix.miou * 100, maps


class CountingEngine(TorchEngine):
    """A test's own engine: PyTorch, counting the images it runs."""

    name = "counting"
    summary = "the tests' engine: torch, counted"
    images = 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        CountingEngine.images += len(images)
        return super().__call__(images)

    def how(self) -> str:
        return f"counting {self.precision}"


@pytest.mark.slow
def test_an_engine_registered_by_a_test_runs_every_predict_mode(
    trained, tmp_path, cli, monkeypatch, without_openvino
):
    monkeypatch.setitem(ENGINES, "counting", CountingEngine)  # one class, one row
    root, _ = trained
    image = root / "VOC2007/JPEGImages/0000.jpg"
    model = ["--model-path", str(weights(trained)), "--engine", "counting", "--device", "cpu"]
    runs = {
        "predict": [str(image)],
        "dir_predict": ["--dir-origin-path", str(root / "VOC2007/JPEGImages")],
        "video": ["--video-path", str(write_video(tmp_path / "v.avi", 3)),
                  "--video-save-path", str(tmp_path / "v_out.avi")],
        "fps": ["--test-interval", "1", "--fps-batch-size", "1"],
        "export_onnx": ["--onnx-save-path", str(tmp_path / "m.onnx")],
    }  # fmt: skip
    for mode, extra in runs.items():
        before = CountingEngine.images
        argv = ["--mode", mode, *model, "--dir-save-path", str(tmp_path / mode), *extra]
        code, out, err = cli(predict.main, argv)
        assert code == 0, (mode, err)
        assert "counting fp32" in out or mode == "export_onnx"
        assert CountingEngine.images > before or mode == "export_onnx", mode
    assert "--engine {torch,onnxruntime,counting}" in predict.get_parser().format_help()


@pytest.mark.slow
def test_every_engine_and_precision_against_torch_fp32(trained, onnx_files, tmp_path):
    """fp32 engines give the same labels outside near-ties; bf16 is within 0.5 mIoU points
    and int8 within 1 of torch fp32 (where this CPU runs them)."""
    images, labels = labelled(trained)
    reference = Unet(model_path=str(weights(trained)), device="cpu", precision="fp32")
    base, expected = scored(reference, images, labels)
    probs = [reference.probabilities(Image.open(path)) for path in images]
    int8 = quantized(onnx_files, trained, tmp_path)
    export, pth = str(onnx_files / "static.onnx"), str(weights(trained))
    runs = [(export, "onnxruntime", None, 0)] + ([(int8, "onnxruntime", None, 1.0)] if int8 else [])
    if cpu_has_native_bf16():
        runs.append((pth, "torch", "bf16", 0.5))
    if OpenVinoEngine.available():
        runs += [(export, "openvino", "fp32", 0), (pth, "openvino", "fp32", 0)]
        runs += [(int8, "openvino", None, 1.0)] if int8 else []
        runs += [(export, "openvino", "bf16", 0.5)] if cpu_has_native_bf16() else []
    for path, engine, precision, points in runs:
        unet = Unet(model_path=path, engine=engine, precision=precision, device="cpu")
        miou, maps = scored(unet, images, labels)
        if points:
            assert abs(miou - base) <= points, (unet.how(), miou, base)
        else:
            for ours, theirs, p in zip(maps, expected, probs, strict=True):
                assert_labels_agree(ours, theirs, p)


def quantized(onnx_files, trained, tmp_path) -> str | None:
    """The ``trained`` model's int8 export, calibrated on its images."""
    from utils.inference.quantize import quantize_int8

    try:
        out = tmp_path / "int8.onnx"
        quantize_int8(onnx_files / "static.onnx", out, trained[0] / "VOC2007/JPEGImages", (32, 32))
    except UserError:
        return None
    return str(out)


def test_each_engine_says_what_it_opens_and_how_it_describes_itself():
    for name, engine in ENGINES.items():
        assert engine.name == name and engine.summary and engine.opens
    assert TorchEngine.can_open("w.pth") and not TorchEngine.can_open("m.onnx")
    assert OpenVinoEngine.can_open("w.pth") and OpenVinoEngine.can_open("m.xml")
    assert (
        engine_choices(["m.onnx"])
        == ["auto", "onnxruntime", "openvino"][: 2 + OpenVinoEngine.available()]
    )


@needs_openvino
@pytest.mark.slow
def test_openvino_converts_weights_once_and_names_the_cache_by_their_bytes(trained, tmp_path,
                                                                           capsys):  # fmt: skip
    path = tmp_path / "w.pth"
    path.write_bytes(weights(trained).read_bytes())
    (tmp_path / "w.json").write_text(weights(trained).with_suffix(".json").read_text())
    Unet(model_path=str(path), engine="openvino", precision="fp32", device="cpu")
    assert "Converting" in capsys.readouterr().out
    cache = sorted(p.name for p in tmp_path.glob("w.openvino-*"))
    assert len(cache) == 2 and cache[0].endswith("-32x32.bin") and cache[1].endswith(".xml")
    Unet(model_path=str(path), engine="openvino", precision="fp32", device="cpu")
    assert "Converting" not in capsys.readouterr().out  # read from the cache
    state = torch.load(path, weights_only=True)
    state["final.bias"] += 1  # other weights: another cache, the stale one gone
    torch.save(state, path)
    (tmp_path / "w.json").unlink()  # its checksum no longer fits
    Unet(model_path=str(path), engine="openvino", precision="fp32", device="cpu", num_classes=4,
         input_shape=[32, 32])  # fmt: skip
    assert "Converting" in capsys.readouterr().out
    assert len(list(tmp_path.glob("w.openvino-*"))) == 2 and not (tmp_path / cache[1]).exists()


@needs_openvino
def test_openvino_runs_its_own_ir_and_refuses_an_ir_without_its_weights(trained, onnx_files,
                                                                         tmp_path):  # fmt: skip
    ov = OpenVinoEngine.require()
    ir = tmp_path / "m.xml"
    ov.save_model(ov.Core().read_model(str(onnx_files / "static.onnx")), str(ir))
    unet = Unet(model_path=str(ir), device="cpu", precision="fp32")  # .xml: openvino's
    assert unet.how() == "openvino fp32" and unet.class_names()[1] == "square"
    image = Image.open(trained[0] / "VOC2007/JPEGImages/0001.jpg")
    reference = Unet(model_path=str(onnx_files / "static.onnx"), device="cpu")
    assert_labels_agree(unet.labels(image), reference.labels(image),
                        reference.probabilities(image))  # fmt: skip
    with pytest.raises(UserError, match=r"exported for 32x32 inputs but --input-shape is 64 64"):
        Unet(model_path=str(ir), device="cpu", input_shape=[64, 64])
    ir.with_suffix(".bin").unlink()
    with pytest.raises(UserError, match=r"m\.xml' is an OpenVINO model without its weights"):
        Unet(model_path=str(ir), device="cpu")


@needs_openvino
def test_openvino_takes_torchs_threads_or_num_threads(trained, onnx_files, tmp_path, cli,
                                                      monkeypatch):  # fmt: skip
    model, before = str(onnx_files / "static.onnx"), torch.get_num_threads()
    unet = Unet(model_path=model, engine="openvino", device="cpu")
    assert unet.engine.compiled.get_property("INFERENCE_NUM_THREADS") == before
    seen, real = [], OpenVinoEngine.load

    def spy(self, settings):
        real(self, settings)
        seen.append(self.compiled.get_property("INFERENCE_NUM_THREADS"))

    monkeypatch.setattr(OpenVinoEngine, "load", spy)
    root = trained[0]
    runs = [(predict, [str(root / "VOC2007/JPEGImages/0000.jpg"), "--dir-save-path",
                       str(tmp_path / "img_out")]),
            (get_miou, ["--dataset-path", str(root), "--miou-mode", "1", "--miou-out-path",
                        str(tmp_path / "miou_out")])]  # fmt: skip
    try:
        for script, argv in runs:
            flags = ["--model-path", model, "--engine", "openvino", "--num-threads", "1"]
            code, _, err = cli(script.main, [*argv, *flags, "--device", "cpu"])
            assert code == 0, err
            assert torch.get_num_threads() == 1  # torch takes as many
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 1]


def test_a_missing_engine_package_is_named_with_its_install_command(onnx_files, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino fails
    with pytest.raises(UserError, match=r"--engine openvino needs openvino: pip install openvino"):
        Unet(model_path=str(onnx_files / "static.onnx"), engine="openvino", device="cpu")


@pytest.mark.slow
@needs_openvino
def test_openvino_sends_no_telemetry_and_survives_signals_after_amx_kernels(onnx_files,
                                                                            tmp_path):  # fmt: skip
    """openvino's import writes ~/intel and forks a process to send a usage event unless its
    telemetry is blocked; and a SIGCHLD reaching a main thread that ran its AMX kernels killed
    a process whose faulthandler (pytest's) gave it a small alternate stack."""
    code = textwrap.dedent(f"""
        import faulthandler, signal, subprocess, sys
        faulthandler.enable()
        signal.signal(signal.SIGCHLD, lambda *_: None)
        from PIL import Image
        from unet import Unet
        unet = Unet(model_path={str(onnx_files / "static.onnx")!r}, engine="openvino",
                    device="cpu")
        unet.labels(Image.new("RGB", (48, 40), (90, 120, 30)))
        for _ in range(3):
            subprocess.run([sys.executable, "-c", "pass"], check=True)
        print("ok")
    """)
    env = {**os.environ, "HOME": str(tmp_path), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-2000:]
    assert not (tmp_path / "intel").exists()


@pytest.mark.slow
def test_fps_mode_ends_with_the_fastest_and_the_command_that_runs_it(trained, tmp_path, cli):
    argv = ["--mode", "fps", "--model-path", str(weights(trained)), "--device", "cpu",
            "--test-interval", "1", "--fps-batch-size", "1"]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    rows = out.split("vs torch fp32")[1].split("fastest here:")[0]
    assert "torch fp32" in rows and "onnxruntime fp32" in rows
    assert ("openvino fp32" in rows) == OpenVinoEngine.available()
    last = out.split("fastest here: ")[1].splitlines()[0]
    engine = last.split()[0]  # whichever won on this machine: an export may come first
    assert last.count("(python predict.py ") == 1 and "--model-path" in last
    assert f" --engine {engine} --model-path " in last


def test_the_fastest_engines_command_runs_a_file_it_opens_or_exports_one_first(tmp_path):
    made = tmp_path / "fps"  # where the fps table exports
    weights = "logs/best epoch.pth"
    row = lambda engine, path, precision: SimpleNamespace(  # noqa: E731
        engine=ENGINES[engine], model_path=made / path, precision=precision
    )
    assert command_for(row("torch", "x.pth", "bf16"), weights, made) == (
        "python predict.py --engine torch --model-path 'logs/best epoch.pth' --precision bf16"
    )
    onnx = command_for(row("onnxruntime", "models.onnx", "fp32"), weights, made)
    assert onnx == (
        "python predict.py --mode export_onnx --model-path 'logs/best epoch.pth', then "
        "--engine onnxruntime --model-path model_data/models.onnx"
    )
    own = SimpleNamespace(engine=ENGINES["onnxruntime"], model_path="m.onnx", precision="int8")
    assert (
        command_for(own, "m.onnx", made)
        == "python predict.py --engine onnxruntime --model-path m.onnx"
    )
