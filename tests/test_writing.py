"""A run's files written behind its steps: snapshots, the background writer, durable writes,
checksums, the time split, and what start-up imports."""

import _thread
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import train
from tests.conftest import base_argv
from utils.errors import UserError
from utils.training.checkpoint import read_state_dict, read_training_checkpoint
from utils.training.log import savgol_filter
from utils.training.writer import (
    BackgroundWriter,
    HostSnapshot,
    WriteError,
    atomic_save,
    write_durably,
)

ROOT = Path(__file__).resolve().parents[1]


def test_a_snapshot_keeps_its_values_when_the_tensors_change_and_reuses_its_buffers():
    weight = torch.arange(24.0).reshape(1, 2, 3, 4).contiguous(memory_format=torch.channels_last)
    state = {"model": {"w": weight}, "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}}}
    snapshot = HostSnapshot()
    first = snapshot.take(state)
    weight.add_(100)  # the next step
    assert torch.equal(first["model"]["w"], torch.arange(24.0).reshape(1, 2, 3, 4))
    assert first["model"]["w"].stride() == weight.stride()  # the layout is kept, as saved today
    second = snapshot.take(state)
    assert second["model"]["w"].data_ptr() == first["model"]["w"].data_ptr()
    assert torch.equal(second["model"]["w"], weight)


def test_the_writer_runs_one_job_at_a_time_in_order():
    done, writer = [], BackgroundWriter()
    started = threading.Event()

    def slow():
        started.set()
        time.sleep(0.2)
        done.append("first")

    writer.submit(slow)
    started.wait(5)
    assert done == []  # submit returned while the job runs
    writer.submit(lambda: done.append("second"), lambda: done.append("beside it"))
    writer.close()
    assert done[0] == "first" and sorted(done[1:]) == ["beside it", "second"]


def test_a_writer_two_deep_queues_a_job_behind_the_one_writing_and_keeps_their_order():
    """The trainer's writer: an epoch's end waits only for the files of the epoch before last."""
    done, writer, release = [], BackgroundWriter(depth=2), threading.Event()
    writer.submit(lambda: (release.wait(5), done.append("first")))
    start = time.perf_counter()
    writer.submit(lambda: done.append("second"))  # queued: returns while the first is writing
    assert time.perf_counter() - start < 1 and done == []
    release.set()
    writer.submit(lambda: done.append("third"))  # waits for the first only
    writer.close()
    assert done == ["first", "second", "third"]


def test_a_job_behind_a_failed_one_writes_nothing():
    done, writer, release = [], BackgroundWriter(depth=2, niceness=0), threading.Event()

    def fail():
        release.wait(5)
        raise WriteError("no space left in 'x' while writing y.pth")

    writer.submit(fail)
    writer.submit(lambda: done.append("after"))
    threading.Timer(0.3, release.set).start()  # fails while close() waits: no interruption
    with pytest.raises(WriteError, match="no space left"):
        writer.close()
    assert done == []


def test_a_signal_while_a_job_starts_leaves_every_thread_waited_for(monkeypatch):
    """SIGTERM arriving inside ``Thread.start`` once raised there, before the thread counted
    as started, and the wait at the run's end failed with "cannot join thread before it is
    started" instead of the resume line (seen once in a full test run)."""

    class StopError(Exception):
        pass

    def stop(_signum, _frame):
        raise StopError

    real_start, done = threading.Thread.start, []

    def start_during_a_signal(thread):
        if threading.current_thread() is threading.main_thread():  # not the writer's own
            # as if it arrived now; a real signal in-process could crash pytest on AMX
            _thread.interrupt_main(signal.SIGTERM)
        real_start(thread)

    previous = signal.signal(signal.SIGTERM, stop)
    monkeypatch.setattr(threading.Thread, "start", start_during_a_signal)
    writer = BackgroundWriter()
    try:
        with pytest.raises(StopError):  # delivered once both threads started, not inside start()
            writer.submit(lambda: done.append(1), lambda: done.append(2))
    finally:
        signal.signal(signal.SIGTERM, previous)
        monkeypatch.undo()
    writer.close()
    assert sorted(done) == [1, 2]


def test_ctrl_c_during_a_wait_is_raised_once_the_files_are_whole_but_not_on_the_way_out():
    """A SIGTERM that reached training while an epoch's end waited for the writer was once
    swallowed there, and the run went on to its last epoch (seen in a full test run)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        for finish, raises in (("wait", True), ("close", False)):
            done, writer, release = [], BackgroundWriter(niceness=0), threading.Event()
            writer.submit(lambda: (release.wait(5), done.append(1)))  # noqa: B023

            def interrupt_then_release():
                _thread.interrupt_main()  # Ctrl-C, while the main thread waits
                time.sleep(0.2)
                release.set()  # noqa: B023

            threading.Timer(0.2, interrupt_then_release).start()
            if raises:
                with pytest.raises(KeyboardInterrupt):
                    getattr(writer, finish)()
            else:
                getattr(writer, finish)()
            assert done == [1], finish  # the job finished first, either way
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_failed_write_interrupts_the_main_thread_and_keeps_failing():
    """The interruption is a simulated Ctrl-C, which Python delivers only while SIGINT has its
    own handler (an earlier test, or a shell starting a job in the background, may leave it
    ignored: the failure then comes at the next wait, as the last lines check)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    writer = BackgroundWriter()

    def fail():
        raise WriteError("no space left in 'x' while writing y.pth")

    try:
        with pytest.raises(KeyboardInterrupt):  # as Ctrl-C: the training loop stops at once
            writer.submit(fail)
            time.sleep(5)
    finally:
        signal.signal(signal.SIGINT, previous)
    for _ in range(2):
        with pytest.raises(WriteError, match="no space left"):
            writer.close()


def test_a_durable_write_that_fails_removes_its_temporary_file(tmp_path):
    path = tmp_path / "weights.pth"
    atomic_save({"a": torch.ones(3)}, path)

    def half_then_crash(tmp: Path) -> None:
        tmp.write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match=r"no space left in '.*' while writing weights\.pth"):
        write_durably(path, half_then_crash)
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pth"]
    assert torch.equal(torch.load(path, weights_only=True)["a"], torch.ones(3))


def test_the_smoothed_curve_is_scipys_savgol_filter():
    signal_ = pytest.importorskip("scipy.signal")
    values = list(np.random.default_rng(0).normal(size=40).cumsum())
    for window, count in ((5, 7), (5, 24), (15, 40)):
        expected = signal_.savgol_filter(values[:count], window, 3)
        np.testing.assert_allclose(savgol_filter(values[:count], window, 3), expected, atol=1e-9)


def test_damaged_weights_and_checkpoints_are_named_when_loaded(trained, tmp_path):
    _, logs = trained
    for name in ("last_epoch_weights.pth", "last_epoch_weights.json", "checkpoint_last.pth"):
        (tmp_path / name).write_bytes((logs / name).read_bytes())
    read_state_dict(tmp_path / "last_epoch_weights.pth")  # whole: loads
    for name in ("last_epoch_weights.pth", "checkpoint_last.pth"):
        data = bytearray((tmp_path / name).read_bytes())
        middle = len(data) // 2  # inside the tensors' bytes
        data[middle : middle + 4096] = np.random.default_rng(1).bytes(4096)
        (tmp_path / name).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"last_epoch_weights\.pth' is damaged: .* checksum in"):
        read_state_dict(tmp_path / "last_epoch_weights.pth")
    with pytest.raises(UserError, match=r"--resume '.*checkpoint_last\.pth' is damaged: its"):
        read_training_checkpoint(tmp_path / "checkpoint_last.pth")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(UserError, match=r"'.*empty\.pth' is empty \(0 bytes\)"):
        read_state_dict(tmp_path / "empty.pth")


@pytest.mark.slow
def test_the_run_ends_with_where_its_time_went(data_root, tmp_path, cli):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "2",
                     "--eval-period", "1")  # fmt: skip
    code, out, _ = cli(train.main, argv)
    assert code == 0
    line = next(line for line in out.splitlines() if line.startswith("Time: "))
    parts = ("start-up", "train steps", "waiting for data", "evaluation", "epoch ends",
             "final writes")  # fmt: skip
    seconds = [float(re.search(rf"{part} ([\d.]+) s", line).group(1)) for part in parts]
    total = float(re.match(r"Time: ([\d.]+) s in all", line).group(1))
    assert all(s >= 0 for s in seconds) and seconds[1] > 0 and seconds[3] > 0
    assert sum(seconds) <= total + 0.1
    assert not list(tmp_path.rglob("*.tmp"))


def test_importing_train_loads_no_plotting_logging_or_export_package():
    code = (
        "import sys, train; print(sorted(m for m in ('matplotlib', 'scipy', 'tensorboard', "
        "'onnx', 'onnxruntime', 'torchvision', 'torch._dynamo', 'torch._inductor') "
        "if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


@pytest.mark.slow
def test_a_run_never_imports_torch_dynamo_or_inductor(data_root, tmp_path):
    argv = base_argv(data_root, tmp_path, "--no-freeze-train", "--unfreeze-epoch", "1",
                     "--no-eval-flag")  # fmt: skip
    code = (
        f"import sys, train; train.main({argv!r}); "
        "print('torch._dynamo' in sys.modules, 'torch._inductor' in sys.modules)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "False False"


@pytest.mark.slow
def test_kill_9_while_a_write_is_pending_leaves_the_last_files_whole_and_resumable(
    data_root, tmp_path
):
    """The driver holds epoch 2's checkpoint write open (``HOLD_WRITE``); the run is killed
    then. Epoch 1's files are whole, and the resumed run finishes as the uninterrupted one."""
    argv = base_argv(data_root, tmp_path / "run", "--no-freeze-train", "--unfreeze-epoch", "3",
                     "--no-eval-flag")  # fmt: skip
    marker = tmp_path / "holding"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HOLD_WRITE": f"2:{marker}"}
    driver = [sys.executable, str(ROOT / "tests/train_driver.py")]
    process = subprocess.Popen([*driver, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert marker.exists(), process.stderr.read().decode()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait(30)
    run = tmp_path / "run"
    checkpoint = read_training_checkpoint(run / "checkpoint_last.pth")
    assert checkpoint["epoch"] == 1
    read_state_dict(run / "last_epoch_weights.pth")
    env.pop("HOLD_WRITE")
    resumed = subprocess.run([*driver, "--resume", str(run / "checkpoint_last.pth")], cwd=ROOT,
                             env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert read_training_checkpoint(run / "checkpoint_last.pth")["epoch"] == 3
    assert not list(run.rglob("*.tmp"))  # the killed write's leftovers are gone
