"""What a CUDA machine must get right: every precision and layout trains, --benchmark runs,
prediction agrees with the CPU, torchrun runs with nccl, and --deterministic resumes bit for bit.

Each test names its device. The ``cuda`` cases skip cleanly without a GPU (``make test-gpu``
runs them on one); their CPU twins run everywhere, so the test code itself is exercised in CI.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from nets.unet import Unet as Model
from nets.unet_training import SegmentationLoss, weights_init
from tests.conftest import SHARED_DATA, save_random_weights
from unet import Unet
from utils.data.demo_data import make_demo_dataset, make_sample
from utils.device import backend_settings, cpu_has_native_bf16, resolve_runtime
from utils.training.epochs import train_one_epoch

ROOT = Path(__file__).resolve().parents[1]
CUDA = pytest.mark.cuda

# (device, precision, channels_last); bf16 on a CPU only runs fast with AVX512-BF16 or AMX
NATIVE_BF16 = pytest.mark.skipif(not cpu_has_native_bf16(), reason="bf16 is emulated here")
STEP_SETTINGS = [  # the CPU's rehearse the GPU's: make test-all runs them
    pytest.param("cpu", "fp32", False, marks=pytest.mark.slow),
    pytest.param("cpu", "fp32", True, marks=pytest.mark.slow),
    pytest.param("cpu", "bf16", True, marks=[NATIVE_BF16, pytest.mark.slow]),
    *[pytest.param("cuda", precision, layout, marks=CUDA)
      for precision in ("fp32", "fp16", "bf16") for layout in (False, True)],
]  # fmt: skip


def fixed_batch(size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """Two generated images and their labels (4 classes) as a uint8/int64 batch."""
    rng = np.random.default_rng(0)
    pairs = [make_sample(rng, size, size) for _ in range(2)]
    images = torch.stack([torch.from_numpy(np.array(i)).permute(2, 0, 1) for i, _ in pairs])
    labels = torch.stack([torch.from_numpy(np.array(lab)).long() for _, lab in pairs])
    return images, labels.clamp(max=4)  # the border value 255 becomes the ignore index 4


@pytest.mark.parametrize(("device", "precision", "channels_last"), STEP_SETTINGS)
def test_steps_on_a_fixed_batch_give_a_finite_falling_loss(device, precision, channels_last):
    runtime = resolve_runtime(device, precision, channels_last=channels_last)
    torch.manual_seed(0)
    model = Model(num_classes=4)
    weights_init(model, "kaiming")
    model = runtime.prepare(model)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    step = dict(optimizer=optimizer, scaler=runtime.grad_scaler(), runtime=runtime, steps=1,
                criterion=SegmentationLoss(4, dice=True).to(runtime.device))  # fmt: skip
    batch = fixed_batch()
    losses = [train_one_epoch(model, [batch], **step)[0] for _ in range(8)]
    assert all(np.isfinite(losses)), losses
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=CUDA)])
def test_benchmark_times_steps_and_writes_nothing(tmp_path, cli, device):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 12, size=(48, 40))
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--input-shape", "32", "32", "--no-freeze-train", "--unfreeze-batch-size", "2",
            "--num-workers", "0", "--dice-loss", "--device", device, "--benchmark", "2",
            "--save-dir", str(tmp_path / "logs")]  # fmt: skip
    code, out, err = cli(train.main, argv)
    assert code == 0, err
    assert f"on {device}:" in out and " s/step" in out and " img/s (2 steps)" in out
    assert not (tmp_path / "logs").exists()


@CUDA
def test_prediction_on_cuda_agrees_with_the_cpu(tmp_path):
    """The same weights give the same classes on CUDA and on the CPU, and batched as one by one.

    Compared with TF32 off: PyTorch lets CUDA fp32 convolutions use TF32 (a 10-bit mantissa) by
    default, and a CPU simulation of that rounding gave only 99.855% of these pixels the same
    class. In strict fp32 the devices and batch sizes differ only by the rounding of different
    kernels (about 1e-6), which flips an argmax only where two classes nearly tie: every pixel
    whose top two probabilities are more than 1e-3 apart must agree.
    """
    weights = save_random_weights(tmp_path / "vgg5.pth", num_classes=5)
    image_path = SHARED_DATA / "samples" / "street.jpg"
    if not image_path.is_file():  # a generated photo-like picture instead
        image_path = tmp_path / "street.png"
        make_sample(np.random.default_rng(0), 640, 480)[0].save(image_path)
    from utils.images import read_image

    image = read_image(image_path)
    with backend_settings(tf32=False):
        predictors = {
            device: Unet(
                model_path=str(weights), num_classes=5, input_shape=[256, 256], device=device
            )  # fmt: skip
            for device in ("cpu", "cuda")
        }
        probs = {d: predictors[d].probabilities(image) for d in ("cpu", "cuda")}
        batched = next(predictors["cuda"].predict_files([image_path] * 3, batch_size=2)).labels
    assert np.abs(probs["cpu"] - probs["cuda"]).max() < 1e-3
    top2 = np.sort(probs["cpu"], axis=-1)[..., -2:]
    clear = top2[..., 1] - top2[..., 0] > 1e-3
    assert clear.mean() > 0.99
    cpu, cuda = (probs[d].argmax(-1) for d in ("cpu", "cuda"))
    assert len(np.unique(cpu)) > 1
    assert np.array_equal(cpu[clear], cuda[clear])
    assert np.array_equal(batched[clear], cuda[clear])


@CUDA
@pytest.mark.slow
def test_one_process_torchrun_with_nccl_sync_bn_and_resume(tmp_path):
    root = make_demo_dataset(tmp_path / "VOCdevkit", 12, size=(48, 40))
    argv = ["--dataset-path", str(root), "--num-classes", "4", "--model-path", "",
            "--backbone", "resnet50", "--input-shape", "32", "32", "--no-freeze-train",
            "--unfreeze-epoch", "1", "--unfreeze-batch-size", "2", "--num-workers", "1",
            "--precision", "fp16", "--sync-bn", "--device", "cuda",
            "--save-dir", str(tmp_path / "logs")]  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                "1", "train.py"]  # fmt: skip
    for extra in ([], ["--resume", str(tmp_path / "logs/checkpoint_last.pth")]):
        command = [*torchrun, *(argv if not extra else extra + ["--unfreeze-epoch", "2"])]
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "logs/checkpoint_last.pth", weights_only=True)
    assert state["epoch"] == 2 and state["config"]["precision"] == "fp16"
