"""A folder is a table dataset when it holds tables and no image; any other folder means images."""

from __future__ import annotations

from flows.kinds import input_kind


def test_a_folder_of_parquet_parts_is_a_table_dataset_and_a_folder_of_pngs_is_images(tmp_path):
    sales = tmp_path / "sales" / "region=eu"
    sales.mkdir(parents=True)
    (sales / "part-0.parquet").write_bytes(b"PAR1")
    photos = tmp_path / "photos" / "a"
    photos.mkdir(parents=True)
    (photos / "x.png").write_bytes(b"\x89PNG")
    (tmp_path / "photos" / "notes.csv").write_text("a\n1\n")  # a stray table beside images: still images
    empty = tmp_path / "empty"
    empty.mkdir()
    assert input_kind(str(tmp_path / "sales")) == "table"
    assert input_kind(str(tmp_path / "photos")) == "image"
    assert input_kind(str(empty)) == "image"  # so an empty image folder gets the image error
