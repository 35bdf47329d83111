"""Video for the predictor: frames decoded in a background thread while the network runs, and
the segmented video written as it comes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator

import cv2
from PIL import Image

from utils.inference.inputs import Sample, collate_predictions, letterbox_input


def read_frames(capture, input_shape, batch_size: int) -> Iterator[tuple]:
    """Batches of letterboxed video frames, decoded by a background thread while the network
    runs on the previous batch (OpenCV and Pillow release the GIL while they work)."""
    batches: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                batches.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        batch, index = [], 0
        try:
            while not stop.is_set():
                ok, frame = capture.read()
                if not ok:
                    break
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                data, placement = letterbox_input(Image.fromarray(rgb), input_shape)
                batch.append((data, Sample(index, placement, image=rgb)))
                index += 1
                if len(batch) == batch_size and not put(collate_predictions(batch)):
                    return
                batch = [] if len(batch) == batch_size else batch
            if batch:
                put(collate_predictions(batch))
        except Exception as error:  # handed to the reader, which raises it: nobody waits forever
            put(error)
        put(None)

    thread = threading.Thread(target=decode, daemon=True)
    thread.start()
    try:
        while (item := batches.get()) is not None:
            if isinstance(item, Exception):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


class VideoFile:
    """The segmented video, XVID, opened at the first frame (it gives the size); nothing without
    a ``path``."""

    def __init__(self, path: str, fps: float):
        self.path, self.fps, self.writer = path, fps, None

    def write(self, frame) -> None:
        if not self.path:
            return
        if self.writer is None:
            height, width = frame.shape[:2]
            fourcc = cv2.VideoWriter_fourcc(*"XVID")
            self.writer = cv2.VideoWriter(self.path, fourcc, self.fps, (width, height))
        self.writer.write(frame)

    def release(self) -> None:
        if self.writer is not None:
            self.writer.release()
