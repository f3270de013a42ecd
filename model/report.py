"""A stage's accounting: rows in, out, failed and skipped (with reasons), and seconds.

No Beam here, so train and export (which must not import Beam) report in the same form as the
Beam stages; the CLI prints summary_line() and OUT/reports/<stage>.json keeps the whole report.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from model import schema, storage


@dataclasses.dataclass
class StageReport:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    rows_failed: int = 0
    rows_skipped: int = 0
    seconds: float = 0.0
    # reason-specific counts (e.g. failed_UnidentifiedImageError, skipped_duplicate) and extras
    details: dict[str, Any] = dataclasses.field(default_factory=dict)

    def summary_line(self) -> str:
        line = (
            f"{self.stage}: in {self.rows_in}, out {self.rows_out}, failed {self.rows_failed}, "
            f"skipped {self.rows_skipped}, {self.seconds:.1f} s"
        )
        reasons = {k: v for k, v in self.details.items() if isinstance(v, (int, float)) and v}
        if reasons:
            line += " (" + ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) + ")"
        return line

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, out: str) -> None:
        storage.write_json(schema.out_path(out, schema.REPORTS_DIR, f"{self.stage}.json"), self.to_json())
