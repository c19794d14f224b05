"""A study's reads as columns of codes, built from `answers.csv` rows with every line checked.

The web app builds `Reads` from the database and `analyze_csv` from an exported
file; both go through `ReadsBuilder`, and names are coded in sorted order, so the
same reads give the same arrays (and the same seeded bootstrap) either way.
"""

import csv
import io
import math
from array import array
from dataclasses import dataclass

import numpy as np

from .cells import text_cell, text_from_cell

ANSWER_COLUMNS = [
    "study",
    "reader",
    "image",
    "truth",
    "model",
    "prompt",
    "label",
    "confidence",
    "seconds",
    "position",
    "is_repeat",
    "answered_at",
]
# Written after ANSWER_COLUMNS since issue 15, and not needed to read a file: one written before
# them reads the same. `reasons`: what gave the image away, `;`-joined in the study's order;
# `reason_text`: the reader's note.
REASON_COLUMNS = ["reasons", "reason_text"]
# Where the image gave itself away, in whole pixels of the square image the reader saw (corners
# inclusive; a point's two corners the same), and that image's side: all empty where none marked.
REGION_COLUMNS = ["region", "region_x0", "region_y0", "region_x1", "region_y1", "image_size"]
REGION_KINDS = ("point", "box")
WRITTEN_COLUMNS = ANSWER_COLUMNS + REASON_COLUMNS + REGION_COLUMNS
OPTIONAL_COLUMNS = ["reasons", *REGION_COLUMNS]  # read where present
MAX_REASON_NAMES = 63  # a read's reasons are one bit each of an int64
LABELS = ("real", "fake", "unsure")  # codes 0, 1, 2
LABEL_CODE = {label: code for code, label in enumerate(LABELS)}
POOLED_GROUPS = ("all", "real")
MAX_ERRORS = 20  # problems listed; the rest are counted
KEPT_ERRORS = 10000
_BOOLEANS = {"true": True, "false": False, "1": True, "0": False}
_NO_REGION = (-1,) * 6


class AnswersError(ValueError):
    """Lines of an answers file that cannot be analysed, each with its line number."""

    def __init__(self, problems: list[str], more: int = 0):
        self.problems = problems
        text = "\n".join(problems) + (f"\n... and {more} more problems" if more else "")
        super().__init__(text)


@dataclass(frozen=True)
class Reads:
    """Every read of one study. Arrays have one entry per read; names are sorted lists."""

    study: str
    readers: list[str]
    images: list[str]
    models: list[str]
    image_model: np.ndarray  # per image: 0 for a real image, k for a synthetic image of models[k - 1]
    reader: np.ndarray  # per read: index into readers
    image: np.ndarray  # per read: index into images
    label: np.ndarray  # per read: 0 real, 1 fake, 2 unsure
    confidence: np.ndarray  # per read: 1..5, or 0 where the study did not ask
    seconds: np.ndarray  # per read: viewing time (NaN where unknown)
    repeat: np.ndarray  # per read: an intra-reader repeat
    # What gave an image away and where (issue 15); empty in files written before.
    reason_names: list[str] = ()  # in the order first given
    reasons: np.ndarray | None = None  # per read: bit k set where reason_names[k] was given
    # per read: the marked region (x0, y0, x1, y1, side, kind) in whole pixels as REGION_COLUMNS,
    # kind 0 a point, 1 a box; -1 in every column where none was marked. None where no read has one.
    region: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.reader.size)

    @property
    def has_confidence(self) -> bool:
        return bool(self.confidence.size and self.confidence.max() > 0)


class ReadsBuilder:
    """Collects reads one at a time, checks each, and codes them when done.

    A problem is recorded with its line and the rest still checked, so that one
    pass names every bad line (the first MAX_ERRORS of them).
    """

    def __init__(self):
        self.study: str | None = None
        self._readers: dict[str, int] = {}
        self._images: dict[str, int] = {}
        self._image_kind: list[tuple[str, int]] = []  # (model or "", first line)
        # Typed columns: a million reads take tens of megabytes, not hundreds.
        self._columns = tuple(
            array(code) for code in "qqbbdbq"
        )  # reader image label conf seconds repeat line
        self._confidence_lines = [0, 0]  # the first line with, and without, a confidence
        self._reason_names: dict[str, int] = {}
        self._reasons = array("q")
        self._region = array("l")  # six a read
        self.problems: list[tuple[int, str]] = []
        self._bad_line = None
        self.more = 0

    def problem(self, line: int, message: str) -> None:
        self._bad_line = line
        if len(self.problems) < KEPT_ERRORS:
            self.problems.append((line, message))
        else:
            self.more += 1

    def add(
        self,
        *,
        line,
        study,
        reader,
        image,
        truth,
        model,
        label,
        confidence,
        seconds,
        is_repeat,
        reasons=(),
        region=None,
    ) -> None:
        """One read with typed values (confidence None or 1..5, seconds a number or None, reasons
        names, region None or {"kind", "x0", "y0", "x1", "y1", "size"} as REGION_COLUMNS)."""
        study, reader, image, model = str(study), str(reader), str(image), str(model or "")
        if self.study is None:
            self.study = study
        elif study != self.study:
            self.problem(
                line, f"study {study!r}, but the file began with study {self.study!r}: one study a file"
            )
        if not reader:
            self.problem(line, "the reader is empty")
        if not image:
            self.problem(line, "the image is empty")
        if truth not in ("real", "fake"):
            self.problem(line, f"unknown truth {truth!r} (real or fake)")
        elif truth == "fake" and not model:
            self.problem(line, "a fake image needs the name of its model")
        elif truth == "real" and model:
            self.problem(line, f"a real image has no model, but this one names {model!r}")
        elif model in POOLED_GROUPS:
            self.problem(line, f"a model may not be called {model!r}: that name is a pooled group")
        code = LABEL_CODE.get(label)
        if code is None:
            self.problem(line, f"unknown label {label!r} (real, fake or unsure)")
        if confidence is not None and not (isinstance(confidence, int) and 1 <= confidence <= 5):
            self.problem(line, f"confidence {confidence!r} is outside 1..5")
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
            self.problem(line, f"seconds {seconds!r} is not a viewing time")
        mask = self._reason_mask(line, reasons) if reasons else 0
        box = _NO_REGION if region is None else self._region_pixels(line, region)
        if self._bad_line == line:  # a line with a problem is checked, never kept
            return
        kind = self._images.get(image)
        if kind is None:
            self._images[image] = len(self._image_kind)
            self._image_kind.append((model, line))
            kind = self._images[image]
        elif self._image_kind[kind][0] != model:
            before, first = self._image_kind[kind]

            def kind_of(name):
                return f"an image of model {name!r}" if name else "a real image"

            self.problem(line, f"image {image} is {kind_of(model)}, but {kind_of(before)} on line {first}")
            return
        reader_code = self._readers.setdefault(reader, len(self._readers))
        slot = 0 if confidence is not None else 1
        if not self._confidence_lines[slot]:
            self._confidence_lines[slot] = line
        for column, value in zip(
            self._columns,
            (
                reader_code,
                kind,
                code,
                confidence or 0,
                math.nan if seconds is None else seconds,
                is_repeat,
                line,
            ),
            strict=True,
        ):
            column.append(value)
        self._reasons.append(mask)
        self._region.extend(box)

    def _reason_mask(self, line: int, reasons) -> int:
        mask = 0
        for name in reasons:
            bit = self._reason_names.get(name)
            if bit is None:
                if not name or len(self._reason_names) >= MAX_REASON_NAMES:
                    self.problem(
                        line, f"reason {name!r}: " + ("empty" if not name else "too many distinct reasons")
                    )
                    continue
                bit = self._reason_names[name] = len(self._reason_names)
            mask |= 1 << bit
        return mask

    def _region_pixels(self, line: int, region: dict) -> tuple:
        """The region as Reads.region holds it, or a problem."""
        kind, size = region.get("kind"), region.get("size")
        corners = [region.get(name) for name in ("x0", "y0", "x1", "y1")]
        if kind not in REGION_KINDS:
            self.problem(line, f"unknown region {kind!r} (point, box, or empty for none)")
        elif not (isinstance(size, int) and size > 0):
            self.problem(line, f"image_size {size!r} is not a side in pixels")
        elif not all(isinstance(c, int) and 0 <= c < size for c in corners):
            self.problem(line, f"region corners {corners} are not all pixels from 0 to {size - 1}")
        elif corners[2] < corners[0] or corners[3] < corners[1]:
            self.problem(line, f"region corners {corners}: x0 <= x1 and y0 <= y1")
        elif kind == "point" and corners[:2] != corners[2:]:
            self.problem(line, f"a point's two corners differ: {corners}")
        else:
            return (*corners, size, REGION_KINDS.index(kind))
        return _NO_REGION

    def add_row(self, line: int, row: dict) -> None:
        """One read as a dict of typed answers.csv values (as the database export yields them)."""
        self.add(
            line=line,
            study=row["study"],
            reader=row["reader"],
            image=row["image"],
            truth=row["truth"],
            model=row["model"],
            label=row["label"],
            confidence=row["confidence"],
            seconds=row["seconds"],
            is_repeat=bool(row["is_repeat"]),
            reasons=row.get("reasons") or (),
            region=region_of(row),
        )

    def _second_first_reads(self) -> None:
        """A reader's second read of an image that is not marked as a repeat: which one counts?"""
        r, i, _, _, _, rep, lines = (np.frombuffer(column, dtype=column.typecode) for column in self._columns)
        first = rep == 0
        keys = r[first] * max(len(self._images), 1) + i[first]
        order = np.argsort(keys, kind="stable")
        again = order[1:][keys[order][1:] == keys[order][:-1]]
        if again.size:
            readers, images = list(self._readers), list(self._images)
            r, i, lines = r[first], i[first], lines[first]
            for k in np.sort(again):
                message = f"{readers[r[k]]} reads image {images[i[k]]} a second time without is_repeat"
                self.problem(int(lines[k]), message)

    def build(self) -> Reads:
        self._second_first_reads()
        with_c, without_c = self._confidence_lines
        if with_c and without_c:
            self.problem(
                max(with_c, without_c),
                f"{'no confidence' if without_c > with_c else 'a confidence'}, unlike line "
                f"{min(with_c, without_c)}: the fakeness score needs a confidence on every read or on none",
            )
        if self.problems:
            found = sorted(self.problems, key=lambda problem: problem[0])  # in line order
            shown = [f"line {line}: {message}" for line, message in found[:MAX_ERRORS]]
            raise AnswersError(shown, self.more + max(0, len(found) - MAX_ERRORS))
        readers, reader_code = _sorted_codes(self._readers)
        images, image_code = _sorted_codes(self._images)
        models = sorted({model for model, _ in self._image_kind if model})
        model_code = {model: k for k, model in enumerate(models, start=1)}
        image_model = np.zeros(len(images), dtype=np.int32)
        for old, (model, _) in enumerate(self._image_kind):
            image_model[image_code[old]] = model_code.get(model, 0)
        r, i, lab, conf, sec, rep, _ = (np.frombuffer(c, dtype=c.typecode) for c in self._columns)
        region = np.frombuffer(self._region, dtype=np.int32 if self._region.itemsize == 4 else np.int64)
        region = region.reshape(-1, 6).astype(np.int32)
        return Reads(
            study=self.study or "",
            readers=readers,
            images=images,
            models=models,
            image_model=image_model,
            reader=reader_code[r] if r.size else np.zeros(0, np.int64),
            image=image_code[i] if i.size else np.zeros(0, np.int64),
            label=lab.copy(),
            confidence=conf.copy(),
            seconds=sec.copy(),
            repeat=rep.astype(bool),
            reason_names=list(self._reason_names),
            reasons=np.frombuffer(self._reasons, dtype=np.int64).copy(),
            region=region if (region[:, 4] > 0).any() else None,
        )


def _sorted_codes(names: dict[str, int]) -> tuple[list[str], np.ndarray]:
    """Names in sorted order, and old code -> new code (so that coding ignores file order)."""
    ordered = sorted(names)
    new = np.empty(len(names), dtype=np.int64)
    for position, name in enumerate(ordered):
        new[names[name]] = position
    return ordered, new


def read_answers(file) -> Reads:
    """Parse an `answers.csv` (a path or a text file); AnswersError names every bad line."""
    if isinstance(file, str | bytes) or hasattr(file, "__fspath__"):
        try:
            with open(file, encoding="utf-8-sig", newline="") as handle:
                return read_answers(handle)
        except UnicodeDecodeError as exc:
            raise AnswersError([f"the file is not UTF-8 text ({exc.reason} at byte {exc.start})"]) from None
    rows = csv.reader(file)
    try:
        header = next(rows)
    except StopIteration:
        raise AnswersError(["line 1: the file is empty; it needs the header of answers.csv"]) from None
    except csv.Error as exc:
        raise AnswersError([f"line 1: {exc}"]) from None
    header = [name.strip().lstrip("\ufeff") for name in header]
    missing = [name for name in ANSWER_COLUMNS if name not in header]
    if missing:
        raise AnswersError(
            [
                f"line 1: the header lacks the column{'s' if len(missing) > 1 else ''} "
                f"{', '.join(missing)} (answers.csv has {', '.join(ANSWER_COLUMNS)})"
            ]
        )
    at = {name: header.index(name) for name in ANSWER_COLUMNS + OPTIONAL_COLUMNS if name in header}
    if "region" in at and (lacking := [name for name in REGION_COLUMNS if name not in header]):
        raise AnswersError([f"line 1: the header has region but lacks {', '.join(lacking)}"])
    builder = ReadsBuilder()
    width = len(header)
    try:
        for row in rows:
            line = rows.line_num
            if not row:
                continue
            if len(row) != width:
                builder.problem(line, f"{len(row)} fields where the header has {width}")
                continue
            _add_text_row(builder, line, {name: row[index] for name, index in at.items()})
    except csv.Error as exc:
        builder.problem(rows.line_num, str(exc))
    return builder.build()


class _Unparsed(ValueError):
    pass


def _number(text: str, convert, problem: str):
    """None for an empty field, else the converted value; _Unparsed(problem) if it does not convert."""
    text = text.strip()
    if not text:
        return None
    try:
        return convert(text)
    except ValueError:
        raise _Unparsed(problem.format(text=text)) from None


def _add_text_row(builder: ReadsBuilder, line: int, row: dict[str, str]) -> None:
    """Parse the typed fields; every problem of the line is named, then the rest is checked."""
    values = {}
    for name, convert, message in [
        ("confidence", int, "confidence {text!r} is not a whole number from 1 to 5"),
        ("seconds", float, "seconds {text!r} is not a number"),
    ]:
        try:
            values[name] = _number(row[name], convert, message)
        except _Unparsed as exc:
            builder.problem(line, str(exc))
            values[name] = None
    repeat = _BOOLEANS.get(row["is_repeat"].strip().lower())
    if repeat is None:
        builder.problem(line, f"is_repeat {row['is_repeat']!r} is not true or false")
    reasons = text_from_cell(row.get("reasons", "").strip())
    region = None
    if row.get("region", "").strip():
        region = {"region": row["region"].strip()}
        for column in REGION_COLUMNS[1:]:
            text = row[column].strip()
            region[column] = int(text) if text.isdecimal() and text.isascii() else text
        region = region_of(region)
    builder.add(
        line=line,
        study=text_from_cell(row["study"].strip()),
        reader=text_from_cell(row["reader"].strip()),
        image=text_from_cell(row["image"].strip()),
        truth=text_from_cell(row["truth"].strip()),
        model=text_from_cell(row["model"]),
        label=text_from_cell(row["label"].strip()),
        confidence=values["confidence"],
        seconds=values["seconds"],
        is_repeat=bool(repeat),
        reasons=[name.strip() for name in reasons.split(";")] if reasons else (),
        region=region,
    )


def answers_csv_line(row: dict) -> list[str]:
    """One read as the fields of an answers.csv line (text never a spreadsheet formula: cells.py)."""
    answered = row["answered_at"]
    return [
        text_cell(str(row["study"])),
        text_cell(row["reader"]),
        text_cell(str(row["image"])),
        text_cell(row["truth"]),
        text_cell(row["model"]),
        text_cell(row["prompt"]),
        text_cell(row["label"]),
        "" if row["confidence"] is None else str(row["confidence"]),
        "" if row["seconds"] is None else repr(float(row["seconds"])),
        str(row["position"]),
        "true" if row["is_repeat"] else "false",
        answered.isoformat() if hasattr(answered, "isoformat") else str(answered or ""),
        text_cell(";".join(row.get("reasons") or [])),
        text_cell(row.get("reason_text") or ""),
        *("" if row.get(name) is None else str(row[name]) for name in REGION_COLUMNS),
    ]


_REGION_KEYS = dict(zip(REGION_COLUMNS, ("kind", "x0", "y0", "x1", "y1", "size"), strict=True))


def region_columns(region: dict | None) -> dict:
    """An answer's stored region ({"kind", "x0", "y0", "x1", "y1", "size"}) as REGION_COLUMNS."""
    return {column: (region or {}).get(key) for column, key in _REGION_KEYS.items()}


def region_of(row: dict) -> dict | None:
    """The region of a row keyed by REGION_COLUMNS (None where it has none)."""
    if not row.get("region"):
        return None
    return {key: row[column] for column, key in _REGION_KEYS.items()}


def answers_csv_chunks(rows, *, lines_per_chunk: int = 2000):
    """The text of answers.csv, header first, in chunks of lines, with constant memory."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(WRITTEN_COLUMNS)
    count = 0
    for row in rows:
        writer.writerow(answers_csv_line(row))
        count += 1
        if count % lines_per_chunk == 0:
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
    yield buffer.getvalue()
