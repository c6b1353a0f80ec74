"""The one place that makes a CSV cell safe to open in a spreadsheet.

Every CSV we write (the conversion report, the legacy adoption's reports) may carry text
that came from someone else's table: an email, a test name, the earlier tool's
`funnel_type`. Excel, LibreOffice and Google Sheets run a cell that starts with one of
these characters as a formula, so such text gets a leading apostrophe, which the
spreadsheet shows as plain text. Numbers and dates are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value: Any) -> Any:
    """Text that a spreadsheet would run as a formula gets a leading apostrophe."""
    if isinstance(value, str) and value.startswith(FORMULA_PREFIXES):
        return "'" + value
    return "" if value is None else value


def csv_row(values: Iterable[Any]) -> list[Any]:
    """`csv_cell` of every value, for `writer.writerow(csv_row([...]))`."""
    return [csv_cell(value) for value in values]
