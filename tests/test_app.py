"""The web page, app.py: its drawing and model list, what it does with bad input, and the page
itself, started on a free port and driven in Debian's Chromium (Playwright) and through its
``/segment`` API (gradio_client). What the page does besides its widgets
(utils/inference/segmenter.py) is tested without Gradio, so a machine without the page's packages
still tests it."""

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import unet
from tests.conftest import TRAINED_NAMES
from utils.drawing import BLEND, draw_labels
from utils.errors import UserError
from utils.images import read_image
from utils.inference.segmenter import Chosen, Options, Segmenter, check_size, find_models

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
#: Headless, also as root (no sandbox), and without Chromium's own traffic (updates, sync...),
#: which a machine with no internet refuses, many connections at a time.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-background-networking",
    "--disable-component-update",
]


def weights(trained) -> Path:
    return trained[1] / "last_epoch_weights.pth"


def image_file(trained, index: int = 0) -> Path:
    return trained[0] / "VOC2007" / "JPEGImages" / f"{index:04d}.jpg"


def predict_py_mask(trained, image: Path) -> np.ndarray:
    """What predict.py's predictor gives (get_miou_png, the PNG get_miou.py saves)."""
    predictor = unet.Unet(model_path=str(weights(trained)), device="cpu")
    return np.asarray(predictor.get_miou_png(read_image(image)))


@pytest.mark.parametrize("mix_type", [0, 1, 2])
def test_the_drawing_at_the_default_blend_is_predict_pys(trained, mix_type):
    predictor = unet.Unet(model_path=str(weights(trained)), device="cpu", mix_type=mix_type)
    image = read_image(image_file(trained))
    labels = predictor.labels(image)
    drawing = draw_labels(image, labels, predictor.colors, mix_type, BLEND)
    assert np.array_equal(np.asarray(drawing), np.asarray(predictor.draw(image, labels)))
    if mix_type == 0:  # the slider's blend is the colours' share
        lighter = np.asarray(draw_labels(image, labels, predictor.colors, 0, 0.2))
        assert not np.array_equal(lighter, np.asarray(drawing))


def test_the_list_holds_the_given_models_then_each_runs_best_and_last(tmp_path):
    for name in ("a/best_epoch_weights.pth", "a/last_epoch_weights.pth", "a/ep001.pth"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).touch()
    models = find_models(tmp_path, ["given.pth"])
    assert list(models)[0] == "given.pth"
    assert sorted(list(models)[1:]) == ["a/best_epoch_weights.pth", "a/last_epoch_weights.pth"]


def test_a_model_that_does_not_fit_its_settings_leaves_the_previous_one(trained, tmp_path):
    misfit = tmp_path / "misfit.pth"
    shutil.copy(weights(trained), misfit)
    settings = (weights(trained).with_suffix(".json")).read_text()
    misfit.with_suffix(".json").write_text(settings.replace('"num_classes": 4', '"num_classes": 3'))
    said = []
    segmenter = Segmenter(tmp_path, 10**6, unet.Unet, warn=said.append)
    before = Chosen(str(weights(trained)), None, Options(device="cpu"))
    after = segmenter.choose(Chosen(str(misfit), None, Options(device="cpu")), before)
    assert after == before and len(said) == 1
    assert "misfit.pth did not load, so the previous choice stays" in said[0]
    assert "trained with 4 classes" in said[0]


def test_an_image_over_the_limit_is_refused_before_decoding(trained):
    width, height = Image.open(image_file(trained)).size
    message = rf"0000.jpg is {width}x{height}, over this page's limit of 0.001 megapixels"
    with pytest.raises(UserError, match=message):
        check_size(str(image_file(trained)), max_pixels=1000)


def test_the_page_runs_an_onnx_export_as_the_predictor_does(trained, onnx_files, tmp_path):
    segmenter = Segmenter(tmp_path, 10**7, unet.Unet)
    image = str(image_file(trained))
    onnx = segmenter.predict(str(onnx_files / "static.onnx"), Options(device="cpu"), image)
    assert onnx.predictor.how() == "onnxruntime fp32"
    assert np.array_equal(np.asarray(Image.open(onnx.folder / "0000.png")), onnx.labels)


def test_without_the_pages_packages_app_py_says_how_to_get_them(tmp_path):
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    (blocked / "gradio.py").write_text("raise ImportError('blocked for this test')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(blocked), str(ROOT)])}
    result = subprocess.run([sys.executable, str(ROOT / "app.py"), "--logs", str(tmp_path)],
                            env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "app.py needs the packages of requirements-app.txt: run make app" in result.stderr


@pytest.fixture(scope="module")
def served(trained, tmp_path_factory):
    pytest.importorskip("gradio", reason="the page's packages are missing: make app installs them.")
    """app.py serving the trained model on a free port of 127.0.0.1; every file it writes goes
    to a temporary folder (its working directory, TMPDIR and Gradio's cache)."""
    folder = tmp_path_factory.mktemp("app")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "TMPDIR": str(folder), "GRADIO_TEMP_DIR": str(folder / "gradio")}
    script = str(ROOT / "app.py")
    argv = [sys.executable, script, "--model-path", str(weights(trained)), "--logs", str(folder)]
    argv += ["--port", str(port), "--device", "cpu"]
    log = folder / "app.log"
    with log.open("w") as out:
        process = subprocess.Popen(argv, cwd=folder, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for(url, process, log)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)


def wait_for(url: str, process: subprocess.Popen, log: Path, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, f"app.py stopped:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    pytest.fail(f"app.py did not answer at {url} in {seconds} s:\n{log.read_text()}")


@pytest.mark.slow
def test_the_page_segments_an_upload_in_chromium(served, trained, tmp_path):
    if not CHROMIUM.is_file():
        pytest.skip("Debian's Chromium is missing: apt-get install chromium chromium-driver.")
    reason = "Playwright is not installed: make app installs it."
    sync_playwright = pytest.importorskip("playwright.sync_api", reason=reason).sync_playwright
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    hosts = set()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, downloads_path=tmp_path
        )
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("request", lambda request: hosts.add(request.url.split("/")[2]))
        page.goto(served)
        upload = page.locator("#images input[type=file]")
        upload.set_input_files(image_file(trained))
        legend = page.locator("#classes-a .legend-item")
        legend.first.wait_for(timeout=30_000)
        assert legend.all_inner_texts() == [f"{i} {n}" for i, n in enumerate(TRAINED_NAMES)]
        with page.expect_download() as download:
            page.locator("#mask-a").click()
        download.value.save_as(tmp_path / "mask.png")

        upload.set_input_files(notes)
        page.locator(".toast-body", has_text="notes.txt cannot be read").wait_for()
        upload.set_input_files(image_file(trained, 1))
        page.locator("#note-a", has_text="0001.jpg").wait_for(timeout=30_000)
        page.screenshot(path=tmp_path / "app.png", full_page=True)
        browser.close()
    mask = np.asarray(Image.open(tmp_path / "mask.png"))
    assert np.array_equal(mask, predict_py_mask(trained, image_file(trained)))
    assert hosts == {served.split("/")[2]}, "the page asked another host for something"


@pytest.mark.slow
def test_the_segment_api_gives_predict_pys_mask(served, trained, tmp_path):
    client_module = pytest.importorskip("gradio_client")
    client = client_module.Client(served, download_files=str(tmp_path), verbose=False)
    image = image_file(trained, 2)
    overlay, mask, table = client.predict(
        image=client_module.handle_file(image), api_name="/segment"
    )
    assert np.array_equal(np.asarray(Image.open(mask)), predict_py_mask(trained, image))
    assert Image.open(overlay).size == Image.open(image).size
    assert [row[1] for row in table["data"]] == TRAINED_NAMES
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(image.read_bytes()[:300])
    with pytest.raises(client_module.exceptions.AppError, match="truncated.jpg cannot be read"):
        client.predict(image=client_module.handle_file(truncated), api_name="/segment")
    client.close()
