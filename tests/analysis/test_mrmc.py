"""The MRMC analysis of AUC against the FDA's iMRMC program and against its own definition.

Reference: tests/analysis/imrmc_reference/ (a copy of spec/imrmc_reference/): a made-up study
of 5 readers, 30 real images and two models, not fully crossed, and what iMRMC 4.0.3
(FDA/CDRH, github.com/DIDSR/iMRMC) wrote for it. Every figure iMRMC reports there is
reproduced to 1e-6. The definition (Gallas 2006, Acad Radiol 13:353; Gallas, Pennello & Myers
2009, Commun Stat A 38:2586) is checked by enumerating every pair of read triples of small
studies, fully crossed and not.
"""

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from analysis import mrmc
from analysis.files import imrmc_all_csv, result_files
from analysis.reads import read_answers
from analysis.summary import COMPARISON_COLUMNS, summarize
from tests.analysis.reads_fixtures import make_reads

REFERENCE = Path(__file__).parent / "imrmc_reference"
TOLERANCE = 1e-6


def reference_reads():
    with open(REFERENCE / "answers.csv", newline="", encoding="utf-8") as f:
        return read_answers(f)


def imrmc_rows(name):
    with open(REFERENCE / name, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def reference():
    reads = reference_reads()
    return reads, summarize(reads, replicates=0)


def row(summary, group, reader="all"):
    return next(r for r in summary.rows if r["group"] == group and r["reader"] == reader)


def test_each_arm_matches_imrmc(reference):
    _, summary = reference
    arms = [r for r in imrmc_rows("imrmc_statAnalysis.csv") if r["modalityB"] == "NO_MOD"]
    assert {r["modalityA"] for r in arms} == {"Delta", "Epsilon"}
    for expected in arms:
        ours = row(summary, expected["modalityA"])
        for column, theirs in [
            ("auc_mrmc", "AUCA"),
            ("auc_mrmc_var", "varAUCA"),
            ("auc_mrmc_df", "dfBDG"),
            ("auc_mrmc_p", "pValueBDG"),
            ("auc_mrmc_ci_low", "botCIBDG"),
            ("auc_mrmc_ci_high", "topCIBDG"),
        ]:
            assert ours[column] == pytest.approx(float(expected[theirs]), abs=TOLERANCE), column
        # The pooled AUC is a different figure (every read as if one reader had made them).
        assert abs(ours["auc"] - ours["auc_mrmc"]) > 1e-3


def test_the_comparison_of_the_two_arms_matches_imrmc(reference):
    _, summary = reference
    (expected,) = [r for r in imrmc_rows("imrmc_statAnalysis.csv") if r["modalityB"] != "NO_MOD"]
    (ours,) = summary.comparisons
    assert list(ours) == COMPARISON_COLUMNS
    assert (ours["model_a"], ours["model_b"]) == (expected["modalityA"], expected["modalityB"])
    for column, theirs in [
        ("auc_a", "AUCA"),
        ("auc_b", "AUCB"),
        ("difference", "AUCAminusAUCB"),
        ("variance", "varAUCAminusAUCB"),
        ("df", "dfBDG"),
        ("p", "pValueBDG"),
        ("ci_low", "botCIBDG"),
        ("ci_high", "topCIBDG"),
    ]:
        assert ours[column] == pytest.approx(float(expected[theirs]), abs=TOLERANCE), column
    assert ours["note"] == ""


def test_each_reader_matches_imrmc(reference):
    _, summary = reference
    readers = [r for r in imrmc_rows("imrmc_AUCperReader.csv") if r["modalityB"] == "NO_MOD"]
    assert len(readers) == 10  # 5 readers x 2 arms
    for expected in readers:
        ours = row(summary, expected["modalityA"], expected["readerID"])
        assert ours["auc"] == pytest.approx(float(expected["AUCA"]), abs=TOLERANCE)
        assert ours["auc_var"] == pytest.approx(float(expected["varAUCA"]), abs=TOLERANCE)


def test_imrmc_all_is_the_input_imrmc_was_run_on(reference):
    reads, summary = reference

    def data(text):
        lines = text.splitlines()
        return sorted(lines[lines.index("BEGIN DATA:") + 1 :]), lines[: lines.index("BEGIN DATA:")]

    ours, header = data(imrmc_all_csv(reads, summary.models))
    theirs, _ = data((REFERENCE / "imrmc_all_arms.imrmc").read_text(encoding="utf-8"))
    assert ours == theirs
    assert {"NR: 5", "N0: 30", "N1: 30", "NM: 2"} <= set(header)
    files = result_files(reads, summary)
    assert files["imrmc_all.csv"] == imrmc_all_csv(reads, summary.models)
    assert files["arm_comparisons.csv"].splitlines()[0] == ",".join(COMPARISON_COLUMNS)


# ---- the definition, by enumeration ----


def kernel(signal: float, normal: float) -> float:
    return 1.0 if signal > normal else 0.5 if signal == normal else 0.0


def enumerated(scores: dict, normals: list, signals: list) -> tuple[float, float]:
    """The reader-averaged AUC and its U-statistic variance straight from the definition.

    `scores[(reader, case)]`. Every triple (r, i, j) whose reader read both cases has kernel s.
    The estimate of E[AUC^2] is AUC^2 itself; that of AUC's mean squared is the mean of
    s(r,i,j) s(r',i',j') over ordered pairs of triples with r != r', i != i', j != j', which
    are independent. The variance is the first less the second.
    """
    triples = [
        (r, i, j, kernel(scores[(r, j)], scores[(r, i)]))
        for r in sorted({r for r, _ in scores})
        for i in normals
        for j in signals
        if (r, i) in scores and (r, j) in scores
    ]
    auc = sum(t[3] for t in triples) / len(triples)
    apart = [
        a[3] * b[3]
        for a, b in itertools.permutations(triples, 2)
        if a[0] != b[0] and a[1] != b[1] and a[2] != b[2]
    ]
    return auc, auc**2 - (sum(apart) / len(apart) if apart else 0.0)


def analysed(scores: dict, normals: list, signals: list, n_levels: int):
    readers = sorted({r for r, _ in scores})

    def levels(cases):
        out = np.full((len(cases), len(readers)), -1)
        for (reader, case), score in scores.items():
            if case in cases:
                out[cases.index(case), readers.index(reader)] = score
        return out

    study = mrmc.Study(levels(normals), n_levels)
    return study, study.arm(mrmc.Cases(levels(signals), n_levels))


def test_a_study_small_enough_to_check_by_hand():
    # Reader A scores normals n1, n2 at 1, 2 and signals s1, s2 at 3, 2: kernels 1, 1, 1, 1/2.
    # Reader B scores them 2, 1 and 1, 3: kernels (n1,s1) 0, (n1,s2) 1, (n2,s1) 1/2, (n2,s2) 1.
    # AUC = (3.5 + 2.5) / 8 = 0.75. The all-different pairs, A's triple first: (n1,s1)x(n2,s2)
    # 1 x 1, (n1,s2)x(n2,s1) 1 x 1/2, (n2,s1)x(n1,s2) 1 x 1, (n2,s2)x(n1,s1) 1/2 x 0: mean 2.5/4,
    # and the same with B first. Variance = 0.75^2 - 0.625 = -0.0625: negative, as an unbiased
    # estimate from two readers and two cases each way may be.
    scores = {
        ("A", "n1"): 1, ("A", "n2"): 2, ("A", "s1"): 3, ("A", "s2"): 2,
        ("B", "n1"): 2, ("B", "n2"): 1, ("B", "s1"): 1, ("B", "s2"): 3,
    }  # fmt: skip
    _, arm = analysed(scores, ["n1", "n2"], ["s1", "s2"], n_levels=4)
    assert arm.auc.value == pytest.approx(0.75)
    assert arm.auc.var == pytest.approx(-0.0625)
    assert (arm.auc.df, arm.auc.p, arm.auc.ci_low) == (None, None, None)
    assert "not positive" in arm.auc.note


@pytest.mark.parametrize("missing", [0.0, 0.3], ids=["fully crossed", "reads missing"])
def test_the_variance_is_the_enumerated_u_statistic(missing):
    rng = np.random.default_rng(7)
    readers, normals, signals = ["A", "B", "C", "D"], [f"n{k}" for k in range(6)], [f"s{k}" for k in range(5)]
    scores = {}
    for reader in readers:
        for case in normals + signals:
            if rng.random() >= missing:
                scores[(reader, case)] = int(rng.integers(0, 5)) + (2 if case in signals else 0)
    study, arm = analysed(scores, normals, signals, n_levels=7)
    auc, var = enumerated(scores, normals, signals)
    assert arm.auc.value == pytest.approx(auc, abs=1e-12)
    assert arm.auc.var == pytest.approx(var, abs=1e-12)
    assert arm.auc.var > 0 and arm.auc.df >= 2  # iMRMC's floor
    low, high = arm.auc.ci_low, arm.auc.ci_high
    assert low < auc < high and high - auc == pytest.approx(auc - low)


def test_a_difference_is_the_enumerated_u_statistic_of_the_difference():
    """Two arms on the same readers and normals: the kernel of the difference is s_a - s_b over
    the pairs of triples of the two arms, which share readers and normals but no signal."""
    rng = np.random.default_rng(11)
    readers, normals = ["A", "B", "C"], [f"n{k}" for k in range(5)]
    arms = {"a": [f"a{k}" for k in range(4)], "b": [f"b{k}" for k in range(3)]}
    scores = {(r, c): int(rng.integers(0, 6)) for r in readers for c in normals + arms["a"] + arms["b"]}
    del scores[("B", "n0")], scores[("C", "a1")]  # not fully crossed
    ours = {}
    study = None
    for name, signals in arms.items():
        own = {key: value for key, value in scores.items() if key[1] in normals + signals}
        study_, arm = analysed(own, normals, signals, 6)
        study = study or study_
        ours[name] = arm
    difference = study.compare(ours["a"], ours["b"])

    def triples(signals):
        return [
            (r, i, j, kernel(scores[(r, j)], scores[(r, i)]))
            for r in readers
            for i in normals
            for j in signals
            if (r, i) in scores and (r, j) in scores
        ]

    ta, tb = triples(arms["a"]), triples(arms["b"])
    auc_a, auc_b = (sum(t[3] for t in ts) / len(ts) for ts in (ta, tb))

    def mean_apart(x, y):
        products = [p[3] * q[3] for p in x for q in y if p[0] != q[0] and p[1] != q[1] and p[2] != q[2]]
        return sum(products) / len(products)

    # E[(A - B)^2] by (A - B)^2; E[A]E[B]-type terms by the all-different means of each pairing.
    var = (auc_a - auc_b) ** 2 - (mean_apart(ta, ta) + mean_apart(tb, tb) - 2 * mean_apart(ta, tb))
    assert difference.value == pytest.approx(auc_a - auc_b, abs=1e-12)
    assert difference.var == pytest.approx(var, abs=1e-12)


def test_one_reader_has_the_variance_over_cases_only(reference):
    reads, _ = reference
    keep = reads.reader == reads.readers.index("obs1")
    rows = [
        ("obs1", reads.images[i], reads.models[m - 1] if m else "", ("real", "fake", "unsure")[lab], int(c))
        for i, m, lab, c in zip(
            reads.image[keep],
            reads.image_model[reads.image[keep]],
            reads.label[keep],
            reads.confidence[keep],
            strict=True,
        )
    ]
    summary = summarize(make_reads(rows), replicates=0)
    expected = {r["modalityA"]: r for r in imrmc_rows("imrmc_AUCperReader.csv") if r["readerID"] == "obs1"}
    pooled = row(summary, "Delta")
    # iMRMC's own variance of obs1's AUC: over the 25 real and 15 synthetic images obs1 read.
    assert pooled["auc_mrmc"] == pytest.approx(float(expected["Delta"]["AUCA"]), abs=TOLERANCE)
    assert pooled["auc_mrmc_var"] == pytest.approx(float(expected["Delta"]["varAUCA"]), abs=TOLERANCE)
    assert pooled["auc_mrmc_var"] == row(summary, "Delta", "obs1")["auc_var"]
    # Degrees of freedom from the real and synthetic images alone: 14 <= df <= 24 + 14.
    assert 14 <= pooled["auc_mrmc_df"] <= 38
    assert "one reader: the variance is over cases only" in pooled["note"]
    (comparison,) = summary.comparisons
    per_reader = next(
        r
        for r in imrmc_rows("imrmc_AUCperReader.csv")
        if r["readerID"] == "obs1" and r["modalityB"] == "Epsilon"
    )
    # iMRMC's variance of obs1's difference of the two arms, which share the real images.
    assert comparison["variance"] == pytest.approx(float(per_reader["varAUCAminusAUCB"]), abs=TOLERANCE)


def test_an_arm_no_reader_read_is_empty_with_a_note(reference):
    reads, _ = reference
    summary = summarize(reads, models=["Zeta"], replicates=0)
    zeta = row(summary, "Zeta")
    assert zeta["auc_mrmc"] is None and zeta["auc_mrmc_var"] is None and zeta["auc_mrmc_p"] is None
    columns = "auc_mrmc, auc_mrmc_var, auc_mrmc_df, auc_mrmc_p, auc_mrmc_ci_low, auc_mrmc_ci_high"
    assert f"{columns}: no reads of synthetic images" in zeta["note"]
    with_zeta = [c for c in summary.comparisons if "Zeta" in (c["model_a"], c["model_b"])]
    assert len(with_zeta) == 2 and len(summary.comparisons) == 3
    for comparison in with_zeta:
        assert comparison["difference"] is None and comparison["p"] is None
        assert "Zeta has no AUC (no reads of synthetic images)" in comparison["note"]
    real = row(summary, "real")
    assert real["auc_mrmc"] is None and "no synthetic images in the group" in real["note"]


def test_the_pooled_group_all_is_every_synthetic_image_against_the_real_ones(reference):
    reads, summary = reference
    everything = row(summary, "all")
    assert 0.5 < everything["auc_mrmc"] < 1 and everything["auc_mrmc_var"] > 0
    # Between the two arms' reader-averaged AUCs, weighted by their pairs.
    low, high = sorted(row(summary, m)["auc_mrmc"] for m in ("Delta", "Epsilon"))
    assert low < everything["auc_mrmc"] < high
    assert math.isfinite(everything["auc_mrmc_p"])
