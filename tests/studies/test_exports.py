"""A study's exported files: answers.csv from the database, the result files, and the round trip."""

import csv
import io
import zipfile

import pytest
from django.core.management import CommandError, call_command

from analysis.reads import ANSWER_COLUMNS, WRITTEN_COLUMNS
from generation.models import GenerativeModel
from studies.exports import answer_rows, export_to_folder, results_zip_stream
from studies.models import Presentation, StudyModel
from studies.services import answer_submit
from tests.analysis.reads_fixtures import formula_cells
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db
LABELS = ["real", "fake", "unsure"]
EVERY_FILE = [
    "README.txt",
    "answers.csv",
    "arm_comparisons.csv",
    "cohen_kappa.csv",
    "imrmc_all.csv",
    "imrmc_cxr-diffusion.csv",
    "imrmc_cxr-latent.csv",
    "sessions.csv",  # every answer counts in a reading session
    "summary.csv",
]


def answer_everything(study, *, skip=lambda presentation: False, confidence=None):
    """Answer each presentation with a label that depends on reader, image and repeat."""
    for n, presentation in enumerate(Presentation.objects.filter(study=study).order_by("reader", "position")):
        if skip(presentation):
            continue
        label = LABELS[(presentation.reader_id + presentation.image_id + presentation.is_repeat) % 3]
        answer_submit(presentation=presentation, label=label, confidence=confidence, viewing_ms=1000 + 10 * n)


def test_every_study_answer_is_a_row_and_practice_never_is(reader, outsider):
    study = make_open_study(reader, images=4, practice=2, readers=[outsider])
    answer_everything(study, skip=lambda p: p.reader == outsider and p.position > 3)  # stopped half way
    rows = list(answer_rows(study))
    assert all(list(row) == WRITTEN_COLUMNS for row in rows)
    assert len(rows) == 4 + 2  # practice answered by both, never exported
    assert {row["reader"] for row in rows} == {"R001", "R002"}
    assert "reader" not in {row["reader"] for row in rows} and "outsider" not in str(rows)
    first = [row for row in rows if row["reader"] == "R001"]
    assert [row["position"] for row in first] == [1, 2, 3, 4]
    origin = dict(Presentation.objects.filter(study=study).values_list("image", "image__origin"))
    assert all(row["truth"] == ("real" if origin[row["image"]] == "real" else "fake") for row in rows)
    assert {row["truth"] for row in rows} == {"real", "fake"}
    assert {row["model"] for row in rows if row["truth"] == "fake"} == {"cxr-diffusion", "cxr-latent"}
    assert {row["model"] for row in rows if row["truth"] == "real"} == {""}
    assert {row["is_repeat"] for row in rows} == {False}


def test_export_then_analyze_csv_gives_identical_result_files(reader, outsider, django_user_model, tmp_path):
    third = django_user_model.objects.create_user("third")
    study = make_open_study(
        reader, images=12, readers=[outsider, third], repeat_percent=25, ask_confidence=True
    )
    answer_everything(study, skip=lambda p: p.reader == third and p.position > 6, confidence=4)
    exported = tmp_path / "export"
    call_command(
        "export_results", str(study.pk), "--out", str(exported), "--bootstrap", "300", stdout=io.StringIO()
    )
    names = sorted(p.name for p in exported.iterdir())
    assert names == EVERY_FILE
    recomputed = tmp_path / "again"
    call_command(
        "analyze_csv",
        str(exported / "answers.csv"),
        "--out",
        str(recomputed),
        "--bootstrap",
        "300",
        stdout=io.StringIO(),
    )
    for name in EVERY_FILE:
        if name not in ("README.txt", "answers.csv", "sessions.csv"):  # sessions come from the database
            assert (recomputed / name).read_bytes() == (exported / name).read_bytes(), name
    summary = list(csv.DictReader(open(exported / "summary.csv")))
    pooled = next(row for row in summary if row["group"] == "all" and row["reader"] == "all")
    assert pooled["n_agreement_readers"] == "3" and pooled["accuracy_boot_low"]
    assert any(row["intra_reader_kappa"] for row in summary)  # the study repeats images
    assert "--bootstrap 300 --seed 0" in (exported / "README.txt").read_text()


def test_an_arm_without_reads_is_exported_and_recomputed_with_its_declaration(reader, tmp_path):
    study = make_open_study(reader, images=4)
    quiet = GenerativeModel.objects.create(
        name="quiet model", path="/m", pipeline_class="DDPMPipeline", native_size=64
    )
    StudyModel.objects.create(study=study, model=quiet, count=1)
    answer_everything(study)
    export_to_folder(study, tmp_path / "export", replicates=50)
    summary = (tmp_path / "export" / "summary.csv").read_text()
    assert "quiet model,all," in summary and "no reads of synthetic images" in summary
    readme = (tmp_path / "export" / "README.txt").read_text()
    assert "--model='quiet model'" in readme
    call_command(
        "analyze_csv",
        str(tmp_path / "export" / "answers.csv"),
        "--out",
        str(tmp_path / "again"),
        "--bootstrap",
        "50",
        "--model",
        "quiet model",
        stdout=io.StringIO(),
    )
    assert (tmp_path / "again" / "summary.csv").read_text() == summary


def test_a_model_named_like_a_formula_is_exported_as_text_and_recomputed_byte_for_byte(reader, tmp_path):
    study = make_open_study(reader, images=6)
    hostile = '=HYPERLINK("http://evil.example","open")'
    GenerativeModel.objects.filter(name="cxr-latent").update(name=hostile)
    answer_everything(study)
    export_to_folder(study, tmp_path / "export", replicates=50)
    archive = zipfile.ZipFile(io.BytesIO(b"".join(results_zip_stream(study, replicates=50))))
    for name in archive.namelist():
        assert formula_cells(archive.read(name).decode()) == [], name
        assert archive.read(name) == (tmp_path / "export" / name).read_bytes(), name
    answers = csv.DictReader(archive.read("answers.csv").decode().splitlines())
    assert "'" + hostile in {row["model"] for row in answers}
    call_command(
        "analyze_csv", str(tmp_path / "export" / "answers.csv"), "--out", str(tmp_path / "again"),
        "--bootstrap", "50", stdout=io.StringIO(),
    )  # fmt: skip
    for path in (tmp_path / "again").iterdir():
        assert path.read_bytes() == (tmp_path / "export" / path.name).read_bytes(), path.name
    assert "imrmc_HYPERLINK_http_evil.example_open.csv" in {p.name for p in (tmp_path / "again").iterdir()}


def test_the_zip_streams_every_file(reader, outsider):
    study = make_open_study(reader, images=6, readers=[outsider])
    answer_everything(study)
    chunks = list(results_zip_stream(study, replicates=50))
    assert len(chunks) > 2
    archive = zipfile.ZipFile(io.BytesIO(b"".join(chunks)))
    assert archive.testzip() is None
    assert sorted(archive.namelist()) == EVERY_FILE
    lines = archive.read("answers.csv").decode().splitlines()
    assert lines[0] == ",".join(WRITTEN_COLUMNS) and len(lines) == 1 + 12


def test_analyze_csv_names_the_bad_line_and_writes_nothing(tmp_path):
    bad = tmp_path / "answers.csv"
    bad.write_text(",".join(ANSWER_COLUMNS) + "\n1,R01,7,real,,,maybe,,1.0,1,false,\n")
    with pytest.raises(CommandError, match=r"line 2: unknown label 'maybe'"):
        call_command("analyze_csv", str(bad), "--out", str(tmp_path / "out"), stdout=io.StringIO())
    assert not (tmp_path / "out").exists()
    with pytest.raises(CommandError, match="No such file"):
        call_command("analyze_csv", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "out"))


def test_export_results_names_an_unknown_study(tmp_path):
    with pytest.raises(CommandError, match="No study 'nope'"):
        call_command("export_results", "nope", "--out", str(tmp_path))


def test_pseudonyms_are_fixed_when_readers_join(reader, outsider, django_user_model):
    from studies.models import StudyReader
    from studies.services import study_reader_add

    study = make_open_study(reader, images=2, readers=[outsider])
    later = django_user_model.objects.create_user("later")
    StudyReader.objects.filter(study=study, reader=reader).delete()  # a reader removed
    study_reader_add(study=study, reader=later)
    study_reader_add(study=study, reader=later)  # twice: still one place, one number
    names = dict(StudyReader.objects.filter(study=study).values_list("reader__username", "number"))
    assert names == {"outsider": 2, "later": 3}
    answer_everything(study)
    assert {row["reader"] for row in answer_rows(study)} == {"R002", "R003"}
