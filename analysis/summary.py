"""Every figure of a study, from its reads: the rows of summary.csv, pairwise kappas, and details.

Groups: `all` (every read), `real` (real images only), and the arm of each model
(its synthetic images with every real image). Only a reader's first read of an
image counts for accuracy and agreement; repeats feed intra-reader kappa only.
The work is done on count tables (reader x image class x label), so the cost
grows with readers and images, not with a pass per figure over the reads.
"""

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import fisher_exact

from . import mrmc
from .agreement import Undefined, cohen_kappas, fleiss_kappa, gwet_ac1, krippendorff_alpha, percent_agreement
from .bootstrap import group_rng, percentile_interval, two_way_bootstrap
from .rates import fakeness_bins, wilson
from .reads import LABELS, Reads
from .roc import auc_from_histograms

SUMMARY_COLUMNS = [
    "group",
    "reader",
    "n_images",
    "n_reads",
    "n_unsure",
    "unsure_rate",
    "accuracy",
    "accuracy_ci_low",
    "accuracy_ci_high",
    "accuracy_decided",
    "sensitivity",
    "specificity",
    "fool_rate",
    "balanced_accuracy",
    "auc",
    "auc_var",
    "auc_mrmc",
    "auc_mrmc_var",
    "auc_mrmc_df",
    "auc_mrmc_p",
    "auc_mrmc_ci_low",
    "auc_mrmc_ci_high",
    "p_value",
    "ci_method",
    "accuracy_boot_low",
    "accuracy_boot_high",
    "krippendorff_alpha",
    "fleiss_kappa",
    "fleiss_z",
    "fleiss_p",
    "fleiss_kappa_real",
    "fleiss_kappa_fake",
    "fleiss_kappa_unsure",
    "gwet_ac1",
    "percent_agreement",
    "n_agreement_images",
    "n_agreement_readers",
    "intra_reader_kappa",
    "note",
]
COHEN_COLUMNS = ["group", "reader_a", "reader_b", "n_images", "kappa"]
# arm_comparisons.csv: AUC(model_a) - AUC(model_b), reader-averaged, on the same readers and
# real images (docs/analysis.md, "The MRMC analysis").
COMPARISON_COLUMNS = [
    "model_a",
    "model_b",
    "auc_a",
    "auc_b",
    "difference",
    "variance",
    "df",
    "p",
    "ci_low",
    "ci_high",
    "note",
]
MRMC_COLUMNS = {
    "auc_mrmc": "value",
    "auc_mrmc_var": "var",
    "auc_mrmc_df": "df",
    "auc_mrmc_p": "p",
    "auc_mrmc_ci_low": "ci_low",
    "auc_mrmc_ci_high": "ci_high",
}
DEFAULT_REPLICATES = 2000
DEFAULT_SEED = 0
REAL, FAKE, UNSURE = 0, 1, 2
Q = len(LABELS)


@dataclass
class GroupDetail:
    """What the results page shows of a group beyond its summary rows."""

    confusion: list[list[int]]  # truth (real, fake) x label (real, fake, unsure), pooled first reads
    intervals: dict[str, tuple[float, float] | None]  # Wilson 95% of sensitivity, specificity, fool rate
    readers: list[str]  # the readers of the kappa matrix
    kappa: np.ndarray  # readers x readers pairwise Cohen's kappa (NaN: undefined, diagonal 1)


@dataclass
class Summary:
    rows: list[dict]
    cohen: list[dict]
    groups: list[str]
    models: list[str]
    details: dict[str, GroupDetail]
    reading_seconds: dict[str, dict]  # per image class (real, each model): quantiles of first reads
    reader_median_seconds: dict[str, float | None]  # per reader, over their first reads
    replicates: int
    seed: int
    n_reads: int
    n_repeats: int = 0
    readers: list[str] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)  # the rows of arm_comparisons.csv

    def pooled(self, group: str) -> dict:
        return next(row for row in self.rows if row["group"] == group and row["reader"] == "all")


class _Row:
    """One row of summary.csv; an undefined figure is None, its reason collected for `note`."""

    def __init__(self, group: str, reader: str):
        self.values = dict.fromkeys(SUMMARY_COLUMNS)
        self.values.update(group=group, reader=reader)
        self.reasons: dict[str, list[str]] = {}
        self.remarks: list[str] = []

    def put(self, column: str, value) -> None:
        self.values[column] = value

    def missing(self, columns, reason: str) -> None:
        for column in [columns] if isinstance(columns, str) else columns:
            self.values[column] = None
            self.reasons.setdefault(reason, []).append(column)

    def ratio(self, column: str, numerator, denominator, reason: str) -> float | None:
        if denominator:
            value = float(numerator / denominator)
            self.values[column] = value
            return value
        self.missing(column, reason)
        return None

    def done(self) -> dict:
        notes = [f"{', '.join(columns)}: {reason}" for reason, columns in self.reasons.items()]
        self.values["note"] = "; ".join(notes + self.remarks)
        return self.values


def summarize(
    reads: Reads,
    *,
    models=(),
    replicates: int = DEFAULT_REPLICATES,
    seed: int = DEFAULT_SEED,
    progress=None,
) -> Summary:
    """Every figure of analysis.md for these reads.

    `models` declares arms that may have no reads yet; `progress(done, total, group)`
    is called as each group is finished (the bootstrap is the long part).
    """
    names = sorted(set(reads.models) | set(models))
    clash = set(names) & {"all", "real"}
    if clash:
        raise ValueError(f"a model may not be called {sorted(clash)[0]!r}: that name is a pooled group")
    remap = np.array([0] + [names.index(m) + 1 for m in reads.models], dtype=np.int64)
    image_class = remap[reads.image_model] if reads.images else np.zeros(0, np.int64)
    t = _Tables(reads, image_class, n_classes=len(names) + 1)
    groups = ["all", "real", *names]
    fakes = {"all": list(range(1, len(names) + 1)), "real": []}
    fakes.update({name: [k] for k, name in enumerate(names, start=1)})
    study, arms = _mrmc(t, names)
    rows, cohen, details = [], [], {}
    for group in groups:
        classes = [0, *fakes[group]]
        arm = arms.get(group)
        rows.append(_pooled_row(t, group, classes, arm, replicates=replicates, seed=seed))
        kappa, pair_rows = _pairwise(t, group, classes)
        cohen += pair_rows
        details[group] = GroupDetail(
            confusion=_confusion(t, classes),
            intervals=_intervals(t, classes),
            readers=reads.readers,
            kappa=kappa,
        )
        for index, reader in enumerate(reads.readers):
            rows.append(_reader_row(t, group, classes, arm, index, reader))
        if progress is not None:
            progress(len(details), len(groups), group)
    return Summary(
        rows=rows,
        cohen=cohen,
        groups=groups,
        models=names,
        details=details,
        reading_seconds=_reading_seconds(t, ["real", *names]),
        reader_median_seconds=_reader_medians(t),
        replicates=replicates,
        seed=seed,
        n_reads=len(reads),
        n_repeats=int(reads.repeat.sum()),
        readers=reads.readers,
        comparisons=_comparisons(study, arms, names),
    )


class _Tables:
    """The count tables every figure is read from."""

    def __init__(self, reads: Reads, image_class: np.ndarray, n_classes: int):
        self.reads = reads
        self.n_readers, self.n_images, self.n_classes = len(reads.readers), len(reads.images), n_classes
        self.image_class = image_class
        first = ~reads.repeat
        r, i, lab = reads.reader[first], reads.image[first], reads.label[first].astype(np.int64)
        c = image_class[i]
        self.first = (r, i, lab, c)
        self.scores = 11 if reads.has_confidence else 3
        score = fakeness_bins(lab, reads.confidence[first].astype(np.int64), reads.has_confidence)
        self.first_score = score
        cell = r * n_classes + c
        shape = (self.n_readers, n_classes)
        self.labels = np.bincount(cell * Q + lab, minlength=np.prod(shape) * Q).reshape(*shape, Q)
        self.score_hist = np.bincount(cell * self.scores + score, minlength=np.prod(shape) * self.scores)
        self.score_hist = self.score_hist.reshape(*shape, self.scores)
        self.per_image = np.bincount(i * Q + lab, minlength=self.n_images * Q).reshape(self.n_images, Q)
        self.seconds = reads.seconds[first]
        self.unmatched_repeats = np.zeros(n_classes, dtype=np.int64)
        self.pairs = self._repeat_pairs(r, i, lab)
        self.has_repeats = bool(reads.repeat.any())
        # One-hot labels, (readers * 3) x images: the products of its columns are pairs' tables.
        onehot = np.zeros((self.n_readers * Q, self.n_images), dtype=np.float32)
        onehot[r * Q + lab, i] = 1
        self.pair_tables = []
        for k in range(n_classes):
            columns = onehot[:, image_class == k]
            self.pair_tables.append(columns @ columns.T)
        self.correct = np.zeros((self.n_readers, self.n_images))
        self.read = np.zeros((self.n_readers, self.n_images))
        truth = np.where(c == 0, REAL, FAKE)
        self.read[r, i] = 1
        self.correct[r, i] = lab == truth

    def _repeat_pairs(self, r, i, lab) -> np.ndarray:
        """(reader, class, first label, repeat label) counts of each reader's repeated images."""
        reads = self.reads
        out = np.zeros((self.n_readers, self.n_classes, Q, Q), dtype=np.int64)
        rep = reads.repeat
        if not rep.any():
            return out
        keys = r * self.n_images + i
        order = np.argsort(keys)
        keys, first_label = keys[order], lab[order]
        rep_keys = reads.reader[rep] * self.n_images + reads.image[rep]
        where = np.clip(np.searchsorted(keys, rep_keys), 0, max(keys.size - 1, 0))
        found = keys.size > 0
        matched = (keys[where] == rep_keys) if found else np.zeros(rep_keys.size, bool)
        # Per image class, so that each group counts only its own.
        lost = reads.image[rep][~matched]
        self.unmatched_repeats = np.bincount(self.image_class[lost], minlength=self.n_classes)
        rr, ii = reads.reader[rep][matched], reads.image[rep][matched]
        cell = ((rr * self.n_classes + self.image_class[ii]) * Q + first_label[where[matched]]) * Q
        cell = cell + reads.label[rep][matched].astype(np.int64)
        out += np.bincount(cell, minlength=out.size).reshape(out.shape)
        return out

    def split(self, table: np.ndarray, classes: list[int]) -> tuple[np.ndarray, np.ndarray]:
        """Sum a reader x class x ... table over the real and over the fake classes of a group."""
        real = table[:, 0]
        fake = table[:, classes[1:]].sum(axis=1) if len(classes) > 1 else np.zeros_like(real)
        return real, fake


def _rates(row: _Row, real: np.ndarray, fake: np.ndarray, hist_real, hist_fake) -> None:
    """The rates of one row from its label counts (real, fake, unsure) on real and fake images."""
    n_real, n_fake = int(real.sum()), int(fake.sum())
    n = n_real + n_fake
    unsure = int(real[UNSURE] + fake[UNSURE])
    correct = int(real[REAL] + fake[FAKE])
    row.put("n_reads", n)
    row.put("n_unsure", unsure)
    no_reads = "no reads"
    row.ratio("unsure_rate", unsure, n, no_reads)
    if row.ratio("accuracy", correct, n, no_reads) is None:
        row.missing(["accuracy_ci_low", "accuracy_ci_high"], no_reads)
    else:
        low, high = wilson(correct, n)
        row.put("accuracy_ci_low", low)
        row.put("accuracy_ci_high", high)
    row.ratio("accuracy_decided", correct, n - unsure, "every read was unsure" if n else no_reads)
    no_fake, no_real = "no reads of synthetic images", "no reads of real images"
    sensitivity = row.ratio("sensitivity", fake[FAKE], n_fake, no_fake)
    specificity = row.ratio("specificity", real[REAL], n_real, no_real)
    row.ratio("fool_rate", fake[REAL], n_fake, no_fake)
    if sensitivity is None or specificity is None:
        row.missing("balanced_accuracy", no_fake if sensitivity is None else no_real)
    else:
        row.put("balanced_accuracy", (sensitivity + specificity) / 2)
    auc = auc_from_histograms(hist_fake, hist_real)
    if auc is None:
        row.missing("auc", no_fake if n_fake == 0 else no_real)
    else:
        row.put("auc", auc)
    table = np.array([[real[REAL], real[FAKE]], [fake[REAL], fake[FAKE]]])
    if (table.sum(axis=0) == 0).any() or (table.sum(axis=1) == 0).any():
        row.missing("p_value", "a margin of the decided truth x label table is 0")
    else:
        row.put("p_value", float(fisher_exact(table).pvalue))


def _reader_row(t: _Tables, group: str, classes: list[int], arm, index: int, reader: str) -> dict:
    row = _Row(group, reader)
    real, fake = t.split(t.labels[index : index + 1], classes)
    hist_real, hist_fake = t.split(t.score_hist[index : index + 1], classes)
    _rates(row, real[0], fake[0], hist_real[0], hist_fake[0])
    auc_missing = next((why for why, columns in row.reasons.items() if "auc" in columns), None)
    if auc_missing is not None:
        row.missing("auc_var", auc_missing)
    elif not np.isfinite(arm.reader_var[index]):
        row.missing("auc_var", "undefined")
    else:
        row.put("auc_var", float(arm.reader_var[index]))
    row.put("n_images", row.values["n_reads"])  # first reads: one per image
    row.put("ci_method", "wilson")
    if t.has_repeats:
        pairs_real, pairs_fake = t.split(t.pairs[index : index + 1], classes)
        _intra(row, pairs_real[0] + pairs_fake[0])
    return row.done()


def _intra(row: _Row, table: np.ndarray) -> None:
    kappa, reasons = cohen_kappas(table)
    if reasons[0]:
        reason = "no repeated image" if reasons[0] == "no image read by both" else reasons[0]
        row.missing("intra_reader_kappa", reason)
    else:
        row.put("intra_reader_kappa", float(kappa))


def _pooled_row(t: _Tables, group: str, classes: list[int], arm, *, replicates: int, seed: int) -> dict:
    row = _Row(group, "all")
    real, fake = t.split(t.labels, classes)
    hist_real, hist_fake = t.split(t.score_hist, classes)
    _rates(row, real.sum(axis=0), fake.sum(axis=0), hist_real.sum(axis=0), hist_fake.sum(axis=0))
    if arm is None:
        row.missing(list(MRMC_COLUMNS), "no synthetic images in the group")
    else:
        _put_estimate(row, arm.auc, MRMC_COLUMNS)
    in_group = np.isin(t.image_class, classes)
    counts = t.per_image[in_group]
    row.put("n_images", int((counts.sum(axis=1) > 0).sum()))
    readers = np.flatnonzero((real.sum(axis=1) + fake.sum(axis=1)) > 0)
    _bootstrap(row, t, group, readers, np.flatnonzero(in_group), replicates=replicates, seed=seed)
    _agreement(row, t, counts, in_group, n_readers=readers.size)
    if t.has_repeats:
        pairs_real, pairs_fake = t.split(t.pairs, classes)
        _intra(row, pairs_real.sum(axis=0) + pairs_fake.sum(axis=0))
        lost = int(t.unmatched_repeats[classes].sum())
        if lost:
            row.remarks.append(f"{lost} repeat reads without a first read were left out")
    return row.done()


def _put_estimate(row: _Row, estimate: mrmc.Estimate, columns: dict[str, str]) -> None:
    """The figures of an MRMC estimate into the row's columns, the undefined ones with the reason."""
    missing = []
    for column, attribute in columns.items():
        value = getattr(estimate, attribute)
        if value is None:
            missing.append(column)
        else:
            row.put(column, value)
    if missing:
        row.missing(missing, estimate.note)
    if estimate.remark:
        row.remarks.append(f"{', '.join(columns)}: {estimate.remark}")


def _mrmc(t: _Tables, names: list[str]) -> tuple[mrmc.Study, dict[str, mrmc.ArmAuc]]:
    """The MRMC analysis of each arm and of all synthetic images together, on first reads."""
    r, i, _, _ = t.first
    levels = np.full((t.n_images, t.n_readers), -1, dtype=np.int64)
    levels[i, r] = t.first_score
    study = mrmc.Study(levels[t.image_class == 0], t.scores)
    sides = {name: mrmc.Cases(levels[t.image_class == k], t.scores) for k, name in enumerate(names, start=1)}
    arms = {name: study.arm(side) for name, side in sides.items()}
    arms["all"] = study.arm(mrmc.Cases.joined(list(sides.values()), t.n_readers, t.scores))
    return study, arms


def _comparisons(study: mrmc.Study, arms: dict[str, mrmc.ArmAuc], names: list[str]) -> list[dict]:
    """One row of arm_comparisons.csv per pair of arms, in the order of their names."""
    columns = {
        "difference": "value",
        "variance": "var",
        "df": "df",
        "p": "p",
        "ci_low": "ci_low",
        "ci_high": "ci_high",
    }
    rows = []
    for x, a in enumerate(names):
        for b in names[x + 1 :]:
            estimate = study.compare(arms[a], arms[b])
            values = {"model_a": a, "model_b": b, "auc_a": arms[a].auc.value, "auc_b": arms[b].auc.value}
            values.update({column: getattr(estimate, attribute) for column, attribute in columns.items()})
            undefined = [column for column in ["auc_a", "auc_b", *columns] if values[column] is None]
            why = estimate.note
            empty = [name for name in (a, b) if arms[name].auc.value is None]
            if empty:
                why = "; ".join(f"{name} has no AUC ({arms[name].auc.note})" for name in empty)
            notes = [f"{', '.join(undefined)}: {why}"] if undefined else []
            if estimate.remark:
                notes.append(estimate.remark)
            values["note"] = "; ".join(notes)
            rows.append(values)
    return rows


def _bootstrap(row: _Row, t: _Tables, group: str, readers, images, *, replicates: int, seed: int) -> None:
    columns = ["accuracy_boot_low", "accuracy_boot_high"]
    if replicates <= 0:
        row.put("ci_method", "wilson")
        row.missing(columns, "the bootstrap was not run (B = 0)")
        return
    row.put("ci_method", f"wilson; two-way bootstrap B={replicates} seed={seed}")
    if row.values["n_reads"] == 0:
        row.missing(columns, "no reads")
        return
    read = t.read[np.ix_(readers, images)]
    seen = read.sum(axis=0) > 0
    images, read = images[seen], read[:, seen]
    correct = t.correct[np.ix_(readers, images)]
    fake = t.image_class[images] > 0
    strata = [np.flatnonzero(~fake), np.flatnonzero(fake)]
    values = two_way_bootstrap(correct, read, strata, replicates=replicates, rng=group_rng(seed, group))
    interval = percentile_interval(values)
    if interval is None:
        row.missing(columns, "no bootstrap replicate drew a read")
        return
    row.put("accuracy_boot_low", interval[0])
    row.put("accuracy_boot_high", interval[1])
    empty = int(np.isnan(values).sum())
    if empty:
        row.remarks.append(f"{empty} of {replicates} bootstrap replicates drew no read and were left out")
    if readers.size == 1:
        row.remarks.append("one reader: the bootstrap resamples images only")


def _agreement(row: _Row, t: _Tables, counts: np.ndarray, in_group: np.ndarray, *, n_readers: int) -> None:
    m = counts.sum(axis=1)
    paired = m >= 2
    row.put("n_agreement_images", int(paired.sum()))
    r, i, _, _ = t.first
    row.put("n_agreement_readers", int(np.unique(r[np.isin(i, np.flatnonzero(in_group)[paired])]).size))
    for column, coefficient in [
        ("krippendorff_alpha", krippendorff_alpha),
        ("gwet_ac1", lambda c: gwet_ac1(c, q=Q)),
        ("percent_agreement", percent_agreement),
    ]:
        try:
            row.put(column, coefficient(counts))
        except Undefined as exc:
            row.missing(column, str(exc))
    fleiss_columns = ["fleiss_kappa", "fleiss_z", "fleiss_p"]
    per_category = [f"fleiss_kappa_{label}" for label in LABELS]
    if n_readers < 2:
        row.missing(fleiss_columns + per_category, "fewer than two readers")
        return
    complete = counts[m == n_readers]
    try:
        result = fleiss_kappa(complete)
    except Undefined as exc:
        row.missing(fleiss_columns + per_category, str(exc))
        return
    row.put("fleiss_kappa", result.kappa)
    if result.z is None:
        row.missing(["fleiss_z", "fleiss_p"], "the null variance is 0")
    else:
        row.put("fleiss_z", result.z)
        row.put("fleiss_p", result.p)
    for column, label, value in zip(per_category, LABELS, result.per_category, strict=True):
        if value is None:
            used = complete[:, LABELS.index(label)].sum()
            row.missing(column, f"{label} {'was never' if used == 0 else 'was always'} the label")
        else:
            row.put(column, value)
    if complete.shape[0] < paired.sum():
        row.remarks.append(f"Fleiss' kappa on the {complete.shape[0]} images read by all {n_readers} readers")


def _pairwise(t: _Tables, group: str, classes: list[int]) -> tuple[np.ndarray, list[dict]]:
    """Cohen's kappa of every pair of readers on the images both read (pairwise deletion)."""
    n = t.n_readers
    total = sum(t.pair_tables[k] for k in classes)
    tables = total.reshape(n, Q, n, Q).transpose(0, 2, 1, 3)
    kappa, _ = cohen_kappas(tables)
    kappa = kappa.reshape(n, n)
    counts = tables.sum(axis=(2, 3))
    rows = []
    for a in range(n):
        for b in range(a + 1, n):
            value = kappa[a, b]
            rows.append(
                {
                    "group": group,
                    "reader_a": t.reads.readers[a],
                    "reader_b": t.reads.readers[b],
                    "n_images": int(counts[a, b]),
                    # Empty where undefined: n_images 0 (no image read by both) or one label only.
                    "kappa": None if np.isnan(value) else float(value),
                }
            )
    matrix = kappa.copy()
    np.fill_diagonal(matrix, np.where(counts.diagonal() > 0, 1.0, np.nan))
    return matrix, rows


def _confusion(t: _Tables, classes: list[int]) -> list[list[int]]:
    real, fake = t.split(t.labels, classes)
    return [real.sum(axis=0).tolist(), fake.sum(axis=0).tolist()]


def _intervals(t: _Tables, classes: list[int]) -> dict:
    real, fake = (part.sum(axis=0) for part in t.split(t.labels, classes))
    return {
        "sensitivity": wilson(int(fake[FAKE]), int(fake.sum())),
        "specificity": wilson(int(real[REAL]), int(real.sum())),
        "fool_rate": wilson(int(fake[REAL]), int(fake.sum())),
    }


def _reading_seconds(t: _Tables, names: list[str]) -> dict[str, dict]:
    _, _, _, c = t.first
    out = {}
    for k, name in enumerate(names):
        seconds = t.seconds[(c == k) & np.isfinite(t.seconds)]
        if seconds.size:
            p5, q1, median, q3, p95 = np.percentile(seconds, [5, 25, 50, 75, 95]).tolist()
            out[name] = {"n": int(seconds.size), "p5": p5, "q1": q1, "median": median, "q3": q3, "p95": p95}
        else:
            out[name] = {"n": 0}
    return out


def _reader_medians(t: _Tables) -> dict[str, float | None]:
    r = t.first[0]
    out = {}
    for index, reader in enumerate(t.reads.readers):
        seconds = t.seconds[(r == index) & np.isfinite(t.seconds)]
        out[reader] = float(np.median(seconds)) if seconds.size else None
    return out
