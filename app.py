"""A local web page that segments images with a trained model (docs/app.md).

    python app.py                # the weights under logs/: each run's best and last
    python app.py --model-path logs/demo/last_epoch_weights.pth --port 7861

It serves http://127.0.0.1:7860, to this machine only unless --host says otherwise. It predicts
with the project's predictor, ``unet.Unet`` (onnxruntime for .onnx files), each model's
settings coming from the file saved beside its weights, as in predict.py; what it does besides
drawing its widgets is utils/inference/segmenter.py. Its segment function is also an API,
``/segment``, for gradio_client. It needs the optional packages of requirements-app.txt, which
``make app`` installs.
"""

from __future__ import annotations

import argparse
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from unet import Unet
from utils.drawing import BLEND, draw_labels
from utils.errors import UserError, exit_on_user_error
from utils.inference.engines import ENGINES, engine_for
from utils.inference.segmenter import (
    AUTO,
    Chosen,
    Prediction,
    Segmenter,
    engine_choices,
    find_models,
    options_from,
)

try:
    import gradio as gr
    import pandas as pd
except ImportError:  # the optional install; main() says how to get it
    gr = None

#: predict.py's --mix-type drawings, as the page names them.
MIX_TYPES = [("blend (0)", 0), ("colours only (1)", 1), ("image where not background (2)", 2)]
#: The highlighted view is drawn at most this many pixels wide or high; downloads are full size.
DISPLAY_SIDE = 1024
NO_MODEL = "(none)"
#: How the page is served: no share link, no server-side rendering by Node, no MCP server, no
#: PWA; errors shown on the page; the footer links only to the API's page.
LAUNCH = {
    "share": False,
    "ssr_mode": False,
    "mcp_server": False,
    "pwa": False,
    "quiet": True,
    "show_error": True,
    "footer_links": ["api"],
    "prevent_thread_lock": True,
}
#: Every 10 minutes Gradio deletes the copies of uploads and results it made over 10 minutes
#: ago: a page left open all day keeps its disk bounded.
GRADIO_CACHE_AGE = (600, 600)
#: Small images fill the overlay's box, as they fill the highlighted view's.
CSS = ".overlay img {width: 100%; height: 100%; object-fit: contain}"
#: Pictures travel as PNG files (Gradio's default, WebP, would change the pixels).
PNG = {"type": "filepath", "format": "png"}


def hex_color(rgb) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def class_table(labels: np.ndarray, names: list[str], colors) -> pd.DataFrame:
    """Each class's index, name, colour, pixels and share of the image's pixels."""
    counts = np.bincount(labels.ravel(), minlength=len(names))[: len(names)]
    share = np.round(100 * counts / labels.size, 2)
    colour = [hex_color(color) for color in colors]
    table = {"class": range(len(names)), "name": names, "colour": colour, "pixels": counts}
    return pd.DataFrame({**table, "share %": share})


def styled(table: pd.DataFrame):
    """The table as the page shows it: each colour cell painted in its colour."""
    paint = table.style.apply(
        lambda column: [f"background-color: {c}; color: {c}" for c in column], subset=["colour"]
    )
    return paint.format({"share %": "{:.2f}"})


def highlighted(prediction: Prediction, blend: float) -> gr.AnnotatedImage:
    """The image with one mask per class, ``blend`` opaque, and a legend of the classes;
    hovering or clicking a class highlights it."""
    image, labels = prediction.image, prediction.labels
    scale = DISPLAY_SIDE / max(image.size)
    if scale < 1:
        size = (round(image.width * scale), round(image.height * scale))
        image = image.resize(size, Image.BILINEAR)
        labels = np.asarray(Image.fromarray(labels).resize(size, Image.NEAREST))
    predictor = prediction.predictor
    names = [f"{i} {name}" for i, name in enumerate(predictor.class_names())]
    masks = [((labels == i) * np.float32(blend), name) for i, name in enumerate(names)]
    colors = {name: hex_color(color) for name, color in zip(names, predictor.colors, strict=True)}
    return gr.AnnotatedImage(value=(image, masks), color_map=colors)


def devices() -> list[str]:
    return ["auto", "cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def precisions() -> list[str]:
    """``auto`` (the engine's default: fp32 for torch) and the precisions to choose from."""
    return [AUTO, "fp32", "bf16"] + (["fp16"] if torch.cuda.is_available() else [])


class Page:
    """The page's handlers around one :class:`Segmenter`; :meth:`build` lays it out."""

    def __init__(
        self,
        segmenter: Segmenter,
        models: dict[str, str],
        find: Callable[[], dict[str, str]] | None = None,
    ):
        self.segmenter, self.models = segmenter, models
        self.find = find or (lambda: models)  # the models listed now (the runs under --logs)

    def label(self, path: str) -> str:
        return next((label for label, known in self.models.items() if known == path), path)

    def segment(
        self,
        image: str,
        model: str,
        mix_type: int = 0,
        blend: float = BLEND,
        tta: bool = False,
        tile: float | None = None,
        device: str = "auto",
        precision: str = AUTO,
        engine: str = AUTO,
    ) -> tuple[str, str, pd.DataFrame]:
        """One image through one model: the overlay, the class-index mask PNG (the file
        get_miou.py writes) and each class's pixels."""
        if not image:
            raise gr.Error("Upload an image first.", print_exception=False)
        try:
            prediction = self.segmenter.predict(
                model, options_from(tta, tile, device, precision, engine), image
            )
        except UserError as error:
            raise gr.Error(str(error), print_exception=False) from None
        predictor, stem = prediction.predictor, Path(image).stem
        overlay = prediction.folder / f"{stem}_overlay.png"
        draw_labels(prediction.image, prediction.labels, predictor.colors, mix_type, blend).save(
            overlay
        )
        table = class_table(prediction.labels, predictor.class_names(), predictor.colors)
        return str(overlay), str(prediction.folder / f"{stem}.png"), table

    def panel(self, model: str, chosen: Chosen, image: str, mix_type: int, blend: float) -> list:
        """One model's column: :meth:`segment`'s overlay and table, the classes highlighted,
        the time the model took, and the downloads."""
        options = chosen.options
        widgets = {**asdict(options), "precision": options.precision or AUTO}
        widgets["engine"] = options.engine or AUTO
        overlay, mask, table = self.segment(image, model, mix_type, blend, **widgets)
        prediction = self.segmenter.predict(model, options, image)  # the one segment made
        width, height = prediction.image.size
        took = f"took {prediction.seconds:.2f} s on {Path(image).name} ({width}x{height})"
        downloads = [gr.DownloadButton(value=mask), gr.DownloadButton(value=overlay)]
        note = f"**{self.label(model)}** {took}."
        return [overlay, highlighted(prediction, blend), styled(table), note, *downloads]

    def show(self, image: str | None, chosen: Chosen, mix_type: int, blend: float) -> list:
        """Both columns for the image shown; the second only when comparing."""
        if not image:
            return [gr.skip()] * 13
        first = self.panel(chosen.model, chosen, image, mix_type, blend)
        if not chosen.compare:
            return [*first, gr.Column(visible=False), *[gr.skip()] * 6]
        second = self.panel(chosen.compare, chosen, image, mix_type, blend)
        return [*first, gr.Column(visible=True), *second]

    def pick(self, model, compare, tta, tile, device, precision, engine, chosen: Chosen) -> list:
        """Load the models and options the widgets name; if one fails to load, the previous
        choice stays in use, and in the widgets."""
        compare = None if compare in (None, NO_MODEL) else compare
        wanted = Chosen(model, compare, options_from(tta, tile, device, precision, engine))
        return self.controls(self.segmenter.choose(wanted, chosen, self.label))

    def controls(self, chosen: Chosen) -> list:
        """The state and the widgets' values for ``chosen``, and what its models are."""
        options = chosen.options
        takes = all(engine_for(p, options.engine).takes_precision for p in chosen.models())
        precision = gr.Dropdown(precisions(), value=options.precision or AUTO, interactive=takes)
        engine = gr.Dropdown(engine_choices(chosen.models()), value=options.engine or AUTO)
        self.models = self.find()  # a run that ended since the page started is listed
        models = list(self.models.items())
        model = gr.Dropdown(models, value=chosen.model)
        compare = gr.Dropdown([NO_MODEL, *models], value=chosen.compare or NO_MODEL)
        widgets = [model, compare, options.tta, options.tile]
        return [chosen, *widgets, options.device, precision, engine, self.describe(chosen)]

    def describe(self, chosen: Chosen) -> str:
        """Each model's settings, as its settings file gave them."""
        lines = []
        for path in chosen.models():
            try:
                predictor = self.segmenter.predictor(path, chosen.options)
            except UserError as error:
                lines.append(f"**{self.label(path)}**: {error}")
                continue
            names = ", ".join(predictor.class_names())
            height, width = predictor.input_shape
            lines.append(
                f"**{self.label(path)}**: {predictor.num_classes} classes ({names}), "
                f"{predictor.settings.encoder}, input {height}x{width}, tiles "
                f"{predictor.tile or 'none'}"
            )
        return "\n\n".join(lines)

    def on_files(self, files: list[str] | None, pasted: str | None) -> gr.Dropdown:
        """The images to choose from; the last uploaded (uploads add to the list) is shown."""
        return image_choices(files, pasted, files[-1] if files else pasted)

    def on_paste(self, files: list[str] | None, pasted: str | None) -> gr.Dropdown:
        """The images to choose from; the pasted one is shown."""
        return image_choices(files, pasted, pasted or (files[-1] if files else None))

    def build(self, chosen: Chosen, mix_type: int) -> gr.Blocks:
        """Models, options and images on the left; one column of results per model."""
        with gr.Blocks(
            title="unet-pytorch", analytics_enabled=False, delete_cache=GRADIO_CACHE_AGE
        ) as page:
            state = gr.State(chosen)
            with gr.Row():
                with gr.Column(scale=1, min_width=340):
                    gr.Markdown("## Segment images")
                    controls = self.model_controls(chosen)
                    mix = gr.Radio(MIX_TYPES, value=mix_type, label="Drawing (--mix-type)")
                    blend = gr.Slider(0, 1, BLEND, step=0.05, label="Blend: colour share")
                    files, pasted, shown = image_inputs()
                with gr.Column(scale=3):
                    with gr.Row():
                        with gr.Column():
                            first = result_panel("a")
                        with gr.Column(visible=False) as second_column:
                            second = result_panel("b")
            self.wire(state, controls, [shown, state, mix, blend], [*first, second_column, *second])
            files.change(self.on_files, [files, pasted], shown, api_visibility="private")
            pasted.change(self.on_paste, [files, pasted], shown, api_visibility="private")
            self.api(controls, mix, blend)
            page.load(self.controls, state, [state, *controls], api_visibility="private")
        return page

    def model_controls(self, chosen: Chosen) -> list:
        """Model, second model, TTA, tile, device, precision, engine, and what the models
        are."""
        models = list(self.models.items())
        options = chosen.options
        model = gr.Dropdown(models, value=chosen.model, label="Model", elem_id="model")
        compare = gr.Dropdown([NO_MODEL, *models], value=NO_MODEL, label="Compare with")
        with gr.Row():
            tta = gr.Checkbox(label="Flip TTA", value=options.tta)
            tile = gr.Number(label="Tile (empty: the model's)", precision=0, minimum=0)
        with gr.Row():
            device = gr.Dropdown(devices(), value=options.device, label="Device")
            precision = gr.Dropdown(
                precisions(), value=options.precision or AUTO, label="Precision"
            )
        names = ", ".join(f"{name}: {engine.summary}" for name, engine in ENGINES.items())
        engine = gr.Dropdown(
            engine_choices([chosen.model]),
            value=options.engine or AUTO,
            label="Engine",
            info=f"what runs the network (auto: by the file); {names}",
        )
        info = gr.Markdown(elem_id="model-info")
        return [model, compare, tta, tile, device, precision, engine, info]

    def wire(self, state, controls: list, show_inputs: list, show_outputs: list) -> None:
        """A change of model or option loads it, then redraws; so does a new image or drawing."""
        model, compare, tta, tile, device, precision, engine, _ = controls
        changes = [model.input, compare.input, tta.input, tile.submit, tile.blur]
        changes += [device.input, precision.input, engine.input]
        private = {"api_visibility": "private"}
        picked = gr.on(changes, self.pick, [*controls[:-1], state], [state, *controls], **private)
        picked.then(self.show, show_inputs, show_outputs, **private)
        shown, _, mix, blend = show_inputs
        redraws = [shown.change, mix.input, blend.release]
        gr.on(redraws, self.show, show_inputs, show_outputs, **private)

    def api(self, controls: list, mix, blend) -> None:
        """``/segment`` for scripts: :meth:`segment` on a hidden image input and outputs."""
        model, _, tta, tile, device, precision, engine, _ = controls
        with gr.Column(visible=False):
            image = gr.File(label="image")
            outputs = [gr.Image(label="overlay", **PNG), gr.File(label="mask")]
            outputs.append(gr.Dataframe(label="table"))
            button = gr.Button()
        inputs = [image, model, mix, blend, tta, tile, device, precision, engine]
        button.click(self.segment, inputs, outputs, api_name="segment")


def image_choices(files: list[str] | None, pasted: str | None, shown: str | None):
    choices = [(Path(path).name, path) for path in files or []]
    return gr.Dropdown(choices + ([("pasted image", pasted)] if pasted else []), value=shown)


def image_inputs() -> list:
    """Upload one or more images, or paste one; and which of them is shown."""
    files = gr.File(label="Upload images", file_count="multiple", elem_id="images")
    sources = ["clipboard", "upload"]
    pasted = gr.Image(label="or paste one", sources=sources, height=140, elem_id="paste", **PNG)
    return [files, pasted, gr.Dropdown(label="Image shown", choices=[], elem_id="shown")]


def result_panel(suffix: str) -> list:
    """One model's outputs: overlay, highlighted classes, table, time and two downloads."""
    overlay = gr.Image(
        label="Overlay", height=360, elem_id=f"overlay-{suffix}", elem_classes="overlay", **PNG
    )
    classes = gr.AnnotatedImage(label="Classes", height=360, elem_id=f"classes-{suffix}")
    table = gr.Dataframe(label="Pixels per class", interactive=False, elem_id=f"table-{suffix}")
    note = gr.Markdown(elem_id=f"note-{suffix}")
    with gr.Row():
        mask = gr.DownloadButton("Mask PNG", elem_id=f"mask-{suffix}")
        drawing = gr.DownloadButton("Overlay PNG", elem_id=f"overlay-file-{suffix}")
    return [overlay, classes, table, note, mask, drawing]


def get_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    flag = parser.add_argument
    flag("--model-path", action="append", default=[], help="weights or .onnx; repeatable")
    flag("--logs", default="logs", help="folder of runs to list (default: %(default)s)")
    flag("--host", default="127.0.0.1", help="0.0.0.0: the network too (default: %(default)s)")
    flag("--port", type=int, default=7860, help="(default: %(default)s)")
    flag("--mix-type", type=int, choices=(0, 1, 2), default=0, help="as predict.py's (default: 0)")
    flag("--device", choices=devices(), default="auto", help="to start with (default: auto)")
    flag("--precision", choices=precisions(), default=AUTO,
         help="to start with (default: auto, the engine's: fp32 for torch)")  # fmt: skip
    flag("--engine", choices=[AUTO, *ENGINES], default=AUTO,
         help="to start with (default: auto, by the file)")  # fmt: skip
    flag("--max-pixels", type=float, default=40e6, help="refuse larger images (default: 40e6)")
    return parser.parse_args(argv)


def serve(page: gr.Blocks, host: str, port: int, folder: Path) -> None:
    """Serve the page until Ctrl-C, offline: no analytics, system fonts, no share link."""
    theme = gr.themes.Default(
        font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["monospace"]
    )
    try:
        page.queue(default_concurrency_limit=1).launch(
            server_name=host,
            server_port=port,
            theme=theme,
            css=CSS,
            allowed_paths=[str(folder)],
            **LAUNCH,
        )
    except OSError as error:
        raise UserError(f"cannot serve on {host}:{port} ({error}); give another --port.") from None
    print(f"The page is at http://{host}:{port} (Ctrl-C stops it).", flush=True)
    try:
        page.block_thread()
    finally:
        page.close()


@exit_on_user_error
def main(argv: list[str] | None = None) -> None:
    args = get_args(argv)
    if gr is None:
        raise UserError(
            "app.py needs the packages of requirements-app.txt: run make app, or "
            ".venv/bin/pip install --no-deps -r requirements-app.txt."
        )
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # read at launch, not only at import
    models = find_models(Path(args.logs), args.model_path)
    if not models:
        raise UserError(
            f"no weights under '{args.logs}' and no --model-path; train a model "
            "(make demo) or give --model-path."
        )
    options = options_from(False, None, args.device, args.precision, args.engine)
    chosen = Chosen(next(iter(models.values())), None, options)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does, cleaning up
    with tempfile.TemporaryDirectory(prefix="unet-app-") as folder:
        # Gradio's copies of uploads and results go in the same folder, deleted at exit
        os.environ["GRADIO_TEMP_DIR"] = str(Path(folder) / "gradio")
        segmenter = Segmenter(Path(folder), int(args.max_pixels), Unet, warn=gr.Warning)
        segmenter.predictor(chosen.model, options)  # loaded before the first visit, or stop
        find = partial(find_models, Path(args.logs), args.model_path)
        page = Page(segmenter, models, find).build(chosen, args.mix_type)
        serve(page, args.host, args.port, Path(folder))


if __name__ == "__main__":
    main()
