"""The reads of a study in the long format of answers.csv: pseudonyms, truth, no practice."""

import pytest

from studies.exports import ANSWER_COLUMNS, answer_rows
from studies.models import Presentation
from studies.services import answer_submit
from tests.studies.study_fixtures import make_open_study

pytestmark = pytest.mark.django_db


def test_every_study_answer_is_a_row_and_practice_never_is(reader, outsider):
    study = make_open_study(reader, images=4, practice=2, readers=[outsider])
    for presentation in Presentation.objects.filter(study=study).order_by("reader", "position"):
        if presentation.reader == outsider and presentation.position > 3:
            continue  # the outsider stopped half way
        answer_submit(presentation=presentation, label="fake", viewing_ms=1500)
    rows = list(answer_rows(study))
    assert all(list(row) == ANSWER_COLUMNS for row in rows)
    assert len(rows) == 4 + 2  # practice answered by both, never exported
    assert {row["reader"] for row in rows} == {"R01", "R02"}
    assert "reader" not in {row["reader"] for row in rows} and "outsider" not in str(rows)
    first = [row for row in rows if row["reader"] == "R01"]
    assert [row["position"] for row in first] == [1, 2, 3, 4]
    origin = dict(Presentation.objects.filter(study=study).values_list("image", "image__origin"))
    assert all(row["truth"] == ("real" if origin[row["image"]] == "real" else "fake") for row in rows)
    assert {row["truth"] for row in rows} == {"real", "fake"}
    assert {row["seconds"] for row in rows} == {1.5}
    assert {row["is_repeat"] for row in rows} == {False}
