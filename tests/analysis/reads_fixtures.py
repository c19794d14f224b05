"""Reads for the analysis tests, written as compact tuples."""

import csv
import io

from analysis.reads import ReadsBuilder


def make_reads(rows, study="1"):
    """rows: (reader, image, model or "", label[, confidence[, is_repeat[, seconds]]])."""
    builder = ReadsBuilder()
    for line, row in enumerate(rows, start=2):
        reader, image, model, label, *rest = row
        confidence = rest[0] if len(rest) > 0 else None
        repeat = rest[1] if len(rest) > 1 else False
        seconds = rest[2] if len(rest) > 2 else 2.0
        builder.add(
            line=line,
            study=study,
            reader=reader,
            image=image,
            truth="fake" if model else "real",
            model=model,
            label=label,
            confidence=confidence,
            seconds=seconds,
            is_repeat=repeat,
        )
    return builder.build()


def answer_dicts(rows, study="1"):
    """The same tuples as answers.csv rows (dicts), for the writers and the round trips."""
    out = []
    for position, row in enumerate(rows, start=1):
        reader, image, model, label, *rest = row
        out.append(
            {
                "study": study,
                "reader": reader,
                "image": image,
                "truth": "fake" if model else "real",
                "model": model,
                "prompt": "chest x-ray" if model else "",
                "label": label,
                "confidence": rest[0] if len(rest) > 0 else None,
                "seconds": rest[2] if len(rest) > 2 else 2.0,
                "position": position,
                "is_repeat": rest[1] if len(rest) > 1 else False,
                "answered_at": "2026-12-01T10:00:00+00:00",
            }
        )
    return out


def formula_cells(text: str) -> list[str]:
    """The cells of a CSV text that a spreadsheet would run as formulas (numbers such as -0.12 are not)."""
    found = []
    for row in csv.reader(io.StringIO(text)):
        for value in row:
            if value.startswith(("=", "+", "-", "@", "\t", "\r")):
                try:
                    float(value)
                except ValueError:
                    found.append(value)
    return found
