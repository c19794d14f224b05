"""Form checks for names that end up in exported CSV cells."""

from django.core.exceptions import ValidationError

from analysis.cells import formula_refusal


def no_formula_start(value: str) -> None:
    """Refuse a name that a spreadsheet would open as a formula (the exports would quote it anyway)."""
    if problem := formula_refusal(value, "A name"):
        raise ValidationError(problem)
