"""Readers of labelled images: h5, class folders and labels CSV; conflicts; typed errors."""

from __future__ import annotations

import csv
import pickle
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
from astropy.io import fits
from image_bombs import tiff

from edge_agent.contract.classes import CLASSES, class_id
from edge_agent.contract.decode import decode_file
from edge_agent.contract.decode_config import DecodeConfig, StretchConfig
from edge_agent.contract.errors import GalaxyEdgeError
from edge_agent.contract.labelled_data import LabelledDataError, open_labelled

SAMPLE = Path(__file__).resolve().parents[4] / "shared" / "data" / "galaxy10-sample"


def _images(n: int, seed: int = 0, size: int = 16) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def write_h5(path: Path, images: np.ndarray, ans: np.ndarray, **extra: np.ndarray) -> Path:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("images", data=images, chunks=(1, *images.shape[1:]))
        fh.create_dataset("ans", data=ans)
        for key, value in extra.items():
            fh.create_dataset(key, data=value)
    return path


def write_png(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[:, :, ::-1])
    return path


def test_h5_reads_lazily_and_excludes_conflicting_duplicates(tmp_path: Path) -> None:
    images = _images(12)
    ans = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 3, 3], dtype=np.uint8)
    images[10] = images[1]  # same pixels as item 1, label 3 vs 1: a conflict, both go
    images[11] = images[3]  # same pixels and same label as item 3: a harmless duplicate, kept
    data = open_labelled(write_h5(tmp_path / "g.h5", images, ans))

    assert data.conflicts_excluded == 2
    assert data.duplicates_same_label == 1
    assert len(data) == 10
    assert list(data.labels) == [0, 2, 3, 4, 5, 6, 7, 8, 9, 3]
    pixels, label = data[1]
    assert pixels.dtype == np.uint8 and pixels.shape == (16, 16, 3)
    np.testing.assert_array_equal(pixels, images[2])
    assert label == 2
    assert data.ref(1).endswith("g.h5[2]")
    info = data.describe()
    assert info["kind"] == "h5" and info["images"] == 10 and info["conflicts_excluded"] == 2
    assert (
        info["class_counts"]["Merging"] == 0
        and info["class_counts"]["In-between Round Smooth"] == 2
    )
    # Picklable for DataLoader workers: the h5 handle is reopened in the new process.
    clone = pickle.loads(pickle.dumps(data))
    np.testing.assert_array_equal(clone[9][0], images[11])


def test_limit_spreads_over_a_class_sorted_set(tmp_path: Path) -> None:
    ans = np.repeat(np.arange(10), 10).astype(np.uint8)
    images = _images(100)
    data = open_labelled(write_h5(tmp_path / "g.h5", images, ans), limit=20)
    assert len(data) == 20
    assert set(data.labels.tolist()) == set(range(10))
    chosen = [int(data.ref(i).rsplit("[", 1)[1].rstrip("]")) for i in range(20)]
    assert chosen == sorted(set(chosen)) and chosen[0] == 0 and chosen[-1] == 99
    # A conflict between two rows the limit selects is still found (rows read one by one).
    images[chosen[3]] = images[chosen[0]]
    again = open_labelled(write_h5(tmp_path / "h.h5", images, ans), limit=20)
    assert again.conflicts_excluded == 2 and len(again) == 18


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "no such h5 file"),
        ("not_h5", "not a readable HDF5 file"),
        ("no_ans", "missing key(s) ans"),
        ("grey", "'images' has shape"),
        ("float", "dtype float32"),
        ("short_ans", "'ans' has shape"),
        ("bad_label", "outside 0..9"),
    ],
)
def test_bad_h5_gives_one_typed_line(tmp_path: Path, case: str, message: str) -> None:
    path = tmp_path / "g.h5"
    imgs, ans = _images(4), np.array([0, 1, 2, 3])
    if case == "not_h5":
        path.write_text("not hdf5")
    elif case == "no_ans":
        with h5py.File(path, "w") as fh:
            fh.create_dataset("images", data=imgs)
            fh.create_dataset("labels", data=ans)
    elif case == "grey":
        write_h5(path, imgs[..., 0], ans)
    elif case == "float":
        write_h5(path, imgs.astype(np.float32), ans)
    elif case == "short_ans":
        write_h5(path, imgs, ans[:3])
    elif case == "bad_label":
        write_h5(path, imgs, np.array([0, 1, 2, 10]))
    with pytest.raises(LabelledDataError) as info:
        open_labelled(path)
    text = str(info.value)
    assert message in text and str(path) in text and "\n" not in text
    assert isinstance(info.value, GalaxyEdgeError)


def test_folder_maps_names_to_official_ids_not_sort_order(tmp_path: Path) -> None:
    imgs = _images(3)
    # Alphabetically "barred-spiral" < "disturbed" < "edge-on-with-bulge"; their ids are 5, 0, 9.
    write_png(tmp_path / "Barred_Spiral" / "a.png", imgs[0])
    write_png(tmp_path / "disturbed" / "b.png", imgs[1])
    write_png(tmp_path / "edge-on-with-bulge" / "c.png", imgs[2])
    (tmp_path / "notes.txt").write_text("top-level files are not images of a class")
    data = open_labelled(tmp_path)
    assert data.describe()["kind"] == "folder"
    assert sorted(
        zip([Path(data.ref(i)).name for i in range(3)], data.labels.tolist(), strict=True)
    ) == [
        ("a.png", 5),
        ("b.png", 0),
        ("c.png", 9),
    ]
    for i in range(3):
        pixels, _ = data[i]
        np.testing.assert_array_equal(pixels, imgs["abc".index(Path(data.ref(i)).stem)])


def test_folder_errors_name_the_problem(tmp_path: Path) -> None:
    write_png(tmp_path / "spirals" / "a.png", _images(1)[0])
    with pytest.raises(LabelledDataError, match=r"spirals: unknown class folder"):
        open_labelled(tmp_path)
    empty = tmp_path / "empty"
    (empty / "merging").mkdir(parents=True)
    with pytest.raises(LabelledDataError, match="hold no images"):
        open_labelled(empty)
    broken = tmp_path / "broken"
    bad = broken / "merging" / "x.jpg"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(LabelledDataError, match=r"x\.jpg: not a readable image"):
        open_labelled(broken)
    with pytest.raises(LabelledDataError, match="does not exist"):
        open_labelled(tmp_path / "nowhere")


def _write_csv(path: Path, rows: list[dict[str, object]], columns: list[str]) -> Path:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_csv_reads_relative_files_and_checks_names(tmp_path: Path) -> None:
    imgs = _images(3)
    for i in range(3):
        write_png(tmp_path / "imgs" / f"{i}.png", imgs[i])
    rows: list[dict[str, object]] = [
        {"file": "imgs/0.png", "label": 4, "name": "Cigar Shaped Smooth"},
        {"file": "imgs/1.png", "label": 7, "name": ""},
        {"file": "imgs/2.png", "label": 4, "name": "cigar-shaped-smooth"},
    ]
    path = _write_csv(tmp_path / "labels.csv", rows, ["file", "label", "name"])
    data = open_labelled(path)
    assert data.labels.tolist() == [4, 7, 4]
    np.testing.assert_array_equal(data[2][0], imgs[2])

    rows[1]["name"] = "Round Smooth"
    with pytest.raises(LabelledDataError, match=r"labels\.csv:3: name 'Round Smooth' is class 2"):
        open_labelled(_write_csv(tmp_path / "labels.csv", rows, ["file", "label", "name"]))
    rows[1].update(name="", label="seven")
    with pytest.raises(LabelledDataError, match=r":3: label 'seven' is not an official class id"):
        open_labelled(_write_csv(tmp_path / "labels.csv", rows, ["file", "label", "name"]))
    rows[1].update(label=7, file="imgs/9.png")
    with pytest.raises(LabelledDataError, match=r"9\.png does not exist"):
        open_labelled(_write_csv(tmp_path / "labels.csv", rows, ["file", "label", "name"]))
    with pytest.raises(LabelledDataError, match="needs columns 'file' and 'label'"):
        open_labelled(_write_csv(tmp_path / "other.csv", [{"path": "x"}], ["path"]))
    with pytest.raises(LabelledDataError, match="no rows"):
        open_labelled(_write_csv(tmp_path / "none.csv", [], ["file", "label"]))


def test_csv_conflicting_duplicates_are_excluded(tmp_path: Path) -> None:
    img = _images(2)
    write_png(tmp_path / "a.png", img[0])
    write_png(tmp_path / "b.png", img[0])
    write_png(tmp_path / "c.png", img[1])
    rows: list[dict[str, object]] = [
        {"file": "a.png", "label": 1},
        {"file": "b.png", "label": 2},
        {"file": "c.png", "label": 3},
    ]
    data = open_labelled(_write_csv(tmp_path / "l.csv", rows, ["file", "label"]))
    assert data.conflicts_excluded == 2 and data.labels.tolist() == [3]
    unchecked = open_labelled(tmp_path / "l.csv", check_conflicts=False)
    assert len(unchecked) == 3 and unchecked.conflicts_excluded == 0


@pytest.mark.skipif(
    not (SAMPLE / "labels.csv").is_file(), reason=f"shared sample absent at {SAMPLE}"
)
def test_sample_folders_agree_with_the_official_ids_of_labels_csv() -> None:
    with open(SAMPLE / "labels.csv", newline="") as fh:
        by_file = {row["file"]: int(row["label"]) for row in csv.DictReader(fh)}
    folders = sorted(p for p in SAMPLE.iterdir() if p.is_dir())
    assert len(folders) == len(CLASSES)
    for folder in folders:
        files = [f for f in by_file if f.startswith(folder.name + "/")]
        assert files, folder
        assert {by_file[f] for f in files} == {class_id(folder.name)}, folder.name
    folder_set = open_labelled(SAMPLE, check_conflicts=False)
    csv_set = open_labelled(SAMPLE / "labels.csv", check_conflicts=False)
    from_folder = {
        Path(folder_set.ref(i)).relative_to(SAMPLE).as_posix(): int(folder_set.labels[i])
        for i in range(len(folder_set))
    }
    from_csv = {
        Path(csv_set.ref(i)).relative_to(SAMPLE).as_posix(): int(csv_set.labels[i])
        for i in range(len(csv_set))
    }
    assert from_folder == from_csv == by_file


def test_files_are_read_with_the_given_decoding_settings(tmp_path: Path) -> None:
    """The reader is the agent's decoder: a run's ``decode`` settings reach it and are reported."""
    ramp = np.linspace(100, 900, 16 * 16).reshape(16, 16).astype(np.uint16)
    path = tmp_path / "round-smooth" / "deep.png"
    path.parent.mkdir(parents=True)
    assert cv2.imwrite(str(path), ramp)
    fits.PrimaryHDU(ramp.astype(np.float32)).writeto(tmp_path / "round-smooth" / "deep.fits")
    linear = DecodeConfig(stretch=StretchConfig(method="linear"))
    data = open_labelled(tmp_path, decode=linear, check_conflicts=False)
    assert len(data) == 2  # FITS files are labelled images too
    for i in range(2):
        expected = decode_file(Path(data.ref(i)), linear)
        np.testing.assert_array_equal(data[i][0], expected)
        assert not np.array_equal(expected, decode_file(Path(data.ref(i)), DecodeConfig()))
    assert data.describe()["decode"]["stretch"]["method"] == "linear"


def test_a_hostile_file_is_a_labelled_data_error_with_the_reason(tmp_path: Path) -> None:
    bomb = tmp_path / "merging" / "bomb.tif"
    bomb.parent.mkdir(parents=True)
    bomb.write_bytes(tiff(100_000, 100_000))
    with pytest.raises(LabelledDataError, match=r"bomb\.tif: not a readable image \(oversized"):
        open_labelled(tmp_path)
