"""The everyday path of a newcomer: a trained model carries its settings, and every slip on the
way (wrong paths, files, flags, Ctrl-C) gets one sentence in the context it happened in."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import get_miou
import predict
import summary
import train
import voc_annotation
from unet import Unet
from utils.data.demo_data import make_demo_dataset
from utils.training.trainer import Trainer

TYPED_OUT = ["--num-classes", "4", "--backbone", "vgg", "--input-shape", "32", "32"]


@pytest.mark.slow
def test_predicting_with_only_the_model_path_equals_typing_every_setting(trained, tmp_path, cli):
    root, logs = trained
    weights = logs / "last_epoch_weights.pth"
    images = root / "VOC2007/JPEGImages"
    outputs = []
    for extra in ([], TYPED_OUT):
        out = tmp_path / f"out{len(extra)}"
        argv = ["--mode", "dir_predict", "--dir-origin-path", str(images), "--dir-save-path",
                str(out), "--model-path", str(weights), "--device", "cpu", *extra]  # fmt: skip
        code, stdout, err = cli(predict.main, argv)
        assert code == 0, err
        outputs.append({p.name: np.array(Image.open(p)) for p in sorted(out.iterdir())})
    assert "(4 classes, vgg, 32x32" in stdout and "settings from" in stdout
    assert outputs[0].keys() == outputs[1].keys() and len(outputs[0]) == 12 + 1  # + legend.png
    assert all(np.array_equal(outputs[0][k], outputs[1][k]) for k in outputs[0])


def test_get_miou_and_summary_take_the_settings_too(trained, tmp_path, cli):
    root, logs = trained
    weights = logs / "last_epoch_weights.pth"
    metrics = []
    for extra in ([], TYPED_OUT + ["--name-classes", "bg", "square", "circle", "triangle"]):
        out = tmp_path / f"miou{len(extra)}"
        argv = ["--dataset-path", str(root), "--model-path", str(weights), "--device", "cpu",
                "--miou-out-path", str(out), *extra]  # fmt: skip
        assert cli(get_miou.main, argv)[0] == 0
        metrics.append(json.loads((out / "metrics.json").read_text()))
    assert metrics[0] == metrics[1]
    assert list(metrics[0]["per_class"]) == ["bg", "square", "circle", "triangle"]
    code, out, _ = cli(summary.main, ["--model-path", str(weights)])
    assert code == 0 and "input [32, 32]" in out and "[1, 4, 32, 32]" in out


def test_the_predictor_class_reads_the_settings_and_a_conflict_names_both_values(trained):
    weights = trained[1] / "last_epoch_weights.pth"
    unet = Unet(model_path=str(weights), device="cpu")
    assert (unet.num_classes, unet.input_shape, unet.name_classes[0]) == (4, [32, 32], "bg")
    with pytest.raises(
        ValueError,
        match=r"the model has 4 classes \('.*last_epoch_weights.json' "
        r"says so\) but num_classes \(--num-classes\) is 21; drop --num-classes",
    ):
        Unet(model_path=str(weights), num_classes=21, device="cpu")


def test_weights_without_a_settings_file_use_the_reference_defaults(trained, tmp_path):
    weights = trained[1] / "last_epoch_weights.pth"
    plain = tmp_path / "original.pth"
    shutil.copy(weights, plain)  # no .json beside it, like the original's files
    with pytest.raises(ValueError, match="trained with 4 classes but num_classes is 21"):
        Unet(model_path=str(plain), device="cpu")
    assert Unet(model_path=str(plain), num_classes=4, device="cpu").input_shape == [512, 512]


def test_predict_onnx_reads_the_exported_settings(trained, onnx_files, tmp_path, cli):
    root, _ = trained
    image = next((root / "VOC2007/JPEGImages").iterdir())
    argv = [str(image), "--mode", "predict_onnx", "--onnx-path", str(onnx_files / "static.onnx"),
            "--device", "cpu", "--dir-save-path", str(tmp_path), "--count"]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    assert "(4 classes, vgg, 32x32, on cpu: onnxruntime fp32; settings from the metadata" in out
    assert "|" in out
    assert (tmp_path / f"{image.stem}.png").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--input-shape", "64", "64"], "was exported for 32x32 inputs but --input-shape is 64 64"),
     (["--num-classes", "5"], "the model has 4 classes (the metadata of")],
)  # fmt: skip
def test_predict_onnx_refuses_what_the_export_cannot_do(trained, onnx_files, cli, extra, message):
    root, _ = trained
    image = next((root / "VOC2007/JPEGImages").iterdir())
    argv = [str(image), "--mode", "predict_onnx", "--onnx-path", str(onnx_files / "static.onnx"),
            "--device", "cpu", *extra]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 2 and message in err and "Traceback" not in err


def test_a_dynamic_export_takes_any_valid_size(trained, onnx_files, tmp_path, cli):
    root, _ = trained
    image = next((root / "VOC2007/JPEGImages").iterdir())
    argv = [str(image), "--mode", "predict_onnx", "--onnx-path", str(onnx_files / "dynamic.onnx"),
            "--input-shape", "64", "64", "--device", "cpu",
            "--dir-save-path", str(tmp_path)]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    assert "(4 classes, vgg, 64x64" in out


def test_onnx_predicts_in_batches_with_a_batch_1_export(trained, onnx_files):
    from unet import Unet_ONNX

    root, logs = trained
    weights = logs / "last_epoch_weights.pth"
    paths = sorted((root / "VOC2007/JPEGImages").iterdir())[:5]
    onnx = Unet_ONNX(onnx_path=str(onnx_files / "static.onnx"), device="cpu")
    torch_unet = Unet(model_path=str(weights), device="cpu")
    for result in onnx.predict_files(paths, batch_size=3):
        expected = torch_unet.labels(Image.open(result.path))
        assert np.mean(result.labels == expected) > 0.999


def test_predict_onnx_on_cuda_without_the_cuda_provider_says_what_to_install(onnx_files, cli):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    argv = ["x.jpg", "--mode", "predict_onnx", "--onnx-path", str(onnx_files / "static.onnx"),
            "--device", "cuda"]  # fmt: skip
    code, _, err = cli(predict.main, argv)
    assert code == 2 and "needs onnxruntime with its CUDA provider" in err
    assert "onnxruntime-gpu" in err


def test_a_file_that_is_not_weights_gets_one_sentence(tmp_path, cli):
    notes = tmp_path / "README.md"
    notes.write_text("# not weights\n")
    code, _, err = cli(predict.main, ["x.jpg", "--model-path", str(notes), "--device", "cpu"])
    assert code == 2 and "is not a PyTorch weights file" in err
    assert "Please file an issue" not in err and len(err.strip().splitlines()) == 1


def test_ctrl_c_ends_with_the_resume_command_and_exit_code_130(trained, tmp_path, monkeypatch,
                                                               cli):  # fmt: skip
    root, _ = trained
    real_end = Trainer.end_of_epoch

    def interrupt_in_epoch_two(self, epoch, log, **kwargs):
        if epoch == 1:
            raise KeyboardInterrupt
        real_end(self, epoch, log, **kwargs)

    monkeypatch.setattr(Trainer, "end_of_epoch", interrupt_in_epoch_two)
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "3",
            "--num-workers", "0", "--device", "cpu", "--no-eval-flag",
            "--save-dir", str(tmp_path)]  # fmt: skip
    code, _, err = cli(train.main, argv)
    assert code == 130
    expected = f"interrupted at epoch 2; resume with: python train.py --resume {tmp_path}"
    assert err.strip().splitlines()[-1] == f"{expected}/checkpoint_last.pth"
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("where", "fmt", "message"),
    [("typo", "voc", "--dataset-path '{root}_typo' does not exist"),
     ("voc2007", "voc", "is the VOC2007 folder itself; point it at its parent"),
     ("medical", "voc", "the medical layout; add --dataset-format medical"),
     ("empty", "voc", "should hold VOC2007/ImageSets/Segmentation/ (found: notes.txt)")],
)  # fmt: skip
def test_a_wrong_dataset_path_says_what_it_found(trained, tmp_path, cli, where, fmt, message):
    root, _ = trained
    path = {
        "typo": f"{root}_typo",
        "voc2007": str(root / "VOC2007"),
        "medical": str(tmp_path),
        "empty": str(tmp_path),
    }[where]
    if where == "medical":
        (tmp_path / "Images").mkdir()
        (tmp_path / "Labels").mkdir()
    if where == "empty":
        (tmp_path / "notes.txt").write_text("")
    argv = ["--dataset-path", path, "--dataset-format", fmt, "--model-path", "", "--device",
            "cpu", "--num-classes", "4"]  # fmt: skip
    code, _, err = cli(train.main, argv)
    assert code == 2 and message.format(root=root) in err, err


def record_loaders(monkeypatch) -> list[dict]:
    """The keyword arguments of every ``Loaders`` the trainer builds."""
    from utils.training import trainer

    built = []
    real = trainer.Loaders

    def spy(*args, **kwargs):
        built.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "Loaders", spy)
    return built


def test_training_without_a_val_split_says_so_and_writes_no_val_loss(tmp_path, monkeypatch, cli):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 6, size=(48, 40))
    assert cli(voc_annotation.main, ["--dataset-path", str(root), "--train-percent", "1"])[0] == 0
    assert (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text() == ""
    built = record_loaders(monkeypatch)
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
            "--num-workers", "0", "--device", "cpu",
            "--save-dir", str(tmp_path / "logs")]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert "No val split" in out and "is empty): training without validation" in out
    log_dir = next((tmp_path / "logs").glob("loss_*"))
    assert (log_dir / "epoch_loss.txt").is_file() and not (log_dir / "epoch_val_loss.txt").exists()
    assert "Val Loss" not in out and [b["val_batch_size"] for b in built] == [None]


def test_an_empty_val_split_trains_without_validation_though_val_ids_exist(data_root, tmp_path,
                                                                         cli):  # fmt: skip
    argv = ["--dataset-path", str(data_root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
            "--num-workers", "0", "--device", "cpu", "--val-split", "",
            "--save-dir", str(tmp_path / "logs")]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0 and "No validation (--val-split '')" in out, err
    assert "Val Loss" not in out and "Epoch 1 mIoU" not in out


def test_the_val_batch_is_capped_at_the_val_split(trained, tmp_path, monkeypatch, cli):
    root, _ = trained  # 12 demo images: 10 train, 2 val after voc_annotation's split
    val = (root / "VOC2007/ImageSets/Segmentation/val.txt").read_text().split()
    built = record_loaders(monkeypatch)
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-epoch", "1",
            "--unfreeze-batch-size", str(len(val) + 2), "--num-workers", "0", "--device", "cpu",
            "--no-eval-flag", "--save-dir", str(tmp_path)]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert [(b["batch_size"], b["val_batch_size"]) for b in built] == [(len(val) + 2, len(val))]
    assert "Val Loss:" in out and len((next(tmp_path.glob("loss_*")) / "epoch_val_loss.txt")
                                     .read_text().split()) == 1  # fmt: skip


def test_warnings_come_once_and_name_the_fix(trained, tmp_path, cli):
    root, _ = trained
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--freeze-epoch", "1", "--unfreeze-epoch", "2",
            "--freeze-batch-size", "2", "--unfreeze-batch-size", "4", "--num-workers", "0",
            "--device", "cpu", "--no-eval-flag", "--save-dir", str(tmp_path)]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert out.count("was clamped to") == 1 and "--no-lr-fit uses --init-lr" in out
    assert out.count("holds no trained weights") == 1 and "--no-freeze-train" in out


def test_the_distributed_hint_can_be_pasted(cli):
    code, _, err = cli(train.main, ["--distributed", "--model-path", "", "--device", "cpu"])
    assert code == 2 and "train.py --distributed --model-path '' --device cpu`" in err


@pytest.mark.parametrize(
    ("device", "message"),
    [("gpu", "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
     ("cuda:x", "unknown device 'cuda:x'")],
)  # fmt: skip
def test_devices_are_checked_by_name(cli, device, message):
    code, _, err = cli(train.main, ["--device", device, "--model-path", ""])
    assert code == 2 and message in err


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_clear_error(cli, device):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    code, _, err = cli(train.main, ["--device", device, "--model-path", ""])
    assert code == 2
    assert f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu." in err


def test_the_prompt_strips_quotes_and_spaces(trained, tmp_path, cli, answer_prompts):
    root, logs = trained
    weights = logs / "last_epoch_weights.pth"
    image = next((root / "VOC2007/JPEGImages").iterdir())
    answer_prompts([f"  '{image}'  ", "", f'"{tmp_path / "gone.jpg"}"'])
    argv = ["--model-path", str(weights), "--device", "cpu", "--dir-save-path", str(tmp_path)]
    code, out, _ = cli(predict.main, argv)
    assert code == 0 and (tmp_path / f"{image.stem}.png").is_file()
    assert "Open Error! image file '" in out
    assert "gone.jpg' does not exist; check the name and try again" in out
    assert "remove its id" not in out


@pytest.mark.slow
def test_fps_mode_without_the_originals_image_times_a_generated_one(
    trained, tmp_path, monkeypatch, cli, without_openvino
):
    weights = trained[1] / "last_epoch_weights.pth"
    monkeypatch.chdir(tmp_path)  # no img/street.jpg here
    argv = ["--mode", "fps", "--model-path", str(weights), "--device", "cpu",
            "--test-interval", "1", "--fps-batch-size", "1"]  # fmt: skip
    code, out, err = cli(predict.main, argv)
    assert code == 0, err
    assert "img/street.jpg (the original's default) is not here: timing a generated" in out
    assert "network + argmax at 32x32" in out


def test_fix_binary_has_a_dry_run_and_keeps_a_backup(binary_root, cli):
    labels = binary_root / "VOC2007/SegmentationClass"
    before = (labels / "a.png").read_bytes()
    argv = ["--dataset-path", str(binary_root), "--fix-binary"]
    code, out, _ = cli(voc_annotation.main, [*argv, "--dry-run"])
    assert code == 0 and "would rewrite" in out and "nothing was written" in out
    assert (labels / "a.png").read_bytes() == before
    assert not (binary_root / "VOC2007/ImageSets").exists()
    code, out, _ = cli(voc_annotation.main, argv)
    assert code == 0 and "SegmentationClass_backup" in out
    assert "rewriting value 255 as 1 in 3 of 3 labels (48 pixels)" in out
    assert (binary_root / "VOC2007/SegmentationClass_backup/a.png").read_bytes() == before
    fixed = np.array(Image.open(labels / "a.png"))
    assert set(np.unique(fixed)) == {0, 1} and (fixed == 1).sum() == 16


def test_voc_annotation_calls_an_unreadable_image_an_image(binary_root, cli):
    (binary_root / "VOC2007/JPEGImages/b.jpg").write_bytes(b"not a jpeg")
    code, out, err = cli(voc_annotation.main, ["--dataset-path", str(binary_root)])
    assert code == 2 and "image file '" in err and "b.jpg' cannot be read" in err
    assert ".;" not in err and "label(s) cannot" not in err
