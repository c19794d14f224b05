"""Reads for the analysis tests, written as compact tuples."""

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
