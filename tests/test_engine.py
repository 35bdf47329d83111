"""What a first GPU run needs right, shown on the CPU wherever the CPU can show it: resume across
memory layouts, precisions and devices, DDP as torchvision runs it, a NaN on one rank, TF32,
determinism, the interpolation cache, one layout for evaluation, and a GPU check that fails
only for the right reasons."""

import importlib
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
import unet
from nets.interpolate import _DeterministicBilinear, interpolation_matrix
from nets.unet import Unet
from tests.conftest import base_argv, save_random_weights
from utils import seeding
from utils.device import Runtime, backend_settings, tf32_enabled, tf32_state, use_device
from utils.training import epochs
from utils.training.build import build_data
from utils.training.checkpoint import load_optimizer_state, load_scaler_state

ROOT = Path(__file__).resolve().parents[1]
CHANNELS_LAST = torch.channels_last
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def one_epoch(data_root, save_dir, cli, *extra) -> Path:
    argv = base_argv(data_root, save_dir, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag", *extra)  # fmt: skip
    code, _, err = cli(train.main, argv)
    assert code == 0, err
    return save_dir / "checkpoint_last.pth"


@pytest.mark.slow  # two resumed runs, a CUDA review point shown on the CPU
@pytest.mark.parametrize("layouts", [("--no-channels-last", "--channels-last"),
                                     ("--channels-last", "--no-channels-last")])  # fmt: skip
def test_a_resume_in_the_other_memory_layout_converts_the_optimizer_state(
    data_root, tmp_path, cli, layouts
):
    checkpoint = one_epoch(data_root, tmp_path, cli, layouts[0])
    argv = ["--resume", str(checkpoint), "--unfreeze-epoch", "2", layouts[1]]
    code, _, err = cli(train.main, argv)
    assert code == 0, err
    state = torch.load(checkpoint, weights_only=True)
    assert state["epoch"] == 2 and state["config"]["channels_last"] == (
        layouts[1] == "--channels-last"
    )
    first_conv = state["optimizer"]["state"][0]  # vgg.features.0.weight, (64, 3, 3, 3)
    wanted = CHANNELS_LAST if state["config"]["channels_last"] else torch.contiguous_format
    for key in ("exp_avg", "exp_avg_sq"):
        assert first_conv[key].is_contiguous(memory_format=wanted), key


def adam_state(model: torch.nn.Module) -> dict:
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    model(torch.rand(1, 3, 32, 32)).sum().backward()
    optimizer.step()
    return optimizer.state_dict()


def test_the_optimizer_state_takes_this_runs_fused_flag_and_layout():
    torch.manual_seed(0)
    saved = adam_state(Unet(num_classes=2))  # an earlier version's CPU run: fused is None
    model = Unet(num_classes=2).to(memory_format=CHANNELS_LAST)
    optimizer = torch.optim.Adam(model.parameters(), 1e-3, fused=True)  # as built on CUDA
    load_optimizer_state(optimizer, saved)
    assert optimizer.param_groups[0]["fused"] is True  # plain load_state_dict makes it None
    weight = model.final.weight
    state = optimizer.state[weight]
    assert state["step"].dtype == torch.float32 and state["step"].device == weight.device
    assert state["exp_avg"].stride() == weight.stride()
    assert torch.equal(state["exp_avg"], saved["state"][len(saved["state"]) - 2]["exp_avg"])


@pytest.mark.bf16
@pytest.mark.slow
def test_a_resume_in_another_precision_gets_a_fresh_scaler_and_says_so(data_root, tmp_path, cli):
    assert "fresh" in load_scaler_state(torch.amp.GradScaler("cpu", enabled=True), {})
    fp16_state = torch.amp.GradScaler("cpu", enabled=True).state_dict()
    assert load_scaler_state(torch.amp.GradScaler("cpu", enabled=False), fp16_state) is None
    checkpoint = one_epoch(data_root, tmp_path, cli)
    code, _, err = cli(train.main, ["--resume", str(checkpoint), "--unfreeze-epoch", "2",
                                    "--precision", "bf16"])  # fmt: skip
    assert code == 0, err
    assert torch.load(checkpoint, weights_only=True)["config"]["precision"] == "bf16"


def test_the_checkpoint_keeps_only_the_runs_own_gpu_rng(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(device) or "s")
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: pytest.fail("every GPU"))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(state))
    state = seeding.capture_rng(torch.device("cuda", 1))
    assert state["cuda"] == "s" and calls == [torch.device("cuda", 1)]
    seeding.restore_rng({**state, "cuda": ["gpu0", "gpu1"]}, torch.device("cuda", 0))
    assert calls[-1] == "gpu0"  # an older checkpoint's list: this run's GPU only
    assert "cuda" not in seeding.capture_rng(torch.device("cpu"))


@pytest.mark.slow
def test_one_process_torchrun_runs_ddp_and_resumes(data_root, tmp_path):
    argv = base_argv(data_root, tmp_path, "--freeze-epoch", "1", "--unfreeze-epoch", "2",
                     "--no-eval-flag")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for extra in (argv, ["--resume", str(tmp_path / "checkpoint_last.pth"), "--unfreeze-epoch",
                         "3"]):  # fmt: skip
        command = [*TORCHRUN, "--nproc_per_node", "1", "train.py", *extra]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=240)  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        assert "1 process(es) under torchrun (DDP over gloo)" in result.stdout
    assert torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)["epoch"] == 3


@pytest.mark.slow
def test_a_nan_on_one_rank_stops_every_rank_with_the_same_sentence(data_root, tmp_path):
    # 8 train images, batch 2 over 2 processes: 4 steps an epoch; rank 1's 6th training loss
    # is epoch 2, step 2
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "3",
                     "--no-eval-flag")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "POISON_CALL": "6", "POISON_RANK": "1"}
    command = [*TORCHRUN, "--nproc_per_node", "2", "tests/train_driver.py", *argv]
    start = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert time.monotonic() - start < 90  # not the collective timeout of a stuck rank
    assert result.returncode != 0
    sentence = "error: the loss became nan at epoch 2, step 2 on rank 1; the last good weights"
    assert result.stderr.count(sentence) == 2, result.stderr[-3000:]  # each rank says it
    assert torch.load(tmp_path / "checkpoint_last.pth", weights_only=True)["epoch"] == 1


def both_tf32_apis() -> tuple:
    """What convolutions and matmuls read, through torch's old and new (2.9+) flags; reading an
    old flag raises when the new ones were left inconsistent."""
    conv, matmul = torch.backends.cudnn.conv, torch.backends.cuda.matmul
    legacy = (torch.backends.cudnn.allow_tf32, matmul.allow_tf32)
    new = (conv.fp32_precision, torch.backends.cudnn.rnn.fp32_precision, matmul.fp32_precision)
    assert legacy[0] == (new[0] == "tf32") and legacy[1] == (new[2] == "tf32")
    return legacy, new


@pytest.mark.parametrize("user_matmul_tf32", [False, True])
def test_tf32_is_pytorchs_default_and_no_tf32_keeps_fp32_strict_until_the_run_ends(
    user_matmul_tf32,
):
    torch.backends.cuda.matmul.allow_tf32 = user_matmul_tf32  # PyTorch's default: False
    try:
        before = both_tf32_apis()
        assert tf32_enabled()  # PyTorch's default for CUDA convolutions
        with backend_settings(tf32=False):
            assert not tf32_enabled() and both_tf32_apis()[0] == (False, False)
        assert both_tf32_apis() == before  # matmuls back at what they were too
        with backend_settings(tf32=True):
            assert both_tf32_apis() == before  # --tf32 is the default: nothing changes
        assert tf32_state() == before[0]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False


DENORMALS = """
import sys, torch
from utils.device import flush_denormals
torch.set_num_threads(2)
if sys.argv[1] == "flush" and not flush_denormals():
    sys.exit(3)
x = torch.full((1 << 20,), 1e-40)  # denormal fp32, enough for both intra-op threads
flushed = int((x * 1.0 == 0).sum())
weight = torch.nn.Parameter(torch.ones(1 << 20))  # a dead ReLU's weights: a gradient once
optimizer = torch.optim.Adam([weight], lr=1e-3, fused=True)  # as build_optimizer makes it
weight.grad = torch.ones_like(weight)
for step in range(901):
    optimizer.step()
    weight.grad.zero_()
    if step == 700:
        at_700 = optimizer.state[weight]["exp_avg"].min().item()  # 0.1 * 0.9**700: normal
moment = optimizer.state[weight]["exp_avg"]  # 0.1 * 0.9**900: a denormal unless flushed
print(flushed, int((moment == 0).sum()), at_700 >= torch.finfo(torch.float32).tiny)
"""


@pytest.mark.parametrize("flush", [True, False])
def test_flushed_denormals_are_zero_on_every_intra_op_thread_and_in_adams_moments(flush):
    """Adam's first moment of a weight whose gradient stays zero decays into the denormals
    after ~800 steps, where the CPU computes slowly; flushed, it is zero on both threads."""
    argv = [sys.executable, "-c", DENORMALS, "flush" if flush else "default"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=120)
    if done.returncode == 3:
        pytest.skip("this CPU cannot flush denormals (torch.set_flush_denormal: x86 with SSE3)")
    assert done.returncode == 0, done.stderr
    flushed, zero_moments, normal_kept = done.stdout.split()
    everything = str(1 << 20) if flush else "0"
    assert (flushed, zero_moments, normal_kept) == (everything, everything, "True")


@pytest.mark.parametrize("script", ["train", "predict", "get_miou"])
def test_each_script_flushes_denormals_before_anything_else(script, monkeypatch):
    module = importlib.import_module(script)
    calls = []
    monkeypatch.setattr(module, "flush_denormals", lambda: calls.append(1) or True)
    monkeypatch.setattr(module, "backend_settings", None)  # never reached: --help exits first
    with pytest.raises(SystemExit):
        module.main(["--help"])
    assert calls == [1]


def test_deterministic_replaces_a_nondeterministic_cublas_workspace(monkeypatch, capsys):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":0:0")
    with backend_settings(deterministic=True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.are_deterministic_algorithms_enabled()
    assert (
        "CUBLAS_WORKSPACE_CONFIG=:0:0 is not deterministic; using :4096:8"
        in capsys.readouterr().out
    )
    assert not torch.are_deterministic_algorithms_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # deterministic too: kept
    with backend_settings(deterministic=True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_the_interpolation_matrices_are_built_once_per_size_dtype_and_device():
    interpolation_matrix.cache_clear()
    x = torch.rand(1, 2, 5, 7, requires_grad=True)
    for _ in range(3):  # three training steps
        _DeterministicBilinear.apply(x, (10, 14), True).sum().backward()
    info = interpolation_matrix.cache_info()
    assert (info.misses, info.hits) == (2, 4)  # rows and columns, built in the first step only


def test_the_in_training_miou_runs_weights_and_inputs_in_one_layout(data_root, monkeypatch):
    monkeypatch.setattr(epochs, "prefers_channels_last", lambda device: True)
    seen = []
    real_forward = Unet.forward

    def spy(self, x):
        seen.append((self, x.is_contiguous(memory_format=CHANNELS_LAST),
                     self.final.weight.is_contiguous(memory_format=CHANNELS_LAST)))  # fmt: skip
        return real_forward(self, x)

    monkeypatch.setattr(Unet, "forward", spy)
    from utils.settings.recipes import resolve_config

    config = resolve_config({"dataset_path": str(data_root), "num_classes": 4,
                             "input_shape": [32, 32]})  # fmt: skip
    _, val_set = build_data(config.data, seed=0, say=lambda *a: None)
    model = Unet(num_classes=4)  # trained in NCHW
    epochs.evaluate_miou(model, val_set, Runtime(torch.device("cpu"), "fp32", False))
    assert seen and all(copy is not model and x_cl and w_cl for copy, x_cl, w_cl in seen)
    assert model.final.weight.is_contiguous()  # the training model is left as it was
    seen.clear()
    epochs.evaluate_miou(model, val_set, Runtime(torch.device("cpu"), "fp32", True))
    assert seen and all(copy is model for copy, _, _ in seen)  # the same layout: no copy


def test_the_predictor_makes_its_gpu_the_current_device(tmp_path, monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    use_device(torch.device("cuda", 1))
    use_device(torch.device("cpu"))
    assert current == [torch.device("cuda", 1)]
    used = []
    monkeypatch.setattr(unet, "use_device", used.append)
    weights = save_random_weights(tmp_path / "w.pth", num_classes=3)
    unet.Unet(model_path=str(weights), num_classes=3, input_shape=[32, 32], device="cpu")
    assert used == [torch.device("cpu")]


def test_nccl_binds_each_rank_to_its_gpu_when_the_group_starts(monkeypatch):
    """``device_id``: NCCL knows the rank's GPU at once instead of guessing at the first
    barrier (and gloo, on the CPU, takes none)."""
    from utils import distributed

    calls = []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: calls.append(("set", device)))
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group",
                        lambda backend, **kw: calls.append((backend, kw)))  # fmt: skip
    for name, value in (("RANK", "3"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "1")):
        monkeypatch.setenv(name, value)
    info = distributed.init_distributed("cuda")
    assert (info.rank, info.world_size, info.local_rank, info.enabled) == (3, 4, 1, True)
    gpu = torch.device("cuda", 1)
    assert calls == [("set", gpu), ("nccl", {"device_id": gpu})]
    calls.clear()
    distributed.init_distributed("cpu")
    assert calls == [("gloo", {})]


@pytest.mark.slow
def test_the_gpu_check_and_make_test_gpu_stop_with_a_sentence_without_a_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    env = {**os.environ, "PYTHON": sys.executable}
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    said = result.stderr + result.stdout
    assert result.returncode == 2 and "Traceback" not in said
    assert "gpu_check: torch sees no CUDA GPU here (torch " in said
    assert f"built for CUDA {torch.version.cuda}; driver: " in said and "torch says: " in said
    # a .venv brought from another machine: its python is a link to nowhere
    dead = tmp_path / "venv"
    (dead / "bin").mkdir(parents=True)
    (dead / "bin/python").symlink_to(tmp_path / "gone/python")
    for python, expected in ((sys.executable, "make test-gpu: torch sees no CUDA GPU here"),
                             (sys._base_executable, "imports torch; run make venv")):  # fmt: skip
        if (
            python == sys._base_executable
            and "torch"
            in subprocess.run(
                [python, "-c", "import torch; print('torch')"], capture_output=True, text=True
            ).stdout
        ):
            continue  # this machine's own python has torch: nothing to refuse
        result = subprocess.run(["make", "-s", "test-gpu", f"VENV={dead}", f"PYTHON={python}"],
                                cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode != 0 and expected in result.stderr, result.stderr
        assert "No such file or directory" not in result.stderr


@pytest.mark.slow
def test_the_gpu_check_rehearses_every_step_on_the_cpu_and_skips_isbi_without_data(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "DEVICE": "cpu", "OUT": str(tmp_path / "out"),
           "DATA": str(tmp_path / "no_data"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    result = subprocess.run(["bash", "benchmarks/gpu_check.sh"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:]
    table = result.stdout.split("== summary")[1]
    for name in ("cuda_tests", "train_speed", "predict_speed", "counting"):
        assert re.search(rf"^{name} +pass +\d+ ", table, re.MULTILINE), table
    assert re.search(r"^isbi_train +skipped +0 +DATA=.*no_data holds no isbi2012_cells", table,
                     re.MULTILINE), table  # fmt: skip
    assert "done in" in result.stdout and "/dev/shm" in result.stdout


BLOCKER = """
import sys

BLOCKED = {"yaml", "tensorboard", "matplotlib", "onnx", "onnxruntime", "torchvision"}


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)


sys.meta_path.insert(0, Blocker())
"""


@pytest.mark.slow
def test_every_cuda_test_is_collected_with_only_the_gpu_checks_packages(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "--collect-only", "-q",
               "-p", "no:cacheprovider"]  # fmt: skip
    counts = []
    for extra_path in ([], [str(tmp_path)]):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*extra_path, str(ROOT)])}
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                timeout=300)  # fmt: skip
        assert result.returncode == 0, result.stdout[-3000:]
        counts.append(len([line for line in result.stdout.splitlines() if "::" in line]))
    assert counts[0] >= 10 and counts[1] == counts[0], counts
