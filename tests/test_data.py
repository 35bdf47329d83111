"""The data layer: letterbox, augmentation, per-sample randomness, data checks, speed-ups."""

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from oracle.original import ref_get_random_data, ref_letterbox
from tests.conftest import shared_data, write_voc_pair
from utils.data.augment import AUGMENTATIONS, random_transform
from utils.data.datasets import (
    Loaders,
    UnetDataset,
    check_split_size,
    read_split,
    unet_dataset_collate,
)
from utils.device import Runtime
from utils.errors import UserError
from utils.images import letterbox
from utils.inference.pipeline import InferencePipeline


def test_letterbox_values_on_a_hand_checkable_image():
    image = Image.new("RGB", (4, 2), (200, 10, 10))
    label = Image.fromarray(np.array([[1, 1, 2, 2], [1, 1, 2, 2]], dtype=np.uint8))
    out, out_label, (nw, nh) = letterbox(image, (8, 8), label)
    assert (nw, nh) == (8, 4)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert (out[:2] == 128).all() and (out[6:] == 128).all()  # gray bars above and below
    assert (out[2:6] == (200, 10, 10)).all()
    assert (out_label[:2] == 0).all() and (out_label[6:] == 0).all()
    assert (out_label[2:6, :4] == 1).all() and (out_label[2:6, 4:] == 2).all()


def test_letterbox_centres_with_floor_offsets():
    out, _, (nw, nh) = letterbox(Image.new("RGB", (2, 8), (0, 0, 0)), (4, 8))
    assert (nw, nh) == (1, 4)  # scale min(8 / 2, 4 / 8) = 0.5
    assert (out[:, 3] == 0).all()  # x offset (8 - 1) // 2 = 3
    assert (out[:, :3] == 128).all() and (out[:, 4:] == 128).all()


def test_letterbox_is_pixel_identical_to_the_reference(voc_root):
    for name in ("0000", "0003"):
        image = Image.open(voc_root / f"VOC2007/JPEGImages/{name}.jpg")
        label = Image.open(voc_root / f"VOC2007/SegmentationClass/{name}.png")
        ours, ours_label, _ = letterbox(image, (64, 96), Image.fromarray(np.array(label)))
        ref, ref_label = ref_letterbox(image, label, (64, 96))
        assert np.array_equal(ours, np.array(ref))
        assert np.array_equal(ours_label, np.array(ref_label))


def test_training_transform_follows_the_reference_draw_for_draw(voc_root):
    image = Image.open(voc_root / "VOC2007/JPEGImages/0001.jpg").convert("RGB")
    label = Image.fromarray(np.array(Image.open(voc_root / "VOC2007/SegmentationClass/0001.png")))
    for seed in range(20):
        ours, ours_label = random_transform(image, label, (64, 64), np.random.default_rng(seed))
        ref, ref_label = ref_get_random_data(image, label, (64, 64), np.random.default_rng(seed))
        # the box resize may round a label pixel exactly on a boundary the other way
        assert np.mean(ours_label != np.array(ref_label)) < 0.01
        assert np.abs(ours.astype(int) - ref.astype(int)).mean() < 1.0


def test_image_and_label_stay_aligned_under_augmentation():
    image = np.zeros((48, 64, 3), np.uint8)
    label = np.zeros((48, 64), np.uint8)
    image[10:30, 20:50] = 255
    label[10:30, 20:50] = 1
    for seed in range(30):
        out, out_label = random_transform(
            Image.fromarray(image), Image.fromarray(label), (64, 64), np.random.default_rng(seed)
        )
        bright = out.mean(axis=2) > 170  # white stays >= 255 * 0.7 under the value jitter
        shape = out_label == 1
        if shape.sum() < 20:
            continue  # placed off the canvas
        iou = (bright & shape).sum() / (bright | shape).sum()
        assert iou > 0.7, f"seed {seed}: IoU {iou:.2f}"  # resampling blurs the edges
        offset = np.argwhere(bright).mean(axis=0) - np.argwhere(shape).mean(axis=0)
        assert np.abs(offset).max() < 1.0, f"seed {seed}: shifted by {offset}"


def test_flip_augmentation_flips_image_and_label_together_and_nothing_else(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:6, 3:9] = 200  # an asymmetric bright block, labelled 1
    label = np.zeros((32, 32), np.uint8)
    label[2:6, 3:9] = 1
    write_voc_pair(tmp_path, "a", image, label)
    plain = UnetDataset(["a"], (32, 32), 2, False, tmp_path)[0][0]
    seen = set()
    for epoch in range(12):
        dataset = UnetDataset(["a"], (32, 32), 2, True, tmp_path, augment="flip", seed=1)
        dataset.set_epoch(epoch)
        out, out_label = dataset[0]
        flips = [dims for dims in ((), (2,), (1,), (1, 2)) if torch.equal(out, plain.flip(dims))]
        assert len(flips) == 1, f"epoch {epoch}: not a flip of the letterboxed image"
        expected = torch.from_numpy(label).flip([d - 1 for d in flips[0]])
        assert torch.equal(out_label, expected)
        seen.add(flips[0])
    assert len(seen) == 4  # both flips, alone and together, and none


def test_d4_augmentation_draws_each_of_the_8_turns_and_mirrors_with_its_label(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[2:6, 3:9] = 200  # an asymmetric block: each of the 8 gives another picture
    label = np.zeros((32, 32), np.uint8)
    label[2:6, 3:9] = 1
    write_voc_pair(tmp_path, "a", image, label)
    plain = UnetDataset(["a"], (32, 32), 2, False, tmp_path)[0][0]
    views = [(turns, mirror) for turns in range(4) for mirror in (False, True)]

    def view(x, turns, mirror):  # x: (..., H, W)
        x = torch.rot90(x, turns, dims=(-2, -1))
        return x.flip(-1) if mirror else x

    seen = set()
    for epoch in range(64):
        dataset = UnetDataset(["a"], (32, 32), 2, True, tmp_path, augment="d4", seed=2)
        dataset.set_epoch(epoch)
        out, out_label = dataset[0]
        found = [v for v in views if torch.equal(out, view(plain, *v))]
        assert len(found) == 1, f"epoch {epoch}: not a turn or mirror of the image"
        assert torch.equal(out_label, view(torch.from_numpy(label), *found[0]))
        seen.add(found[0])
    assert len(seen) == 8


def test_shapes_augmentation_moves_the_label_with_the_shape_and_never_keeps_its_colour():
    """A shape of one colour on another: wherever the label says shape (its inside: resampling
    blurs the edges) the image is one colour, another than the background's, and that colour
    changes from draw to draw, so a model cannot learn the class from it."""
    image = np.zeros((60, 80, 3), np.uint8)
    image[...] = (20, 120, 40)
    label = np.zeros((60, 80), np.uint8)
    image[15:45, 20:50], label[15:45, 20:50] = (200, 30, 90), 1
    colours, sizes = set(), set()
    for seed in range(24):
        rng = np.random.default_rng(seed)
        out, out_label = AUGMENTATIONS["shapes"].apply(Image.fromarray(image), label, (48, 64), rng)
        assert out.shape == (48, 64, 3) and out_label.shape == (48, 64) and out.dtype == np.uint8
        inside = cv2.erode((out_label == 1).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        outside = cv2.erode((out_label == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        shape = out[inside]
        assert inside.sum() > 20 and (shape == shape[0]).all(), f"seed {seed}"
        assert not (out[outside] == shape[0]).all(axis=1).any(), f"seed {seed}"
        colours.add(tuple(shape[0]))
        sizes.add(int((out_label == 1).sum()))
    assert len(colours) > 6 and len(sizes) > 6  # recoloured and zoomed


def test_augmentation_none_is_the_letterbox_and_unknown_names_are_refused(voc_root):
    lines = read_split(voc_root, "train")
    train_set = UnetDataset(lines, (64, 64), 4, True, voc_root, augment="none")
    val_set = UnetDataset(lines, (64, 64), 4, False, voc_root)
    assert all(torch.equal(a, b) for a, b in zip(train_set[0], val_set[0], strict=True))
    with pytest.raises(UserError, match="unknown augmentation 'rotate'; use one of reference"):
        UnetDataset(lines, (64, 64), 4, True, voc_root, augment="rotate")


def test_augmentation_differs_across_epochs_and_repeats_with_the_same_seed(voc_root):
    lines = read_split(voc_root, "train")
    a = UnetDataset(lines, (64, 64), 4, True, voc_root, seed=3)
    b = UnetDataset(lines, (64, 64), 4, True, voc_root, seed=3)
    first = a[0][0]
    assert torch.equal(first, b[0][0])
    a.set_epoch(1)
    assert not torch.equal(first, a[0][0])
    c = UnetDataset(lines, (64, 64), 4, True, voc_root, seed=4)
    assert not torch.equal(first, c[0][0])


def test_every_worker_draws_different_augmentation_and_workers_do_not_change_it(voc_root):
    lines = ["0000"] * 4  # the same image four times: only the randomness differs
    dataset = UnetDataset(lines, (64, 64), 4, True, voc_root, seed=0)
    batches = {}
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=1, num_workers=workers)
        batches[workers] = [images for images, _ in loader]
    samples = batches[2]
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(samples[i], samples[j])
    assert all(torch.equal(x, y) for x, y in zip(batches[0], batches[2], strict=True))


class OpenCVThreads(UnetDataset):
    """Samples whose label holds the number of OpenCV threads where they were made."""

    def __getitem__(self, item):
        image, label = super().__getitem__(item)
        return image, torch.full_like(label, cv2.getNumThreads())


def read_threads(path) -> tuple[Image.Image, int]:
    return Image.new("RGB", (8, 8)), cv2.getNumThreads()


def test_loader_workers_send_uint8_labels_and_run_opencv_on_one_thread(voc_root, request):
    """Labels cross from the workers as uint8 (a batch of 8 at 512x512 is 2 MB, not 16 MB of
    int64 in a 64 MB Docker /dev/shm), and each worker runs one OpenCV thread, set before the
    fork: the main process's pool has run (a large resize), where setting it in a worker would
    hang."""
    threads = cv2.getNumThreads()
    request.addfinalizer(lambda: cv2.setNumThreads(threads))
    cv2.setNumThreads(2)
    cv2.resize(np.zeros((1000, 1000, 3), np.float32), (1500, 1500))
    names = read_split(voc_root, "train")
    dataset = OpenCVThreads(names, (64, 96), 4, True, voc_root)
    loaders = Loaders(dataset, None, batch_size=2, num_workers=2)
    loaders.set_epoch(0)
    images, labels = next(iter(loaders.train))
    assert labels.dtype == torch.uint8 and labels.shape == (2, 64, 96)
    assert labels.unique().tolist() == [1]  # set in the workers
    runtime = Runtime(torch.device("cpu"))
    assert runtime.labels(labels).dtype == torch.int64  # made long on the device, for the loss
    pipeline = InferencePipeline(lambda x: x, (8, 8), runtime)
    seen = [sample.extra for sample, _ in pipeline.predict([0, 1], read_threads, num_workers=2)]
    assert seen == [1, 1]


def test_samples_and_batches_have_the_documented_types(voc_root):
    dataset = UnetDataset(read_split(voc_root, "val"), (64, 96), 4, False, voc_root)
    image, label = dataset[0]
    assert image.shape == (3, 64, 96) and image.dtype == torch.uint8
    assert label.shape == (64, 96) and label.dtype == torch.uint8
    assert set(label.unique().tolist()) <= {0, 1, 2, 3, 4}  # the 255 border became 4
    assert (label == 4).any()
    images, labels = unet_dataset_collate([dataset[0], dataset[1]])
    assert images.shape == (2, 3, 64, 96) and labels.shape == (2, 64, 96)
    assert torch.equal(images[0], image)


def test_medical_layout_gives_class_1_exactly_where_the_label_is_dark(tmp_path):
    root = tmp_path / "cells"
    for folder in ("Images", "Labels"):
        (root / folder).mkdir(parents=True)
    raw = np.tile(np.array([0, 100, 127, 128, 200, 255], np.uint8), (32, 6))[:, :32]
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(root / "Images/a.png")
    Image.fromarray(raw).save(root / "Labels/a.png")
    dataset = UnetDataset(["a"], (32, 32), 2, False, root, dataset_format="medical")
    image, label = dataset[0]
    assert torch.equal(label, torch.from_numpy((raw <= 127.5).astype(np.uint8)))
    assert image.shape == (3, 32, 32)  # grayscale converted to RGB


def test_isbi_cells_load_in_the_medical_layout():
    root = shared_data("isbi2012_cells")
    lines = read_split(root, "train", "medical")
    assert len(lines) == 30
    dataset = UnetDataset(lines[:2], (256, 256), 2, False, root, dataset_format="medical")
    _, label = dataset[0]
    raw = np.array(Image.open(root / "Labels" / f"{lines[0]}.png").resize((256, 256), 0))
    assert torch.equal(label, torch.from_numpy((raw <= 127.5).astype(np.uint8)))


@pytest.fixture
def tiny_root(tmp_path):
    root = tmp_path / "VOCdevkit"
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 1
    for name in ("a", "b"):
        write_voc_pair(root, name, np.full((16, 16, 3), 60, np.uint8), label)
    return root


def test_binary_0_255_labels_are_refused_with_the_fix(tiny_root):
    label = np.zeros((16, 16), np.uint8)
    label[4:12, 4:12] = 255
    for name in ("a", "b"):
        Image.fromarray(label).save(tiny_root / f"VOC2007/SegmentationClass/{name}.png")
    with pytest.raises(UserError, match=r"hold only 0 and 255.*--fix-binary"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_rgb_colour_label_is_refused(tiny_root):
    Image.new("RGB", (16, 16), (128, 0, 0)).save(tiny_root / "VOC2007/SegmentationClass/b.png")
    with pytest.raises(UserError, match=r"b\.png' is a colour image \(mode RGB\).*class indices"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_label_of_another_size_is_refused(tiny_root):
    Image.new("L", (15, 16)).save(tiny_root / "VOC2007/SegmentationClass/b.png")
    with pytest.raises(UserError, match=r"b\.png is 15x16 but image .*b\.jpg is 16x16"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_missing_image_is_refused_with_a_count(tiny_root):
    with pytest.raises(UserError, match=r"2 image file\(s\) listed .* missing.*c\.jpg"):
        UnetDataset(["a", "c", "d"], (16, 16), 2, True, tiny_root)


def test_missing_label_is_refused(tiny_root):
    (tiny_root / "VOC2007/SegmentationClass/a.png").unlink()
    with pytest.raises(UserError, match=r"1 label file\(s\) .* missing.*a\.png"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_jpeg_label_is_refused_with_the_reason(tiny_root):
    path = tiny_root / "VOC2007/SegmentationClass/a.png"
    path.rename(path.with_suffix(".jpg"))
    with pytest.raises(UserError, match=r"found a\.jpg, but labels must be \.png"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_png_images_are_accepted(tiny_root):
    jpg = tiny_root / "VOC2007/JPEGImages/a.jpg"
    Image.open(jpg).save(jpg.with_suffix(".png"))
    jpg.unlink()
    dataset = UnetDataset(["a", "b"], (16, 16), 2, False, tiny_root)
    assert dataset.image_paths[0].name == "a.png"


def test_truncated_image_is_refused(tiny_root):
    jpg = tiny_root / "VOC2007/JPEGImages/b.jpg"
    jpg.write_bytes(jpg.read_bytes()[:200])
    with pytest.raises(UserError, match=r"b\.jpg' cannot be read"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_class_beyond_num_classes_is_refused(tiny_root):
    label = np.zeros((16, 16), np.uint8)
    label[0, 0] = 7
    Image.fromarray(label).save(tiny_root / "VOC2007/SegmentationClass/a.png")
    with pytest.raises(UserError, match="holds class 7 but num_classes is 2"):
        UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root)


def test_problems_outside_the_checked_sample_surface_when_the_item_loads(tiny_root):
    dataset = UnetDataset(["a", "b"], (16, 16), 2, True, tiny_root, check_sample=1)
    Image.new("L", (8, 8)).save(tiny_root / "VOC2007/SegmentationClass/b.png")
    with pytest.raises(UserError, match=r"b\.png is 8x8"):
        dataset[1]


def test_missing_and_empty_split_files_are_refused(tiny_root):
    with pytest.raises(UserError, match=r"train\.txt' does not exist; .*run voc_annotation\.py"):
        read_split(tiny_root, "train")
    splits = tiny_root / "VOC2007/ImageSets/Segmentation"
    splits.mkdir(parents=True)
    (splits / "val.txt").write_text("\n")
    with pytest.raises(UserError, match=r"val\.txt' lists no images"):
        read_split(tiny_root, "val")


def test_a_split_can_be_a_file_outside_the_data_set(tiny_root, tmp_path):
    ids = tmp_path / "holdout.txt"
    ids.write_text("b\n\na extra columns are ignored\n")
    assert read_split(tiny_root, str(ids)) == ["b", "a"]
    with pytest.raises(
        UserError, match=r"split file 'no/such\.txt' does not exist; check the path"
    ):
        read_split(tiny_root, "no/such.txt")


def test_split_smaller_than_the_batch_names_the_split():
    check_split_size(4, 4, "train")
    with pytest.raises(UserError, match="the val split has 3 images, fewer than the batch size 4"):
        check_split_size(3, 4, "val")


def test_unreadable_medical_label_is_refused(tmp_path):
    root = tmp_path / "cells"
    for folder in ("Images", "Labels"):
        (root / folder).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "Images/a.png")
    (root / "Labels/a.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"label file .*a\.png' cannot be read"):
        UnetDataset(["a"], (8, 8), 2, False, root, dataset_format="medical")
