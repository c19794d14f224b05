"""The summary of analysis.md on reads small enough to check by hand, and on the spec's edge cases."""

import math

import numpy as np
import pytest

from analysis.summary import COHEN_COLUMNS, SUMMARY_COLUMNS, summarize
from tests.analysis.reads_fixtures import make_reads

# Two readers, three real images, two of model m1 and one of m2, no confidence.
HAND = [
    ("A", "r1", "", "real"), ("A", "r2", "", "real"), ("A", "r3", "", "fake"),
    ("A", "f1", "m1", "fake"), ("A", "f2", "m1", "real"), ("A", "g1", "m2", "unsure"),
    ("B", "r1", "", "real"), ("B", "r2", "", "unsure"), ("B", "r3", "", "real"),
    ("B", "f1", "m1", "fake"), ("B", "f2", "m1", "fake"), ("B", "g1", "m2", "fake"),
]  # fmt: skip


def row(summary, group, reader="all"):
    return next(r for r in summary.rows if r["group"] == group and r["reader"] == reader)


@pytest.fixture(scope="module")
def hand():
    return summarize(make_reads(HAND), replicates=200)


def test_rows_come_in_the_spec_order_one_pooled_row_then_each_reader(hand):
    assert all(list(r) == SUMMARY_COLUMNS for r in hand.rows)
    assert [(r["group"], r["reader"]) for r in hand.rows] == [
        (group, reader) for group in ("all", "real", "m1", "m2") for reader in ("all", "A", "B")
    ]
    assert all(list(r) == COHEN_COLUMNS for r in hand.cohen)


def test_pooled_rates_match_the_hand_count(hand):
    pooled = row(hand, "all")
    assert pooled["n_images"] == 6 and pooled["n_reads"] == 12 and pooled["n_unsure"] == 2
    assert pooled["unsure_rate"] == pytest.approx(2 / 12)
    assert pooled["accuracy"] == pytest.approx(8 / 12)
    assert pooled["accuracy_decided"] == pytest.approx(8 / 10)
    assert pooled["sensitivity"] == pytest.approx(4 / 6)
    assert pooled["specificity"] == pytest.approx(4 / 6)
    assert pooled["fool_rate"] == pytest.approx(1 / 6)
    assert pooled["balanced_accuracy"] == pytest.approx(4 / 6)
    # Fakeness scores of real reads 0,0,1,0,.5,0 and of fake reads 1,0,.5,1,1,1: U = 28.5 of 36.
    assert pooled["auc"] == pytest.approx(28.5 / 36)
    # Decided reads, truth x label [[4, 1], [1, 4]]: two-sided Fisher p = (1+25+25+1)/252.
    assert pooled["p_value"] == pytest.approx(52 / 252)
    assert (pooled["accuracy_ci_low"], pooled["accuracy_ci_high"]) == pytest.approx(
        (0.3906, 0.8619), abs=1e-4
    )


def test_each_arm_is_its_models_images_against_every_real_image(hand):
    assert row(hand, "real")["accuracy"] == pytest.approx(4 / 6)
    assert row(hand, "m1")["accuracy"] == pytest.approx(7 / 10)
    assert row(hand, "m2")["accuracy"] == pytest.approx(5 / 8)
    assert row(hand, "m2")["n_images"] == 4
    real = row(hand, "real")
    assert real["sensitivity"] is None and real["auc"] is None and real["p_value"] is None
    assert "no reads of synthetic images" in real["note"]


def test_a_readers_row(hand):
    a = row(hand, "all", "A")
    assert (a["n_reads"], a["accuracy"], a["accuracy_decided"]) == (6, 0.5, pytest.approx(0.6))
    assert (a["sensitivity"], a["specificity"], a["fool_rate"]) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
    assert a["ci_method"] == "wilson" and a["accuracy_boot_low"] is None


def test_agreement_matches_the_hand_count(hand):
    pooled = row(hand, "all")
    # Images' label counts (real, fake, unsure): (2,0,0) (1,0,1) (1,1,0) (0,2,0) (1,1,0) (0,1,1).
    assert pooled["percent_agreement"] == pytest.approx(2 / 6)
    assert pooled["krippendorff_alpha"] == pytest.approx(1 - (2 / 3) / (90 / 132))
    assert pooled["fleiss_kappa"] == pytest.approx((2 / 6 - 54 / 144) / (1 - 54 / 144))
    assert pooled["gwet_ac1"] == pytest.approx((2 / 6 - 0.3125) / (1 - 0.3125))
    assert (pooled["n_agreement_images"], pooled["n_agreement_readers"]) == (6, 2)
    (pair,) = [p for p in hand.cohen if p["group"] == "all"]
    assert (pair["reader_a"], pair["reader_b"], pair["n_images"]) == ("A", "B", 6)
    assert pair["kappa"] == pytest.approx(-1 / 23)  # table [[1,1,1],[1,1,0],[0,1,0]]


def test_pooled_rows_carry_the_seeded_bootstrap(hand):
    pooled = row(hand, "all")
    assert pooled["ci_method"] == "wilson; two-way bootstrap B=200 seed=0"
    assert pooled["accuracy_boot_low"] <= pooled["accuracy"] <= pooled["accuracy_boot_high"]
    again = summarize(make_reads(HAND), replicates=200)
    assert again.rows == hand.rows
    other = summarize(make_reads(HAND), replicates=200, seed=1)
    assert (
        row(other, "all")["accuracy_boot_low"] != pooled["accuracy_boot_low"]
        or row(other, "all")["accuracy_boot_high"] != pooled["accuracy_boot_high"]
    )


def test_a_groups_bootstrap_does_not_depend_on_the_other_arms():
    without_m2 = [read for read in HAND if read[2] != "m2"]
    full = summarize(make_reads(HAND), replicates=200)
    fewer = summarize(make_reads(without_m2), replicates=200)
    assert row(full, "m1")["accuracy_boot_low"] == row(fewer, "m1")["accuracy_boot_low"]
    assert row(full, "real")["accuracy_boot_high"] == row(fewer, "real")["accuracy_boot_high"]


def test_repeats_feed_intra_reader_kappa_only():
    repeats = [
        ("A", "r1", "", "real", None, True),
        ("A", "f1", "m1", "fake", None, True),
        ("A", "r2", "", "fake", None, True),
        ("A", "f2", "m1", "real", None, True),
    ]
    summary = summarize(make_reads(HAND + repeats), replicates=50)
    a = row(summary, "all", "A")
    assert a["n_reads"] == 6 and a["accuracy"] == 0.5  # as without repeats
    # First x repeat [[2,1,0],[0,1,0],[0,0,0]]: p_o = 3/4, p_e = (3*2 + 1*2)/16, kappa = 0.5.
    assert a["intra_reader_kappa"] == pytest.approx(0.5)
    b = row(summary, "all", "B")
    assert b["intra_reader_kappa"] is None and "intra_reader_kappa: no repeated image" in b["note"]
    assert row(summary, "all")["intra_reader_kappa"] == pytest.approx(0.5)  # only A's pairs
    assert (
        row(summary, "all")["percent_agreement"]
        == row(summarize(make_reads(HAND)), "all")["percent_agreement"]
    )


def test_one_reader():
    summary = summarize(make_reads([read for read in HAND if read[0] == "A"]), replicates=100)
    pooled = row(summary, "all")
    assert pooled["accuracy"] == 0.5
    assert pooled["krippendorff_alpha"] is None and pooled["fleiss_kappa"] is None
    assert "krippendorff_alpha, gwet_ac1, percent_agreement: no image has two reads" in pooled["note"]
    assert "fewer than two readers" in pooled["note"]
    assert "one reader: the bootstrap resamples images only" in pooled["note"]
    assert pooled["accuracy_boot_low"] is not None
    assert summary.cohen == []


def test_a_reader_who_answered_unsure_to_everything():
    reads = HAND + [("C", image, model, "unsure") for _, image, model, _ in HAND[:6]]
    c = row(summarize(make_reads(reads), replicates=0), "all", "C")
    assert (c["n_reads"], c["n_unsure"], c["unsure_rate"], c["accuracy"]) == (6, 6, 1.0, 0.0)
    assert c["accuracy_decided"] is None and "accuracy_decided: every read was unsure" in c["note"]
    assert (c["sensitivity"], c["specificity"], c["fool_rate"]) == (0.0, 0.0, 0.0)
    assert c["auc"] == 0.5  # one score for every read: ties count half
    assert c["p_value"] is None and "margin" in c["note"]
    pairs = {
        (p["reader_a"], p["reader_b"]): p for p in summarize(make_reads(reads)).cohen if p["group"] == "all"
    }
    assert pairs[("A", "C")]["kappa"] == 0.0  # C's one label: chance agreement equals observed


def test_a_model_with_no_reads_is_an_arm_of_real_images_only():
    summary = summarize(make_reads(HAND), models=["m3"], replicates=50)
    assert summary.groups == ["all", "real", "m1", "m2", "m3"]
    arm = row(summary, "m3")
    assert arm["n_reads"] == 6 and arm["accuracy"] == row(summary, "real")["accuracy"]
    assert arm["sensitivity"] is None and "no reads of synthetic images" in arm["note"]
    assert row(summary, "m3", "A")["n_reads"] == 3


def test_no_reads_at_all_gives_empty_cells_with_notes_not_a_crash():
    summary = summarize(make_reads([]), replicates=100)
    assert [r["group"] for r in summary.rows] == ["all", "real"]
    pooled = row(summary, "all")
    assert pooled["n_reads"] == 0 and pooled["accuracy"] is None and "no reads" in pooled["note"]
    assert not any(isinstance(v, float) and math.isnan(v) for r in summary.rows for v in r.values())


def test_perfect_agreement_on_one_category():
    # Every reader calls every image fake: no variation, so alpha, kappa and Cohen are undefined;
    # agreement is total and AC1 is 1.
    same = [(reader, image, model, "fake") for reader in "ABC" for _, image, model, _ in HAND[:6]]
    pooled = row(summarize(make_reads(same), replicates=0), "all")
    assert pooled["percent_agreement"] == 1.0 and pooled["gwet_ac1"] == 1.0
    assert pooled["krippendorff_alpha"] is None and pooled["fleiss_kappa"] is None
    assert "no variation" in pooled["note"]
    # Readers who agree perfectly on which images are fake (and disagree on the rest) have a
    # per-category kappa of 1 for fake.
    split = [
        ("A", "f1", "m1", "fake"), ("B", "f1", "m1", "fake"),
        ("A", "f2", "m1", "fake"), ("B", "f2", "m1", "fake"),
        ("A", "r1", "", "real"), ("B", "r1", "", "unsure"),
        ("A", "r2", "", "unsure"), ("B", "r2", "", "real"),
    ]  # fmt: skip
    pooled = row(summarize(make_reads(split), replicates=0), "all")
    assert pooled["fleiss_kappa_fake"] == pytest.approx(1.0)
    assert pooled["fleiss_kappa_real"] < 0


def test_unequal_images_per_model():
    reads = [(r, f"real{i}", "", "real") for r in "AB" for i in range(4)]
    reads += [(r, f"a{i}", "small", "fake" if i else "real") for r in "AB" for i in range(2)]
    reads += [(r, f"b{i}", "large", "fake" if i < 3 else "real") for r in "AB" for i in range(10)]
    summary = summarize(make_reads(reads), replicates=0)
    assert row(summary, "small")["n_images"] == 6 and row(summary, "large")["n_images"] == 14
    assert row(summary, "small")["sensitivity"] == pytest.approx(0.5)
    assert row(summary, "large")["sensitivity"] == pytest.approx(0.3)
    # Pooled over models, every fake read weighs the same: (2 + 6) fake-labelled of 24 fake reads.
    assert row(summary, "all")["sensitivity"] == pytest.approx(8 / 24)


def test_readers_who_stopped_halfway():
    import krippendorff

    full = [(r, image, model, label) for r, image, model, label in HAND]
    partial = [("C", "r1", "", "real"), ("C", "f1", "m1", "fake"), ("C", "r2", "", "real")]
    summary = summarize(make_reads(full + partial), replicates=0)
    pooled = row(summary, "all")
    assert pooled["n_agreement_images"] == 6 and pooled["n_agreement_readers"] == 3
    assert "Fleiss' kappa on the 3 images read by all 3 readers" in pooled["note"]
    # Alpha uses every image with two reads, C's missing ones too: compare with the package.
    images = ["f1", "f2", "g1", "r1", "r2", "r3"]
    codes = {"real": 0, "fake": 1, "unsure": 2}
    data = np.full((3, 6), np.nan)
    for r, image, _, label in full + partial:
        data["ABC".index(r), images.index(image)] = codes[label]
    expected = krippendorff.alpha(
        reliability_data=data, level_of_measurement="nominal", value_domain=[0, 1, 2]
    )
    assert pooled["krippendorff_alpha"] == pytest.approx(expected, abs=1e-12)
    pairs = {(p["reader_a"], p["reader_b"]): p["n_images"] for p in summary.cohen if p["group"] == "all"}
    assert pairs == {("A", "B"): 6, ("A", "C"): 3, ("B", "C"): 3}


def test_the_auc_uses_the_confidence_scale_when_reads_have_one():
    reads = [
        ("A", "r1", "", "real", 5), ("A", "r2", "", "real", 2), ("A", "r3", "", "unsure", 3),
        ("A", "f1", "m1", "fake", 1), ("A", "f2", "m1", "real", 1), ("A", "f3", "m1", "fake", 4),
    ]  # fmt: skip
    # Scores: real reads 1, 4, 6; fake reads 7, 5, 10. Fake above real in 8 of 9 pairs.
    assert row(summarize(make_reads(reads), replicates=0), "all")["auc"] == pytest.approx(8 / 9)


def test_a_model_called_like_a_pooled_group_is_refused():
    with pytest.raises(ValueError, match="pooled group"):
        summarize(make_reads(HAND), models=["all"])


def test_a_bootstrap_whose_replicates_draw_no_read_says_so():
    # Two readers, each read a different image: a replicate that draws reader a twice and the
    # other image twice holds no read at all (1 in 8 here).
    reads = make_reads([("a", "x1", "", "real"), ("b", "x2", "", "real")])
    pooled = row(summarize(reads, replicates=40, seed=0), "all")
    assert pooled["accuracy_boot_low"] is not None
    assert "4 of 40 bootstrap replicates drew no read and were left out" in pooled["note"]
    only_empty = row(summarize(reads, replicates=1, seed=10), "all")  # its one replicate is empty
    assert only_empty["accuracy_boot_low"] is None
    assert "accuracy_boot_low, accuracy_boot_high: no bootstrap replicate drew a read" in only_empty["note"]
