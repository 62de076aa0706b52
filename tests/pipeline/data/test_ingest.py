"""Reading images: folders, globs, IDX and .npz; corrupt files, other sizes and modes, empty folders."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data.image_arrays import read_idx, read_npz
from pipeline.data.image_decode import decode_image
from pipeline.data.images import dominant_format, read_images, read_training_images
from pipeline.errors import InputError
from pipeline.score.image_scoring import score_images_batch
from tests.conftest import write_png
from tests.pipeline.score.test_bad_inputs import call_within

RNG = np.random.default_rng(0)


def _img(h: int = 8, w: int = 8) -> np.ndarray:
    return RNG.integers(0, 256, size=(h, w), dtype=np.uint8)


def test_folder_is_searched_recursively_in_sorted_order_and_other_files_are_ignored(tmp_path):
    write_png(tmp_path / "b.png", _img())
    write_png(tmp_path / "a" / "deep" / "x.bmp", _img())
    write_png(tmp_path / "a" / "y.jpg", _img())
    write_png(tmp_path / ".hidden" / "z.png", _img())
    (tmp_path / "notes.txt").write_text("not an image")
    images = read_images(tmp_path)
    assert images.paths == ["a/deep/x.bmp", "a/y.jpg", "b.png"]
    assert images.pixels.shape == (3, 1, 8, 8) and images.pixels.dtype == np.float32
    assert images.errors == ["", "", ""]
    assert images.pixels.min() >= 0.0 and images.pixels.max() <= 1.0


def test_png_pixels_are_value_over_255(tmp_path):
    x = _img()
    p = write_png(tmp_path / "x.png", x)
    arr, notes = decode_image(p, None, None)
    assert np.allclose(arr[0], x / 255.0) and notes == []


def test_corrupt_image_is_a_row_with_an_error_and_the_batch_goes_on(tmp_path, image_detector):
    write_png(tmp_path / "ok1.png", _img())
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    write_png(tmp_path / "sub" / "ok2.png", _img())
    images = read_images(tmp_path, mode="L", size=(8, 8))
    assert images.paths == ["broken.png", "empty.jpg", "ok1.png", "sub/ok2.png"]
    assert images.errors[0].startswith("cannot decode image: ") and images.errors[1].startswith("cannot decode")
    assert images.ok.tolist() == [False, False, True, True] and len(images.pixels) == 2
    s = score_images_batch(image_detector, tmp_path, tmp_path / "out", top_k=2)
    report = pd.read_csv(s.report, keep_default_na=False)
    assert list(report.columns) == ["path", "score", "threshold", "is_anomaly", "p_value", "error"]
    assert report["path"].tolist() == images.paths  # every image once, in order
    assert report.loc[0, "score"] == "" and report.loc[0, "is_anomaly"] == "" and report.loc[0, "error"] != ""
    assert report.loc[2, "error"] == "" and float(report.loc[2, "score"]) > 0
    assert s.rows == 4 and s.scored == 2 and s.errors == 2
    assert any("2 of 4 images could not be decoded" in n for n in s.notes)


def test_image_of_another_size_and_mode_is_converted_by_the_documented_rule(tmp_path, image_detector):
    """An RGB 16x12 image is scored as its luma (Pillow convert("L")) resized bilinearly to the model's 8x8."""
    from PIL import Image

    rgb = RNG.integers(0, 256, size=(16, 12, 3), dtype=np.uint8)
    p = write_png(tmp_path / "big.png", rgb)
    arr, notes = decode_image(p, "L", (8, 8))
    assert notes == ["converted RGB->L", "resized 16x12->8x8"]
    expected = np.asarray(Image.fromarray(rgb).convert("L").resize((8, 8), Image.Resampling.BILINEAR)) / 255.0
    assert np.allclose(arr[0], expected, atol=1e-6)
    s = score_images_batch(image_detector, tmp_path, tmp_path / "out", top_k=1)
    assert s.scored == 1 and "converted RGB->L (1 images)" in s.notes and "resized 16x12->8x8 (1 images)" in s.notes
    assert float(pd.read_csv(s.report)["score"][0]) == pytest.approx(image_detector.score_samples(arr[None])[0])


def test_training_takes_the_most_common_size_and_grey_unless_colour(tmp_path):
    for i in range(3):
        write_png(tmp_path / f"s{i}.png", _img(8, 8))
    write_png(tmp_path / "odd.png", _img(10, 6))
    images = read_training_images(tmp_path)
    assert dominant_format(images) == ("L", (8, 8)) and images.pixels.shape == (4, 1, 8, 8)
    assert "resized 10x6->8x8 (1 images)" in images.notes
    write_png(tmp_path / "colour.png", RNG.integers(0, 256, size=(8, 8, 3), dtype=np.uint8))
    assert read_training_images(tmp_path).pixels.shape == (5, 3, 8, 8)


def test_empty_folder_and_missing_path_are_one_line_errors(tmp_path):
    (tmp_path / "empty" / "nested").mkdir(parents=True)
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(InputError, match=r"folder .*empty holds no \.png/\.jpg/\.jpeg/\.bmp images"):
        read_images(tmp_path / "empty")
    with pytest.raises(InputError, match=r"input not found: .*nope"):
        read_images(tmp_path / "nope")
    with pytest.raises(InputError, match=r"glob '.*\*\.png' matches no"):
        read_images([str(tmp_path / "empty" / "*.png")])
    with pytest.raises(InputError, match="image mode must be 'L'"):
        read_images(tmp_path, mode="CMYK")


def test_all_images_undecodable_is_an_error_for_training_and_scoring(tmp_path, image_detector):
    (tmp_path / "bad.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="none of the 1 images could be decoded"):
        read_training_images(tmp_path)
    with pytest.raises(InputError, match="none of the 1 images could be decoded"):
        score_images_batch(image_detector, tmp_path, tmp_path / "out")


def test_files_and_globs_form_one_batch_and_each_image_appears_once(tmp_path):
    a = write_png(tmp_path / "d" / "a.png", _img())
    write_png(tmp_path / "d" / "b.png", _img())
    write_png(tmp_path / "d" / "e" / "c.png", _img())
    images = read_images([str(a), str(tmp_path / "d" / "*.png"), str(tmp_path / "d" / "e" / "c.png")])
    assert images.paths == ["a.png", "b.png", "e/c.png"] and images.root == (tmp_path / "d").resolve()
    with pytest.raises(InputError, match=r"unsupported image file .*x\.gif"):
        (tmp_path / "x.gif").write_bytes(b"GIF89a")
        read_images([str(tmp_path / "x.gif")])


def _write_idx(path, x: np.ndarray, labels: np.ndarray | None = None, magic: int = 2051) -> None:
    header = b"".join(int(v).to_bytes(4, "big") for v in (magic, *x.shape))
    with gzip.open(path, "wb") as f:
        f.write(header + x.astype(np.uint8).tobytes())
    if labels is not None:
        lab = path.with_name(path.name.replace("-images-idx3-ubyte.gz", "-labels-idx1-ubyte.gz"))
        with gzip.open(lab, "wb") as f:
            f.write((2049).to_bytes(4, "big") + len(labels).to_bytes(4, "big") + labels.astype(np.uint8).tobytes())


def test_idx_and_npz_arrays_with_labels(tmp_path):
    x = RNG.integers(0, 256, size=(5, 8, 8), dtype=np.uint8)
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    _write_idx(p, x, np.arange(5))
    images = read_images(p)
    assert images.paths == [f"t10k-images-idx3-ubyte.gz#{i}" for i in range(5)]
    assert np.allclose(images.pixels[:, 0], x / 255.0) and images.labels.tolist() == [0, 1, 2, 3, 4]
    assert read_images(p, size=(4, 4)).pixels.shape == (5, 1, 4, 4)
    npz = tmp_path / "batch.npz"
    np.savez(npz, images=x[..., None].repeat(3, axis=3), labels=np.ones(5))
    rgb = read_images(npz)
    assert rgb.pixels.shape == (5, 3, 8, 8) and rgb.labels.tolist() == [1] * 5
    grey = read_images(npz, mode="L")
    assert np.allclose(grey.pixels[:, 0], x / 255.0, atol=1e-6) and "converted RGB->L (5 images)" in grey.notes


def test_bad_array_files_name_the_problem(tmp_path):
    bad = tmp_path / "bad-images-idx3-ubyte.gz"
    _write_idx(bad, np.zeros((2, 4, 4)), magic=2049)
    with pytest.raises(InputError, match="magic number 2049, expected 2051"):
        read_images(bad)
    short = tmp_path / "short-images-idx3-ubyte"
    short.write_bytes((2051).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big") * 2 + b"\0" * 10)
    with pytest.raises(InputError, match="truncated: header says 3 images of 4x4"):
        read_images(short)
    npz = tmp_path / "flat.npz"
    np.savez(npz, x=np.zeros((3, 10)))
    with pytest.raises(InputError, match=r"array 'x' has shape \(3, 10\), expected \(n, H, W\)"):
        read_images(npz)


def test_16_bit_png_is_scaled_by_65535(tmp_path):
    from PIL import Image

    x = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(x).save(p)
    arr, _ = decode_image(p, "L", None)
    assert arr.shape == (1, 8, 8) and np.allclose(arr, 128 / 255.0, atol=1 / 255)


def _empty_array_file(case: str, tmp_path) -> tuple[Path, str]:
    """An IDX or .npz file with 0 images or images of 0 pixels; and the start of its error message."""
    if case == "idx-0-images":
        p = tmp_path / "zero-images-idx3-ubyte.gz"
        _write_idx(p, np.zeros((0, 28, 28)))
        return p, f"{p} holds 0 images: its header says 0 images of 28x28; give a file with images"
    if case == "idx-0-pixels":
        p = tmp_path / "flat-images-idx3-ubyte"
        p.write_bytes(b"".join(v.to_bytes(4, "big") for v in (2051, 3, 0, 28)))
        return p, f"{p} holds images of 0x28 pixels (its header): an image needs at least 1x1 pixels"
    if case == "npz-0-images":
        p = tmp_path / "none.npz"
        np.savez(p, images=np.zeros((0, 8, 8), np.uint8))
        return p, f"{p} holds 0 images: array 'images' has shape (0, 8, 8); give a file with images"
    p = tmp_path / "thin.npz"
    np.savez(p, x=np.zeros((3, 8, 0), np.uint8))
    return p, f"{p}: array 'x' has shape (3, 8, 0): images of 8x0 pixels, an image needs at least 1x1 pixels"


@pytest.mark.parametrize("case", ["idx-0-images", "idx-0-pixels", "npz-0-images", "npz-0-pixels"])
def test_array_files_with_no_images_or_no_pixels_are_one_line_errors(case, tmp_path, image_detector):
    path, message = _empty_array_file(case, tmp_path)
    out = tmp_path / "out"
    for read in (  # reading, training and scoring (before: an empty batch, then an IndexError traceback)
        lambda: read_images(path),
        lambda: read_training_images(path),
        lambda: score_images_batch(image_detector, path, out),
    ):
        with pytest.raises(InputError) as e:
            read()
        assert str(e.value) == message
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.parametrize("name", ["x.png", "x.jpg", "t-images-idx3-ubyte", "t-images-idx3-ubyte.gz", "x.npz"])
def test_a_fifo_image_or_array_file_is_refused_before_it_is_opened(name, tmp_path):
    fifo = tmp_path / name
    os.mkfifo(fifo)
    reads = [lambda: read_images(fifo), lambda: read_images(str(fifo), mode="L", size=(8, 8))]
    if name.endswith((".png", ".jpg")):
        reads.append(lambda: read_images([fifo]))  # a list of files and globs
    elif name.endswith(".npz"):
        reads.append(lambda: read_npz(fifo))
    else:
        reads.append(lambda: read_idx(fifo))
    for read in reads:
        err = call_within(read, [fifo])
        assert isinstance(err, InputError), err
        assert str(fifo) in str(err) and str(err).endswith("is not a regular file: it is a FIFO (named pipe)")


def test_a_glob_keeps_regular_files_and_skips_a_fifo_as_a_folder_walk_does(tmp_path):
    write_png(tmp_path / "a.png", _img())
    fifo = tmp_path / "b.png"
    os.mkfifo(fifo)
    found: list = []
    for source in ([str(tmp_path / "*.png")], tmp_path):
        assert call_within(lambda source=source: found.append(read_images(source)), [fifo]) is None
        assert found.pop().paths == ["a.png"]
    os.unlink(tmp_path / "a.png")
    err = call_within(lambda: read_images([str(tmp_path / "*.png")]), [fifo])
    assert isinstance(err, InputError) and "matches no .png/.jpg/.jpeg/.bmp image" in str(err)


def test_all_digits_are_written_one_folder_per_digit_for_the_explore_demo(tmp_path):
    from pipeline.data.image_demo import write_all_digits
    from pipeline.data.images import read_training_images

    root = write_all_digits(tmp_path / "digits")
    assert sorted(p.name for p in root.iterdir()) == [str(d) for d in range(10)]
    images = read_training_images(root)
    assert len(images) == 1797 and images.pixels.shape[1:] == (1, 8, 8) and not any(images.errors)
