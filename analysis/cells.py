"""Text cells that a spreadsheet opens as text: never as a formula (CSV injection).

Excel, LibreOffice and Google Sheets run a cell that starts with `=`, `+`, `-`
or `@` (and, after a tab or a carriage return, what follows) as a formula, so a
model named `=HYPERLINK(...)` would be a live link in a researcher's
spreadsheet. Such a text cell is written with a leading `'` (OWASP's advice),
which spreadsheets take as "this is text". The escape is undone on reading, and
a text that already starts with quotes before such a character gets one more,
so reading gives back exactly the text written: an export analysed again writes
the same bytes. Numbers are never escaped (a kappa of -0.12 stays a number).
"""

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def starts_like_formula(text: str) -> bool:
    return text.startswith(FORMULA_STARTS)


def text_cell(text: str) -> str:
    """The cell for a text: quoted where a spreadsheet would run it (or where unquoting would)."""
    return "'" + text if starts_like_formula(text.lstrip("'")) else text


def text_from_cell(cell: str) -> str:
    """The text a cell written by `text_cell` holds."""
    return cell[1:] if cell.startswith("'") and starts_like_formula(cell.lstrip("'")) else cell


def formula_refusal(text: str, what: str) -> str:
    """Why `text` cannot be the name of `what` (empty if it can): result files would open it as a formula."""
    if not starts_like_formula(text):
        return ""
    first = {"\t": "a tab", "\r": "a carriage return"}.get(text[0], repr(text[0]))
    return (
        f"{what} cannot start with {first}: spreadsheets would open it as a formula "
        "in the exported files (start it with a letter or a digit)"
    )
