"""The multi-reader multi-case (MRMC) analysis of AUC, as the FDA's iMRMC program does it.

Per arm: the reader-averaged AUC over the case pairs each reader read, its variance by the
unbiased U-statistic estimate of Gallas (2006, Acad Radiol 13:353) with missing reads allowed
(Gallas & Brown 2008, Neural Networks 21:387; Gallas, Pennello & Myers 2009, Commun Stat A
38:2586), the Satterthwaite degrees of freedom that iMRMC 4.0.3 reports as "BDG"
(StatTest.calcDF_BDGms), a p-value against AUC 0.5 and a 95% interval. Per pair of arms read
by the same readers on the same real images: the difference of their AUCs with its own
variance, degrees of freedom, interval and p-value. Per reader: the AUC and its variance.

Words: a *normal* case is a real image (truth 0), a *signal* case a synthetic one (truth 1).
Scores are the fakeness-score bins 0..K-1 (analysis.md). For reader r, normal i and signal j,
the kernel s = 1, 1/2 or 0 as j scored above, level with or below i, and d = 1 where r read
both. iMRMC's variance is a sum of eight moments, each the mean of s(r,i,j) s(r',i',j') over
the pairs of read triples whose readers, normals and signals are or are not the same:

    moment  1     2     3     4     5     6     7     8
    r = r'  yes   yes   yes   yes   no    no    no    no
    i = i'  yes   no    yes   no    yes   no    yes   no
    j = j'  yes   yes   no    no    yes   yes   no    no

weighted by how many such pairs there are (their share of all pairs), less the square of the
AUC, estimated by moment 8 (CovMRMC.doAUCcovUstatistics). Every sum here is counted from
per-reader score histograms and from reader x score co-occurrence tables, never by a loop over
case pairs: a study of 100 readers x 10,000 images costs well under a second.

Where a study's arms meet: every real image belongs to every arm with the same reads, and a
synthetic image to its own arm only, exactly as one iMRMC file in which each arm is a modality
and the real images' reads appear once per modality (files.imrmc_all_csv). This module relies
on that: two different arms share their normal cases and no signal case.
"""

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import stats

# iMRMC's map from the eight biased sums to the unbiased moments' numerators (and
# denominators): each subtracts the sums of the more specific patterns it contains.
UNBIAS = np.array(
    [
        [1, 0, 0, 0, 0, 0, 0, 0],
        [-1, 1, 0, 0, 0, 0, 0, 0],
        [-1, 0, 1, 0, 0, 0, 0, 0],
        [1, -1, -1, 1, 0, 0, 0, 0],
        [-1, 0, 0, 0, 1, 0, 0, 0],
        [1, -1, 0, 0, -1, 1, 0, 0],
        [1, 0, -1, 0, -1, 0, 1, 0],
        [-1, 1, 1, -1, 1, -1, -1, 1],
    ],
    dtype=float,
)
# From the eight moments' coefficients and biased moments to the seven components of variance
# of Barrett, Clarkson & Kupinski ("BCK"): normal, signal, normal x signal, reader, reader x
# normal, reader x signal, reader x normal x signal (DBRecord.genBCKCoeff and BDG2BCK).
BCK_COEFFICIENTS = np.array(
    [
        [1, 0, 1, 0, 1, 0, 1, 0],
        [1, 1, 0, 0, 1, 1, 0, 0],
        [1, 0, 0, 0, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 0, 1, 0, 0, 0, 0, 0],
        [1, 1, 0, 0, 0, 0, 0, 0],
        [1, 0, 0, 0, 0, 0, 0, 0],
    ],
    dtype=float,
)
BCK_COMPONENTS = np.array(
    [
        [0, 0, 0, 0, 0, 0, 1, -1],
        [0, 0, 0, 0, 0, 1, 0, -1],
        [0, 0, 0, 0, 1, -1, -1, 1],
        [0, 0, 0, 1, 0, 0, 0, -1],
        [0, 0, 1, -1, 0, 0, -1, 1],
        [0, 1, 0, -1, 0, -1, 0, 1],
        [1, -1, -1, 1, -1, 1, 1, -1],
    ],
    dtype=float,
)
NORMAL, SIGNAL, READER = 0, 1, 3  # the BCK components that carry degrees of freedom
NORMAL_APPROXIMATION_DF = 50  # from here on iMRMC takes the normal distribution for the t
ROW_CHUNK = 4096  # cases per block of the co-occurrence tables: bounds their memory


@dataclass(frozen=True)
class Estimate:
    """An AUC (or a difference of two) with its variance and test; None where undefined, `note` says why."""

    value: float | None
    var: float | None = None
    df: float | None = None
    p: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    note: str = ""  # why the figures that are None are undefined
    remark: str = ""  # a caveat on the figures that are given


@dataclass(frozen=True)
class ArmAuc:
    """The MRMC analysis of one arm: the reader-averaged AUC and each reader's AUC and variance."""

    auc: Estimate
    reader_auc: np.ndarray  # per reader; NaN where the reader read no normal or no signal case
    reader_var: np.ndarray  # per reader; NaN where undefined
    n_readers: int  # readers who read at least one pair of the arm
    # What the comparisons need of this arm, kept from its sums.
    _kept: dict | None = field(default=None, repr=False, compare=False)


class Cases:
    """One side of the case pairs: which reader read which case at which score bin.

    `levels` is cases x readers, the bin of each reader's read of each case, -1 where the
    reader did not read it.
    """

    def __init__(self, levels: np.ndarray, n_levels: int):
        self.levels = np.asarray(levels, dtype=np.int64)
        self.k = n_levels
        self.n_cases, self.n_readers = self.levels.shape
        self.read = self.levels >= 0
        rows, readers = np.nonzero(self.read)
        codes = readers * self.k + self.levels[rows, readers]
        self.hist = np.bincount(codes, minlength=self.n_readers * self.k).reshape(self.n_readers, self.k)
        self.hist = self.hist.astype(float)
        self._cooccurrence = None

    @classmethod
    def joined(cls, parts: list["Cases"], n_readers: int, n_levels: int) -> "Cases":
        """The cases of all parts as one side (the pooled group `all` from the arms)."""
        levels = [part.levels for part in parts] or [np.full((0, n_readers), -1, np.int64)]
        joined = cls(np.vstack(levels), n_levels)
        if parts and all(part._cooccurrence is not None for part in parts):
            joined._cooccurrence = sum(part._cooccurrence for part in parts)
        return joined

    def cooccurrence(self) -> np.ndarray:
        """readers x bins x readers x bins: how many cases reader r read at bin a and r' at bin b."""
        if self._cooccurrence is None:
            width = self.n_readers * self.k
            total = np.zeros((width, width))
            for start in range(0, self.n_cases, ROW_CHUNK):
                block = self.levels[start : start + ROW_CHUNK]
                rows, readers = np.nonzero(block >= 0)
                onehot = np.zeros((block.shape[0], width), np.float32)
                onehot[rows, readers * self.k + block[rows, readers]] = 1
                total += onehot.T @ onehot  # counts below 2**24: exact in float32
            self._cooccurrence = total.reshape(self.n_readers, self.k, self.n_readers, self.k)
        return self._cooccurrence

    def gather(self, table: np.ndarray) -> np.ndarray:
        """cases x readers: table[reader, bin of that reader's read], 0 where not read."""
        if self.n_cases == 0:
            return np.zeros((0, self.n_readers))
        values = table[np.arange(self.n_readers)[None, :], np.where(self.read, self.levels, 0)]
        return np.where(self.read, values, 0.0)


def kernels(n_levels: int) -> dict[str, np.ndarray]:
    """The kernels over (normal bin, signal bin): `s` the AUC's, `d` the design's (1: a pair)."""
    bins = np.arange(n_levels)
    above = np.where(bins[None, :] > bins[:, None], 1.0, 0.0)
    return {"s": above + 0.5 * np.eye(n_levels), "d": np.ones((n_levels, n_levels))}


def _own_sums(normal: Cases, signal: Cases, q: np.ndarray) -> dict:
    """The eight sums of an arm with itself under kernel q, and what its comparisons need."""
    col = normal.hist @ q  # reader x signal bin: the kernel summed over the reader's normals
    row = signal.hist @ q.T  # reader x normal bin: the kernel summed over the reader's signals
    tot = (normal.hist * row).sum(axis=1)  # per reader: the kernel summed over all pairs
    per_reader = np.stack(
        [
            np.einsum("ra,ab,rb->r", normal.hist, q * q, signal.hist),  # same r, i, j
            (signal.hist * col**2).sum(axis=1),  # same r, j
            (normal.hist * row**2).sum(axis=1),  # same r, i
            tot**2,  # same r
        ]
    )
    col_all = signal.gather(col).sum(axis=1)  # per signal case: summed over readers
    row_all = normal.gather(row).sum(axis=1)  # per normal case
    # Same i and j, any readers: sum over reader pairs of the normals' co-occurrence table
    # against the signals' one, each side through the kernel.
    r, k = normal.n_readers, normal.k
    g1 = signal.cooccurrence().reshape(r * k * r, k) @ q.T  # [r, b, r', c] = sum_d G1 q[c, d]
    g1 = np.matmul(q, g1.reshape(r, k, r * k))  # [r, a, r', c] = sum_b q[a, b] (...)[r, b, r', c]
    same_cases = float((normal.cooccurrence().reshape(r, k, r * k) * g1).sum())
    sums = np.array(
        [
            per_reader[0].sum(),
            per_reader[1].sum(),
            per_reader[2].sum(),
            per_reader[3].sum(),
            same_cases,
            float(col_all @ col_all),
            float(row_all @ row_all),
            float(tot.sum()) ** 2,
        ]
    )
    return {"sums": sums, "per_reader": per_reader, "row": row, "tot": tot, "row_all": row_all}


def _cross_sums(a: dict, b: dict, normal: Cases) -> np.ndarray:
    """The eight sums of two different arms (shared normals, no shared signal) under one kernel."""
    return np.array(
        [
            0.0,
            0.0,
            float((normal.hist * a["row"] * b["row"]).sum()),
            float(a["tot"] @ b["tot"]),
            0.0,
            0.0,
            float(a["row_all"] @ b["row_all"]),
            float(a["tot"].sum() * b["tot"].sum()),
        ]
    )


def _divide(numer: np.ndarray, denom: np.ndarray) -> np.ndarray:
    """iMRMC's rule: a moment is its numerator over its count where there is at least one pair."""
    some = denom > 0.5
    return np.where(some, numer / np.where(some, denom, 1.0), numer)


@dataclass(frozen=True)
class _Moments:
    moments: np.ndarray  # unbiased
    biased: np.ndarray
    coefficients: np.ndarray  # each moment's weight in the variance


def _moments(s_sums: np.ndarray, d_sums: np.ndarray, pairs_a: float, pairs_b: float) -> _Moments:
    """The moments and their weights from the biased sums (8 of a study, or 4 of one reader)."""
    unbias = UNBIAS[: s_sums.size, : s_sums.size]
    denom = unbias @ d_sums
    coefficients = denom / (pairs_a * pairs_b)
    coefficients[-1] -= 1.0  # less the square of the AUC, estimated by the all-different moment
    return _Moments(_divide(unbias @ s_sums, denom), _divide(s_sums, d_sums), coefficients)


def _variance(m: _Moments) -> float:
    return float(m.coefficients @ m.moments)


def _java_round(x: float) -> float:
    return float(math.floor(x + 0.5))


def _component_df(coefficients: np.ndarray) -> np.ndarray:
    """Each BCK component's degrees of freedom, 1/c - 1 rounded (iMRMC): units less one."""
    c = BCK_COEFFICIENTS @ coefficients
    return np.array([_java_round(1.0 / x - 1.0) if x > 0 else 0.0 for x in c])


def _satterthwaite(var: float, terms: list[tuple[float, float]]) -> float | None:
    """var^2 / sum (ms / df)^2 / df, at least the smallest df and at least 2 (iMRMC).

    Components with no degrees of freedom (one reader: no spread between readers to
    estimate) are left out; iMRMC divides by zero there.
    """
    terms = [(ms, df) for ms, df in terms if df > 0]
    denominator = sum((ms / df) ** 2 / df for ms, df in terms)
    if not terms or denominator <= 0:
        return None
    df = var**2 / denominator
    return max(df, min(df_ for _, df_ in terms), 2.0)


def _test(value: float, var: float, df: float | None, null: float) -> Estimate:
    """p-value and 95% interval as iMRMC: Student's t on the df rounded down, normal from 50."""
    if not var > 0:
        return Estimate(value, var, note="the variance estimate is not positive (too few readers or cases)")
    if df is None:
        return Estimate(value, var, note="no component of the variance has a spread: no degrees of freedom")
    se = math.sqrt(var)
    t = abs(value - null) / se
    if df >= NORMAL_APPROXIMATION_DF:
        p, cutoff = 2 * stats.norm.sf(t), stats.norm.ppf(0.975)
    else:
        whole = math.floor(df)
        p, cutoff = 2 * stats.t.sf(t, whole), stats.t.ppf(0.975, whole)
    return Estimate(value, var, float(df), float(p), float(value - se * cutoff), float(value + se * cutoff))


def _reader_variances(s: dict, d: dict) -> np.ndarray:
    """Each reader's AUC variance from the four within-reader moments (iMRMC's readerMoments)."""
    out = np.full(d["tot"].size, np.nan)
    for r in np.flatnonzero(d["tot"] > 0):
        pairs = d["tot"][r]
        out[r] = _variance(_moments(s["per_reader"][:, r], d["per_reader"][:, r], pairs, pairs))
    return out


def _cross_reader_sums(a: dict, b: dict, normal: Cases, reader: int) -> np.ndarray:
    """One reader's four within-reader sums of two different arms (shared normals only)."""
    shared = float((normal.hist[reader] * a["row"][reader] * b["row"][reader]).sum())
    return np.array([0.0, 0.0, shared, a["tot"][reader] * b["tot"][reader]])


class Study:
    """The MRMC analyses of one study: its normal cases (the real images) and arms of signals."""

    def __init__(self, normal_levels: np.ndarray, n_levels: int):
        self.k = n_levels
        self.normal = Cases(normal_levels, n_levels)
        self.kernels = kernels(n_levels)

    def arm(self, signal: Cases) -> ArmAuc:
        """The reader-averaged AUC of one arm (its signals against every normal) with its test."""
        sums = {name: _own_sums(self.normal, signal, q) for name, q in self.kernels.items()}
        s, d = sums["s"], sums["d"]
        pairs = float(d["tot"].sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            reader_auc = np.where(d["tot"] > 0, s["tot"] / d["tot"], np.nan)
        reader_var = _reader_variances(s, d)
        readers = np.flatnonzero(d["tot"] > 0)
        if pairs == 0:
            if not signal.read.any():
                why = "no reads" if not self.normal.read.any() else "no reads of synthetic images"
            elif not self.normal.read.any():
                why = "no reads of real images"
            else:
                why = "no reader read both a real and a synthetic image"
            return ArmAuc(Estimate(None, note=why), reader_auc, reader_var, 0)
        auc = float(s["tot"].sum()) / pairs
        m = _moments(s["sums"], d["sums"], pairs, pairs)
        kept = {"sums": sums, "moments": m, "pairs": pairs, "readers": set(readers.tolist())}
        if readers.size == 1:
            # One reader: the variance over cases only, from the within-reader moments (iMRMC
            # subtracts the all-different moment, which one reader cannot estimate, instead).
            var = float(reader_var[readers[0]])
        else:
            var = _variance(m)
        estimate = _test(auc, var, _arm_df(var, m), 0.5)
        if readers.size == 1:
            estimate = _noted(estimate, "one reader: the variance is over cases only")
        return ArmAuc(estimate, reader_auc, reader_var, int(readers.size), kept)

    def compare(self, a: ArmAuc, b: ArmAuc) -> Estimate:
        """AUC(a) - AUC(b) on the same readers and real images, with its variance and test."""
        if a.auc.value is None or b.auc.value is None:
            return Estimate(None, note="an arm has no AUC")
        ka, kb = a._kept, b._kept
        cross = {name: _cross_sums(ka["sums"][name], kb["sums"][name], self.normal) for name in self.kernels}
        ab = _moments(cross["s"], cross["d"], ka["pairs"], kb["pairs"])
        ma, mb = ka["moments"], kb["moments"]
        readers = ka["readers"] | kb["readers"]
        if len(readers) == 1:
            (r,) = readers
            sa, sb = ka["sums"], kb["sums"]
            var_a = _moments(
                sa["s"]["per_reader"][:, r], sa["d"]["per_reader"][:, r], ka["pairs"], ka["pairs"]
            )
            var_b = _moments(
                sb["s"]["per_reader"][:, r], sb["d"]["per_reader"][:, r], kb["pairs"], kb["pairs"]
            )
            cov = _moments(
                _cross_reader_sums(sa["s"], sb["s"], self.normal, r),
                _cross_reader_sums(sa["d"], sb["d"], self.normal, r),
                ka["pairs"],
                kb["pairs"],
            )
            var = _variance(var_a) + _variance(var_b) - 2 * _variance(cov)
        else:
            var = _variance(ma) + _variance(mb) - 2 * _variance(ab)
        estimate = _test(a.auc.value - b.auc.value, var, _difference_df(var, ma, mb, ab), 0.0)
        if len(readers) == 1:
            estimate = _noted(estimate, "one reader: the variance is over cases only")
        return estimate


def _noted(estimate: Estimate, remark: str) -> Estimate:
    return Estimate(**{**estimate.__dict__, "remark": remark})


def _arm_df(var: float, m: _Moments) -> float | None:
    dfs = _component_df(m.coefficients)
    ms = BCK_COMPONENTS @ m.biased
    return _satterthwaite(var, [(ms[c], dfs[c]) for c in (NORMAL, SIGNAL, READER)])


def _difference_df(var: float, ma: _Moments, mb: _Moments, ab: _Moments) -> float | None:
    """iMRMC's df of a difference: a component shared by the two arms enters as the difference's
    mean square, one that is not (the synthetic images) as each arm's own."""
    dfa, dfb = _component_df(ma.coefficients), _component_df(mb.coefficients)
    shared = BCK_COEFFICIENTS @ ab.coefficients > 0
    msa, msb = BCK_COMPONENTS @ ma.biased, BCK_COMPONENTS @ mb.biased
    msab = np.where(shared, BCK_COMPONENTS @ ab.biased, 0.0)
    terms = []
    for c in (NORMAL, SIGNAL, READER):
        if shared[c]:
            terms.append((msa[c] + msb[c] - 2 * msab[c], min(dfa[c], dfb[c])))
        else:
            terms += [(msa[c], dfa[c]), (msb[c], dfb[c])]
    df = _satterthwaite(var, terms)
    floor = min(min(dfa[c], dfb[c]) for c in (NORMAL, SIGNAL, READER))
    return max(df, floor) if df is not None and floor > 0 else df
