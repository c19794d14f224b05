"""Reasons counted per arm, regions as rows and as a density (analysis/reasons.py), by hand."""

import csv
import io
import subprocess
import sys

import numpy as np
import pytest

from analysis.files import result_files
from analysis.reads import ReadsBuilder, answers_csv_chunks, region_columns
from analysis.reasons import NO_REASON, most_called_fake, reason_counts, region_density, region_rows
from analysis.summary import summarize
from tests.analysis.reads_fixtures import answer_dicts

POINT = {"kind": "point", "x0": 10, "y0": 30, "x1": 10, "y1": 30, "size": 40}
WHOLE = {"kind": "box", "x0": 0, "y0": 0, "x1": 39, "y1": 39, "size": 40}
LEFT_HALF = {"kind": "box", "x0": 0, "y0": 0, "x1": 19, "y1": 39, "size": 40}

# (reader, image, model, label, reasons, region, is_repeat)
ROWS = [
    ("A", "f1", "m1", "fake", ["Bones", "Anatomy"], POINT, False),
    ("A", "f2", "m1", "fake", ["Bones"], LEFT_HALF, False),
    ("A", "f3", "m1", "real", [], None, False),
    ("A", "g1", "m2", "fake", [], None, False),
    ("A", "r1", "", "fake", ["Texture"], WHOLE, False),
    ("A", "r2", "", "real", [], None, False),
    ("B", "f1", "m1", "fake", ["Anatomy"], None, False),
    ("B", "f1", "m1", "fake", ["Texture"], WHOLE, True),  # a repeat: not counted
    ("B", "r1", "", "unsure", [], None, False),
]  # fmt: skip


def build(rows=ROWS):
    builder = ReadsBuilder()
    for line, (reader, image, model, label, reasons, region, repeat) in enumerate(rows, start=2):
        builder.add(
            line=line,
            study="1",
            reader=reader,
            image=image,
            truth="fake" if model else "real",
            model=model,
            label=label,
            confidence=None,
            seconds=1.0,
            is_repeat=repeat,
            reasons=reasons,
            region=region,
        )
    return builder.build()


def test_reasons_are_counted_per_arm_on_first_reads_called_fake():
    counts = {
        (r["group"], r["reason"]): (r["n_called_fake"], r["n_with_reason"], r["share"])
        for r in reason_counts(build())
    }
    # m1: three first reads called its images fake (A f1, A f2, B f1); A's f3 was called real.
    assert counts["m1", "Bones"] == (3, 2, pytest.approx(2 / 3))
    assert counts["m1", "Anatomy"] == (3, 2, pytest.approx(2 / 3))
    assert counts["m1", "Texture"] == (3, 0, 0.0)  # given only on B's repeat
    assert counts["m1", NO_REASON] == (3, 0, 0.0)
    assert counts["m2", NO_REASON] == (1, 1, 1.0)
    # Real images called fake: A's r1 (B's was unsure).
    assert counts["real", "Texture"] == (1, 1, 1.0)
    assert {r["truth"] for r in reason_counts(build()) if r["group"] == "real"} == {"real"}
    # An arm with no reads has its rows, with no share.
    empty = [r for r in reason_counts(build(), ["m1", "m2", "m3"]) if r["group"] == "m3"]
    assert {(r["n_called_fake"], r["share"]) for r in empty} == {(0, None)}


def test_a_point_falls_on_its_cell_and_a_box_spreads_evenly_over_the_cells_it_covers():
    reads = build()
    # m1's marks: the point at pixel (10, 30) of 40 and the left half; unsmoothed, 4 x 4 cells.
    grid, n = region_density(reads, 1, bins=4, sigma=0)
    assert n == 2
    expected = np.zeros((4, 4))
    expected[3, 1] += 0.5  # the point: row y = 30 -> cell 3, column x = 10 -> cell 1
    expected[:, :2] += 0.5 / 8  # the left half: 8 cells
    assert np.allclose(grid, expected)
    # The real images' one mark covers everything: even, and smoothing keeps the sum at 1.
    grid, n = region_density(reads, 0, bins=8, sigma=1.5)
    assert n == 1 and grid.sum() == pytest.approx(1.0)
    assert np.allclose(grid, grid[::-1, ::-1]) and grid[4, 4] > grid[0, 0]  # symmetric, less at the edges
    # No marks: all zero.
    grid, n = region_density(reads, 2, bins=4)
    assert n == 0 and not grid.any()


def test_regions_csv_holds_each_marked_read_and_reasons_csv_the_counts():
    reads = build()
    rows = region_rows(reads)
    assert [(r["reader"], r["image"], r["region"]) for r in rows] == [
        ("A", "f1", "point"),
        ("A", "f2", "box"),
        ("A", "r1", "box"),
        ("B", "f1", "box"),  # the repeat's mark is data too
    ]
    assert rows[0]["reasons"] == "Bones;Anatomy" and rows[0]["model"] == "m1"
    assert (rows[0]["centre_x"], rows[0]["centre_y"]) == (10.5 / 40, 30.5 / 40)
    assert (rows[1]["centre_x"], rows[1]["centre_y"]) == (0.25, 0.5)
    files = result_files(reads, summarize(reads, replicates=20))
    assert {"reasons.csv", "regions.csv"} <= set(files)
    counted = list(csv.DictReader(io.StringIO(files["reasons.csv"])))
    assert {
        "group": "m1",
        "truth": "fake",
        "reason": "Bones",
        "n_called_fake": "3",
        "n_with_reason": "2",
        "share": "0.666667",
    } in counted


def test_analyze_csv_writes_the_same_reasons_and_regions_as_the_web_app(tmp_path):
    """From answers.csv, by the command line, the same files as from the reads themselves."""
    dicts = answer_dicts(
        [(reader, image, model, label, None, repeat) for reader, image, model, label, _, _, repeat in ROWS]
    )
    for row, (*_, reasons, region, _repeat) in zip(dicts, ROWS, strict=True):
        row |= {"reasons": reasons} | region_columns(region)
    path = tmp_path / "answers.csv"
    path.write_text("".join(answers_csv_chunks(dicts)), encoding="utf-8")
    out = tmp_path / "out"
    subprocess.run(
        [sys.executable, "-m", "analysis", str(path), "--out", str(out), "--bootstrap", "20"],
        check=True,
        capture_output=True,
    )
    reads = build()
    expected = result_files(reads, summarize(reads, replicates=20))
    assert (out / "reasons.csv").read_text() == expected["reasons.csv"]
    assert (out / "regions.csv").read_text() == expected["regions.csv"]
    # A file without reasons or regions writes neither.
    plain = [dict(row, reasons=[]) | region_columns(None) for row in dicts]
    path.write_text("".join(answers_csv_chunks(plain)), encoding="utf-8")
    subprocess.run(
        [sys.executable, "-m", "analysis", str(path), "--out", str(tmp_path / "plain"), "--bootstrap", "20"],
        check=True,
        capture_output=True,
    )
    assert (
        not (tmp_path / "plain" / "reasons.csv").exists()
        and not (tmp_path / "plain" / "regions.csv").exists()
    )


def test_the_images_most_often_called_fake_come_first_with_their_reasons_and_marks():
    reads = build()
    synthetic = most_called_fake(reads, synthetic=True)
    # f1: both first reads called it fake (2 of 2); f2 and g1: 1 of 1, by name; f3: never.
    assert [(g["image"], g["n_called_fake"], g["n_reads"]) for g in synthetic] == [
        ("f1", 2, 2),
        ("f2", 1, 1),
        ("g1", 1, 1),
    ]
    assert synthetic[0]["reasons"] == {"Bones": 1, "Anatomy": 2}  # the repeat's Texture is not counted
    assert synthetic[0]["regions"] == [(10, 30, 10, 30, 40, 0)]
    real = most_called_fake(reads, synthetic=False)
    assert [(g["image"], g["reasons"]) for g in real] == [("r1", {"Texture": 1})]
    assert len(most_called_fake(reads, synthetic=True, top=1)) == 1
