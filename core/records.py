"""The normalised shape every input format is read into before it reaches the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.errors import UserError


class IngestError(UserError):
    """Bad input, located: which file, which line (or row), which field, and what is wrong."""

    def __init__(
        self,
        file: str,
        line: int | None,
        field_name: str | None,
        message: str,
        *,
        unit: str = "line",  # "row" for Parquet/CSV/datasets, "item" for a JSON array, "row group"
        skippable: bool | None = None,
    ):
        self.file = str(file)
        # --skip-bad may pass over a located bad row, never a fault of the file itself (a
        # corrupt Parquet row group, CSV the reader cannot go on from)
        self.skippable = line is not None if skippable is None else skippable
        self.line = line
        self.field = field_name
        self.message = message
        self.unit = unit
        where = self.file
        if line is not None:
            where += f", {unit} {line}"
        if field_name:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {message}")

    def as_dict(self) -> dict[str, Any]:
        return {"file": self.file, "unit": self.unit, "line": self.line, "field": self.field, "message": self.message}


@dataclass
class Label:
    """One value a score source gave a CoT: ``source`` (e.g. "omnithought", "harness"),
    ``metric`` (rv, cd, correct, logic, ...), the numeric ``value`` (None if unusable) and the
    value as the input gave it."""

    source: str
    metric: str
    value: float | None
    raw: str | None = None
    kind: str = "label"  # label | judge | verifier


@dataclass
class CotRecord:
    full_text: str
    sample_idx: int
    model: str | None = None
    # Given when the source already splits them (OmniThought's thought/solution); otherwise
    # the split is derived from the markers in full_text.
    thinking: str | None = None
    solution: str | None = None
    finish_reason: str | None = None
    labels: list[Label] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ProblemRecord:
    key: str  # unique within one ingest; a duplicate is an input error
    question: str
    file: str
    line: int
    reference_answer: str | None = None
    reference_solution: str | None = None
    benchmark: str | None = None
    cots: list[CotRecord] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
