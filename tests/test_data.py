import numpy as np
import pytest
import torch

from catdog.config import DataConfig
from catdog.data import (
    STL10Files,
    augment,
    balanced_subset,
    load_folder,
    load_split,
    load_stl10,
    random_resized_crops,
    read_class_folder,
    read_rgb,
    resolve_kind,
    to_float,
    to_uint8,
)
from catdog.errors import CatdogError
from tests.conftest import write_image_folder

# STL-10 file labels are 1..10: 4 = cat, 6 = dog.
STL_LABELS = {"train": [1, 4, 6, 4, 10, 6, 2], "test": [6, 3, 4, 9, 6]}


def write_stl10(root, splits=("train", "test"), unlabeled=0):
    """Tiny STL-10 binaries: uint8, each image 3x96x96 stored column-major, labels 1..10.

    Image i has its top-left 10x20 block (rows 0-9, columns 0-19) set to value 10*label,
    elsewhere 7, so the test can check orientation after torchvision's transpose."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)

    def images(labels):
        arr = np.full((len(labels), 3, 96, 96), 7, dtype=np.uint8)  # (N, C, row, col)
        for i, lab in enumerate(labels):
            arr[i, :, :10, :20] = 10 * lab
        return arr.transpose(0, 1, 3, 2).copy()  # column-major on disk: (N, C, col, row)

    for split in splits:
        images(STL_LABELS[split]).tofile(folder / f"{split}_X.bin")
        np.array(STL_LABELS[split], dtype=np.uint8).tofile(folder / f"{split}_y.bin")
    if unlabeled:
        images([1] * unlabeled).tofile(folder / "unlabeled_X.bin")
    return root


def test_stl10_keeps_only_cats_and_dogs_with_remapped_labels(tmp_path):
    write_stl10(tmp_path)
    train = load_stl10(tmp_path, "train", 48, download=False)
    assert train.labels.tolist() == [0, 1, 0, 1]  # cat, dog, cat, dog
    assert train.images.shape == (4, 3, 48, 48) and train.images.dtype == torch.uint8
    # Orientation survives the column-major layout: the marked block is top-left, 5x10 at 48 px.
    first = train.images[0, 0]
    assert first[1, 5].item() == 40 and first[1, 30].item() == 7 and first[30, 5].item() == 7
    x = to_float(train.images)
    assert x.min() >= -1 and x.max() <= 1

    test = load_stl10(tmp_path, "test", 48, download=False)
    assert test.labels.tolist() == [1, 0, 1]
    both = load_split(
        DataConfig(dataset="stl10", data_dir=str(tmp_path), download=False), "train+test"
    )
    assert both.labels.tolist() == [0, 1, 0, 1, 1, 0, 1]


def test_stl10_unlabeled_split_has_label_minus_one(tmp_path):
    write_stl10(tmp_path, unlabeled=3)
    data = load_stl10(tmp_path, "unlabeled", 48, download=False)
    assert data.labels.tolist() == [-1, -1, -1]
    mixed = load_stl10(tmp_path, "train+unlabeled", 48, download=False)
    assert mixed.labels.tolist() == [0, 1, 0, 1, -1, -1, -1]


def test_stl10_auto_detection(tmp_path):
    write_stl10(tmp_path)
    assert resolve_kind(DataConfig(data_dir=str(tmp_path))) == "stl10"


def test_stl10_missing_without_download_says_how_to_fix(tmp_path):
    with pytest.raises(CatdogError, match="stl10_binary.tar.gz.*--data-dir"):
        load_stl10(tmp_path, "train", 48, download=False)


def test_stl10_missing_with_no_download_does_not_advise_a_download_flag(tmp_path):
    with pytest.raises(CatdogError, match=r"not found \(no download asked for\)") as caught:
        load_stl10(tmp_path, "train", 48, download=False)
    assert "download=True" not in str(caught.value)


def test_detected_stl10_files_are_read_and_never_downloaded(tmp_path, monkeypatch):
    """auto found stl10_binary/, without the test files: an error, no download attempt."""
    write_stl10(tmp_path, splits=("train",))
    monkeypatch.setattr(STL10Files, "url", "http://127.0.0.1:9/stl10_binary.tar.gz")
    with pytest.raises(CatdogError, match=r"not found \(no download asked for\)"):
        load_split(DataConfig(data_dir=str(tmp_path)), "test")


def test_stl10_download_failure_is_a_clear_error(tmp_path, monkeypatch):
    # A closed local port: torchvision's real download code runs and fails at once, offline.
    monkeypatch.setattr(STL10Files, "url", "http://127.0.0.1:9/stl10_binary.tar.gz")
    with pytest.raises(CatdogError, match="download failed"):
        load_stl10(tmp_path, "train", 48, download=True)
    with pytest.raises(CatdogError, match="download failed"):  # into folders it had to make
        load_stl10(tmp_path / "new" / "data", "train", 48, download=True)
    assert not (tmp_path / "new").exists()  # a failed download leaves no empty folders


def test_stl10_truncated_file_is_a_clear_error(tmp_path):
    write_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CatdogError, match="corrupt or truncated"):
        load_stl10(tmp_path, "train", 48, download=False)


@pytest.mark.parametrize("cut", ["labels", "images at an image boundary", "both emptied"])
def test_stl10_files_cut_short_are_a_clear_error(tmp_path, cut):
    write_stl10(tmp_path)
    folder = tmp_path / "stl10_binary"
    if cut == "labels":
        (folder / "train_y.bin").write_bytes((folder / "train_y.bin").read_bytes()[:5])
    elif cut == "images at an image boundary":
        (folder / "train_X.bin").write_bytes((folder / "train_X.bin").read_bytes()[: 5 * 27648])
    else:
        for name in ("train_X.bin", "train_y.bin"):
            (folder / name).write_bytes(b"")
    with pytest.raises(CatdogError, match="corrupt or truncated"):
        load_stl10(tmp_path, "train", 48, download=False)


def test_stl10_without_its_cats_is_a_clear_error(tmp_path):
    write_stl10(tmp_path)
    labels = tmp_path / "stl10_binary" / "train_y.bin"
    np.array([1, 6, 6, 2, 10, 6, 2], dtype=np.uint8).tofile(labels)  # no 4 (cat)
    with pytest.raises(CatdogError, match="hold no cat images in the train split"):
        load_stl10(tmp_path, "train", 48, download=False)


def test_auto_detection_prefers_stl10_over_other_cat_dog_folders_beside_it(tmp_path):
    write_stl10(tmp_path)
    write_image_folder(tmp_path, {"my_samples": 2})  # e.g. images kept for evaluate --images
    assert resolve_kind(DataConfig(data_dir=str(tmp_path))) == "stl10"
    write_image_folder(tmp_path, {"train": 2})  # the usual layout wins over STL-10
    assert resolve_kind(DataConfig(data_dir=str(tmp_path))) == "folder"


def test_folder_dataset_beside_stl10_files_says_how_to_read_them(tmp_path):
    write_stl10(tmp_path)
    with pytest.raises(CatdogError, match="its stl10_binary/ is read with --dataset stl10"):
        resolve_kind(DataConfig(data_dir=str(tmp_path), dataset="folder"))


def test_folder_with_splits(tiny_data):
    train = load_folder(tiny_data, "train", 16)
    assert train.images.shape == (24, 3, 16, 16)
    assert train.labels.tolist() == [0] * 12 + [1] * 12
    assert resolve_kind(DataConfig(data_dir=str(tiny_data))) == "folder"


def test_flat_folder_splits_are_disjoint(tmp_path):
    write_image_folder(tmp_path, {"all": 20})
    flat = tmp_path / "all"
    train, test = load_folder(flat, "train", 16), load_folder(flat, "test", 16)
    assert len(train) == 36 and len(test) == 4
    train_set = {bytes(img.numpy()) for img in train.images}
    assert not any(bytes(img.numpy()) in train_set for img in test.images)


def test_a_flat_split_without_images_names_the_split_rule(tmp_path):
    write_image_folder(tmp_path, {"all": 1})  # one image per class: the test part takes it
    with pytest.raises(CatdogError, match="'s train part .*every 10th.*cat 1, dog 1"):
        load_folder(tmp_path / "all", "train", 16)


def test_photos_are_read_upright_square_and_16_bit_greyscale_at_its_brightness(tmp_path):
    from PIL import Image

    for name in ("cat", "dog"):
        (tmp_path / name).mkdir()
    # 40 wide, 20 high: red left half, blue right half, stored as if turned (EXIF 6 = rotate
    # 90 degrees clockwise to show): upright, it is 20 wide and 40 high, red on top.
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :20, 0] = 255
    wide[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(wide).save(tmp_path / "cat" / "turned.jpg", exif=exif, quality=95)
    grey16 = np.full((16, 16), 32768, dtype=np.uint16)  # mid-grey in 16 bits
    Image.fromarray(grey16).save(tmp_path / "dog" / "grey16.png")
    data = load_folder(tmp_path, "test", 16)  # flat: the first image of each class is test
    cat = data.images[data.labels == 0][0].int()
    # Upright and centre-cropped: the middle 20x20 of a 20x40 image is the rows 10..29, which
    # straddle the red top and the blue bottom; nothing is squashed.
    assert cat[0, :6].float().mean() > 200 and cat[2, :6].float().mean() < 60  # red top rows
    assert cat[2, -6:].float().mean() > 200 and cat[0, -6:].float().mean() < 60  # blue bottom
    dog = data.images[data.labels == 1][0]
    assert torch.all((dog.int() - 128).abs() <= 1)  # not the white of a clipped 16-bit read
    assert read_rgb(tmp_path / "cat" / "turned.jpg").shape == (20, 20, 3)  # cropped, not squashed
    Image.fromarray(np.full((8, 8), 128, dtype=np.int32)).save(tmp_path / "grey32.tif")
    assert np.all(read_rgb(tmp_path / "grey32.tif") == 128)  # 32-bit holding 8-bit values


def test_unreadable_image_is_skipped_with_its_name(tmp_path):
    write_image_folder(tmp_path, {"train": 3})
    bad = tmp_path / "train" / "cat" / "broken.png"
    bad.write_bytes(b"not a png at all")
    with pytest.warns(UserWarning, match="broken.png"):
        data = load_folder(tmp_path, "train", 16)
    assert len(data) == 6


def test_an_oversized_image_is_skipped_with_its_name(tmp_path, monkeypatch):
    from PIL import Image

    write_image_folder(tmp_path, {"train": 2}, size=16)
    Image.fromarray(np.zeros((48, 48, 3), dtype=np.uint8)).save(tmp_path / "train/cat/huge.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 48x48 is over twice that: an error
    with pytest.warns(UserWarning, match="huge.png"):
        data = load_folder(tmp_path, "train", 16)
    assert len(data) == 4


def test_missing_directory_and_missing_classes(tmp_path):
    with pytest.raises(CatdogError, match="data directory not found"):
        resolve_kind(DataConfig(data_dir=str(tmp_path / "nope")))
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(CatdogError, match="notes.md is a file; --data-dir needs a folder"):
        resolve_kind(DataConfig(data_dir=str(tmp_path / "notes.md")))
    with pytest.raises(CatdogError, match="image folder not found"):
        read_class_folder(tmp_path / "nope", 16)
    (tmp_path / "birds").mkdir()
    with pytest.raises(CatdogError, match="no cat/ and dog/"):
        resolve_kind(DataConfig(data_dir=str(tmp_path)))


def test_class_without_images_is_an_error(tmp_path):
    write_image_folder(tmp_path, {"train": 2})
    for f in (tmp_path / "train" / "dog").iterdir():
        f.unlink()
    with pytest.raises(CatdogError, match="no readable images for dog"):
        load_folder(tmp_path, "train", 16)


def test_balanced_subset_takes_each_class_in_order(tiny_data):
    data = load_folder(tiny_data, "test", 16)
    sub = balanced_subset(data, 6)
    assert sub.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert torch.equal(sub.images[0], data.images[0])


def test_augment_flips_where_it_says_and_jitter_stays_in_range():
    x = torch.rand(16, 3, 8, 8) * 2 - 1
    out, flipped = augment(x, torch.Generator().manual_seed(0), hflip=True, color_jitter=0.0)
    assert 0 < flipped.sum() < 16
    assert torch.equal(out[flipped], x[flipped].flip(-1))
    assert torch.equal(out[~flipped], x[~flipped])
    jittered, _ = augment(x, torch.Generator().manual_seed(0), hflip=False, color_jitter=0.2)
    assert jittered.min() >= -1 and jittered.max() <= 1 and not torch.equal(jittered, x)


def test_random_resized_crops_zoom_into_the_image_without_borders():
    # A 32 px image whose left half is black and right half white; crops to 8 px.
    images = torch.zeros(64, 3, 32, 32, dtype=torch.uint8)
    images[..., 16:] = 255
    rng = torch.Generator().manual_seed(0)
    crops = random_resized_crops(images, 8, 0.75, rng)
    assert crops.shape == (64, 3, 8, 8) and crops.dtype == torch.uint8
    # Each crop still shows the edge (a crop of >= 3/4 of the side contains the middle) ...
    assert (crops[..., 0] < 64).all() and (crops[..., -1] > 191).all()
    # ... at positions that vary with the crop.
    edge = (crops[:, 0, 0].float() > 127).float().argmax(dim=-1)
    assert len(edge.unique()) > 1
    same = random_resized_crops(images, 8, 0.75, torch.Generator().manual_seed(0))
    assert torch.equal(crops, same)  # reproducible from the generator
    assert torch.equal(random_resized_crops(images, 32, 1.0, rng), images)  # scale 1: identity


def test_uint8_float_round_trip():
    images = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert torch.equal(to_uint8(to_float(images)), images)
