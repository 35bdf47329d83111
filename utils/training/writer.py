"""Writing a run's files behind its training steps, durably.

At an epoch's end the trainer copies what it will save into host buffers (a snapshot; the
next step would change the tensors themselves) and hands the writing to a background thread,
as ``torch.distributed.checkpoint.async_save`` and Lightning's ``AsyncCheckpointIO`` do. One
epoch's files are written at a time, in order. The thread runs at the lowest CPU priority
(Linux): on a CPU whose cores the step keeps busy, it then takes the moments they are idle
instead of stalling the step's threads. Two sets of buffers are used in turn, so an epoch's
end waits only for the files of the epoch before last: the writer has two epochs for them. A
write that fails stops the run (the main thread is interrupted) with one sentence; the end of
the run, Ctrl-C, SIGTERM and errors wait for the writes in flight.

Every file is written to ``<name>.tmp``, flushed and fsynced, renamed over the final name, and
its folder fsynced, as SQLite and etcd do: a crash or a power cut leaves the previous file
whole, and a failed write removes its ``.tmp``.
"""

from __future__ import annotations

import _thread
import contextlib
import errno
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from utils.errors import UserError
from utils.training.stopping import signals_deferred

#: The CPU priority of the writing thread: the lowest, so the step's threads always come first.
WRITER_NICENESS = 19


class WriteError(UserError):
    """A file of the run could not be written (a full disk, a read-only folder...)."""


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the system allows opening a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_name(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def write_durably(path: str | Path, write: Callable[[Path], Any], needed: int = 0) -> Path:
    """Call ``write(tmp)`` to write ``<path>.tmp``, fsync it, rename it to ``path``, fsync the
    folder. ``needed`` (bytes, when known) is checked against the free space first.

    Any failure removes the ``.tmp`` and raises a :class:`WriteError` naming the file.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        if needed and shutil.disk_usage(path.parent).free < needed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(error, OSError):
            raise WriteError(write_failure(error, path, needed)) from None
        if isinstance(error, RuntimeError) and _torch_write_failed(error):
            raise WriteError(write_failure(_os_error(path), path, needed)) from None
        raise
    fsync_folder(path.parent)
    return path


def _torch_write_failed(error: RuntimeError) -> bool:
    """torch.save's C++ writer reports a failed write as a RuntimeError without an errno."""
    text = str(error)
    return "unexpected pos" in text or "failed writing" in text or "cannot be opened" in text


def _os_error(path: Path) -> OSError:
    """The likeliest OSError behind a write to ``path`` that failed without saying why."""
    folder = path.parent
    if not os.access(folder, os.W_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES))
    if shutil.disk_usage(folder).free < 2**20:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return OSError(errno.EIO, os.strerror(errno.EIO))


def write_text_durably(path: str | Path, text: str) -> Path:
    data = text.encode()
    return write_durably(path, lambda tmp: tmp.write_bytes(data))


@contextlib.contextmanager
def _no_zip_crc() -> Iterator[None]:
    """torch.save without its zip records' CRC-32, which torch.load never checks and which costs
    as much as the write itself; the files carry a checksum of their tensors instead."""
    previous = torch.serialization.get_crc32_options()
    torch.serialization.set_crc32_options(False)
    try:
        yield
    finally:
        torch.serialization.set_crc32_options(previous)


def tensor_bytes(value: Any) -> int:
    """The bytes of the tensors of a nested structure (dicts, lists, tuples)."""
    if isinstance(value, torch.Tensor):
        return value.nelement() * value.element_size()
    if isinstance(value, dict):
        return sum(tensor_bytes(item) for item in value.values())
    if isinstance(value, list | tuple):
        return sum(tensor_bytes(item) for item in value)
    return 0


def atomic_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` durably (:func:`write_durably`): the previous file stays whole on a crash,
    and a disk without room for it is said before a byte is written."""

    def save(tmp: Path) -> None:
        with open(tmp, "wb"):  # a folder that cannot be written fails here, with its errno
            pass
        with _no_zip_crc():
            torch.save(obj, tmp)

    return write_durably(path, save, needed=tensor_bytes(obj) + 2**20)


def replace_with_link(source: Path, target: Path) -> None:
    """``target`` becomes the same file as ``source``: a hard link (nothing written twice), or a
    copy where the filesystem has none, made beside it and renamed over it, so the other names
    of the target's old contents keep them."""
    tmp = temporary_name(target)
    try:
        tmp.unlink(missing_ok=True)
        try:
            os.link(source, tmp)
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EROFS, errno.EDQUOT):
                raise
            shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    except OSError as error:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise WriteError(write_failure(error, target)) from None
    fsync_folder(target.parent)


def _megabytes(count: float) -> str:
    return f"{count / 2**20:,.0f} MB" if count >= 2**20 else f"{count / 2**10:,.0f} KB"


def write_failure(error: OSError, path: Path, needed: int | None = None) -> str:
    """One sentence for an OSError met writing ``path``: what happened, where, and the fix."""
    folder = path.parent
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        size = (
            f" (it needs about {_megabytes(needed)}, {_megabytes(free)} are free)" if needed else ""
        )
        return (
            f"no space left in '{folder}' while writing {path.name}{size}; free some space there "
            "or point --save-dir at another disk"
        )
    if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return (
            f"'{folder}' cannot be written ({error.strerror}) while writing {path.name}; make it "
            "writable or point --save-dir at a folder you can write"
        )
    return f"writing '{path}' failed ({error.strerror or error}); check the disk and the folder"


def check_writable(folder: str | Path, flag: str = "--save-dir") -> Path:
    """Make ``folder`` and write a probe file in it, or one sentence saying why it cannot be:
    before a run starts, not at its first epoch's end."""
    folder = Path(folder)
    probe = folder / f".write-check-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as file:
            file.write(b"ok")
        probe.unlink()
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink()
        reason = error.strerror or str(error)
        raise UserError(
            f"{flag} '{folder}' cannot be written ({reason}); point {flag} at a folder you can "
            "write."
        ) from None
    return folder


def remove_leftovers(folder: str | Path) -> list[Path]:
    """Delete the ``.tmp`` files a killed run (kill -9, a power cut) left in ``folder`` and its
    log folders: no final name was ever given to them."""
    folder = Path(folder)
    found = [*folder.glob("*.tmp"), *folder.glob("loss_*/*.tmp")] if folder.is_dir() else []
    for path in found:
        with contextlib.suppress(OSError):
            path.unlink()
    return found


class HostSnapshot:
    """Copies of the tensors of a nested structure (dicts, lists, tuples), in host buffers that
    are made once and reused at every epoch's end. On CUDA the copies go to pinned memory
    without waiting; :meth:`wait` waits for them (the writer does, not the step)."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}
        self._event = None

    def take(self, value: Any) -> Any:
        """``value`` with every tensor replaced by a host copy of it."""
        self._event = None
        copied = self._copy(value, ())
        if self._event is not None:
            self._event.record()
        return copied

    def wait(self) -> None:
        if self._event is not None:
            self._event.synchronize()

    def _copy(self, value: Any, path: tuple) -> Any:
        if isinstance(value, torch.Tensor):
            return self._tensor(value.detach(), path)
        if isinstance(value, dict):
            return {key: self._copy(item, (*path, key)) for key, item in value.items()}
        if isinstance(value, list | tuple):
            items = [self._copy(item, (*path, i)) for i, item in enumerate(value)]
            return items if isinstance(value, list) else type(value)(items)
        return value

    def _tensor(self, tensor: torch.Tensor, path: tuple) -> torch.Tensor:
        buffer = self._buffers.get(path)
        fits = (
            buffer is not None
            and buffer.shape == tensor.shape
            and buffer.dtype == tensor.dtype
            and buffer.stride() == tensor.stride()
        )
        if not fits:
            pinned = tensor.is_cuda
            buffer = torch.empty_strided(
                tensor.shape, tensor.stride(), dtype=tensor.dtype, pin_memory=pinned
            )
            self._buffers[path] = buffer
        if tensor.is_cuda:
            buffer.copy_(tensor, non_blocking=True)
            if self._event is None:
                self._event = torch.cuda.Event()
        else:
            buffer.copy_(tensor)
        return buffer


class BackgroundWriter:
    """Runs jobs in the background, one at a time and in order, at the lowest CPU priority.

    A job is one or more functions that write different files (an epoch's logs and its
    checkpoint, say), each in its own thread, so that drawing a curve overlaps writing a file;
    a job starts once the one before it is done, so an epoch's files are whole before the next
    epoch's writing starts. Up to ``depth`` jobs are in flight (one writing, the others queued):
    :meth:`submit` returns at once while there is room and otherwise waits for the oldest. A job
    that fails interrupts the main thread, so the run stops at once instead of at the next
    epoch's end; the jobs after it are dropped, and every later wait raises the same failure.
    :meth:`close` waits for them all.
    """

    def __init__(self, niceness: int = WRITER_NICENESS, depth: int = 1):
        self.niceness, self.depth = niceness, depth
        self._jobs: list[threading.Thread] = []  # oldest first, each running its own job
        self._error: BaseException | None = None
        self._waiting = False

    @property
    def failed(self) -> bool:
        return self._error is not None

    def submit(self, *parts: Callable[[], None]) -> None:
        """Queue the job made of ``parts``: it starts once the jobs before it are done. A Ctrl-C
        while it waits for room is raised once the job is queued, so its files are written."""
        interrupted = self._join(self.depth - 1)
        if self._error is not None:
            raise self._error
        before = self._jobs[-1] if self._jobs else None
        job = threading.Thread(target=self._run_job, args=(before, parts), name="writer")
        with signals_deferred():  # a handler raising in start() left a thread none waits for
            job.start()
            self._jobs.append(job)
        if interrupted is not None:
            raise interrupted

    def wait(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` jobs are in flight (the newest); re-raise a failure. A
        Ctrl-C or a stop signal meanwhile is raised once they are done: the run stops with its
        files whole."""
        interrupted = self._join(keep)
        if self._error is not None:  # kept: a failed writer fails every later wait too
            raise self._error
        if interrupted is not None:
            raise interrupted

    def close(self) -> None:
        """Wait for every job, as the run ends: a Ctrl-C meanwhile (a second one, on the way
        out) is the same as the first, and the files being written are finished first."""
        self._join(0)
        if self._error is not None:
            raise self._error

    def _join(self, keep: int) -> KeyboardInterrupt | None:
        interrupted = None
        self._waiting = True
        try:
            while len(self._jobs) > keep:
                try:
                    self._jobs[0].join()
                except KeyboardInterrupt as stop:  # StopSignal too
                    interrupted = interrupted or stop
                    continue
                self._jobs.pop(0)
        finally:
            self._waiting = False
        return interrupted

    def _run_job(self, before: threading.Thread | None, parts: tuple) -> None:
        if before is not None:
            before.join()
        if self._error is not None:  # a job after a failed one writes nothing
            return
        beside = [threading.Thread(target=self._run, args=(part,)) for part in parts[1:]]
        for thread in beside:
            thread.start()
        self._run(parts[0])
        for thread in beside:
            thread.join()

    def _run(self, part: Callable[[], None]) -> None:
        if self.niceness and hasattr(os, "setpriority"):
            with contextlib.suppress(OSError):  # this thread only (Linux); elsewhere as it is
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), self.niceness)
        try:
            part()
        except BaseException as error:  # raised again in the main thread
            if self._error is None:
                self._error = error
            if not self._waiting:
                _thread.interrupt_main()
