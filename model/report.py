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


DEFAULT_MAX_FAILURE_RATE = 0.05
MAX_FAILURE_RATE_FLAG = "--max-failure-rate"


class StageRefused(RuntimeError):
    """A stage finished, but its output must not be trusted downstream (a health check failed).

    Raised after the report (and the failure rows) are saved, so the user can see why; the CLI
    prints the summary and this message (no traceback) and exits non-zero, which stops a scripted
    pipeline before a later stage publishes what is left.
    """

    def __init__(self, report: StageReport, message: str):
        self.report = report
        super().__init__(message)


class RunRefused(ValueError):
    """The run refuses before it starts: an input it cannot use (features of another encoder, NaN
    features), or OUT locked by another build. The CLI prints the message, no traceback, and
    exits 3."""


# What fixes a failure reason (a failure row's `error`), when most of a refused run's failures
# share it; {folder} is the report's REMEDY_FOLDER detail where the stage recorded one.
REMEDY_FOLDER = "remedy_folder"
REMEDIES = {
    "OutsideAllowedRoot": "rerun index with --allow-root {folder} (the folder that holds those files), "
    "or write the manifest's paths relative to its own folder",
    "UnsupportedScheme": "only local paths, gs:// and http(s):// uris are read: fix those uris in the manifest",
    "FileNotFoundError": "the files are not where the manifest says: relative paths resolve against the manifest's folder",
    "NotFetched": "run `imgsearch fetch` first: it downloads the http(s) images",
    "ImageTimeout": "raise --image-timeout (seconds per image read and decode), or check the mount they are on",
    "UnidentifiedImageError": "those files are not images Pillow reads: see the failure rows' messages",
    "NonFiniteEmbedding": "the encoder's weights hold NaN or inf: check --weights",
}
DOMINANT_SHARE = 0.5  # "most failures"


def dominant_failure(report: StageReport) -> tuple[str, int] | None:
    """(error, count) of the reason more than half of the failed rows share, or None."""
    prefix = "failed_"
    counts = {
        k[len(prefix) :]: v for k, v in report.details.items() if k.startswith(prefix) and isinstance(v, int) and v > 0
    }
    if not counts or not report.rows_failed:
        return None
    error = max(counts, key=counts.get)
    return (error, counts[error]) if counts[error] > DOMINANT_SHARE * report.rows_failed else None


def remedy_for(report: StageReport) -> str | None:
    """What to do about a refused run whose failures mostly share one reason with a known remedy."""
    dominant = dominant_failure(report)
    if dominant is None or dominant[0] not in REMEDIES:
        return None
    error, count = dominant
    folder = report.details.get(REMEDY_FOLDER) or "DIR"
    return f"{count} of the {report.rows_failed} failures are {error}: " + REMEDIES[error].format(folder=folder)


class FailureRateExceeded(StageRefused):
    """Too many of a stage's rows failed (over --max-failure-rate). When most failures share one
    reason with a known remedy (REMEDIES), the message names it instead of the flag that would
    only accept the failures."""

    def __init__(self, report: StageReport, max_rate: float):
        self.max_rate = max_rate
        rate = report.rows_failed / report.rows_in
        remedy = remedy_for(report)
        todo = (
            f"{remedy}; {MAX_FAILURE_RATE_FLAG} only accepts failures, it fixes none"
            if remedy
            else f"raise {MAX_FAILURE_RATE_FLAG} to accept more"
        )
        super().__init__(
            report,
            f"{report.stage}: {report.rows_failed} of {report.rows_in} rows failed ({rate:.1%}), over the "
            f"allowed {max_rate:.1%}; see the failures of stage {report.stage!r} under OUT/{schema.FAILURES_DIR}/ "
            f"and OUT/{schema.REPORTS_DIR}/{report.stage}.json ({todo})",
        )


def check_failure_rate(report: StageReport, max_rate: float) -> None:
    """Raise FailureRateExceeded when rows_failed / rows_in is over max_rate.

    Call it after report.save(): the numbers that explain the refusal must be on disk. A run with
    no rows in has no rate (an empty manifest is not a pile of failures).
    """
    if not 0.0 <= max_rate <= 1.0:
        raise ValueError(f"{MAX_FAILURE_RATE_FLAG} must be between 0 and 1, got {max_rate}")
    if report.rows_in > 0 and report.rows_failed / report.rows_in > max_rate:
        raise FailureRateExceeded(report, max_rate)
