"""bench's result and how it is printed: the throughput or memory table, the targets, the notes."""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from model.report import StageReport

from pipelines.bench import fetch as fetch_phase
from pipelines.bench.phases import PHASE_MODEL, PHASE_NAMES, PHASE_PROTOTYPE, PHASE_STAGE, PHASES, SHOWN_CPU_FLAGS

TARGETS = {"c/a": 2.5, "c/b": 0.85}  # from the issue; shown as information, never asserted
INT8_TARGETS = {"c/a": 4.0, "c/b": 0.85}  # int8 rows
INT8_OVER_BF16_TARGET = 1.8  # model alone, int8 / bf16


def _fmt_rate(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _fmt_ratio(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def _fmt_mib(v: float | None) -> str:
    return "-" if v is None else f"{v:.0f}"


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]], left: int = 1) -> str:
    """Columns aligned: the first `left` columns to the left, the rest (numbers) to the right."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(c).ljust(w) if i < left else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def _row_precision(row: dict[str, Any]) -> str:
    return row.get("precision") or row["b"].get("precision", "?")


def _targets(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Each target with pass/FAIL per row: int8 rows against INT8_TARGETS, the others TARGETS."""
    out = []
    for targets, picked, label in (
        (TARGETS, [r for r in rows if _row_precision(r) != "int8"], ""),
        (INT8_TARGETS, [r for r in rows if _row_precision(r) == "int8"], "int8 "),
    ):
        several = len({_row_precision(r) for r in picked}) > 1
        for name, target in targets.items():
            if not picked:
                continue
            marks = ", ".join(
                f"{r['kind']}{' ' + _row_precision(r) if several else ''} {'pass' if r[name] is not None and r[name] >= target else 'FAIL'}"
                for r in picked
            )
            out.append(f"{label}{name} >= {target}: {marks}")
    return out


def _int8_notes(rows: Sequence[dict[str, Any]]) -> list[str]:
    """int8 beside bf16 (model alone), and where int8's end-to-end time goes."""
    by = {_row_precision(r): r["b"] for r in rows}
    notes = []
    if "int8" in by and "bf16" in by:
        speedup = ratio(by["int8"]["images_per_s"], by["bf16"]["images_per_s"])
        mark = "pass" if speedup is not None and speedup >= INT8_OVER_BF16_TARGET else "FAIL"
        notes.append(f"model alone, int8 / bf16 = {_fmt_ratio(speedup)} (target >= {INT8_OVER_BF16_TARGET}: {mark})")
    if "int8" in by:
        b = by["int8"]
        dec = b.get("decode_images_per_s")
        if dec:
            serial = 1.0 / (1.0 / dec + 1.0 / b["images_per_s"])
            notes.append(
                f"int8: read + decode + crop alone {dec:.1f} img/s on one thread (b's batches), model {b['images_per_s']:.1f} img/s: "
                f"done one after the other on the same cores they bound c at about {serial:.1f} img/s "
                f"(decoding {b['images_per_s'] / (dec + b['images_per_s']) * 100:.0f}% of the time)"
            )
    return notes


@dataclasses.dataclass
class BenchResult(StageReport):
    """What every command returns (a StageReport: rows_in, the images each measurement ran on, all
    together; rows_out, the measurements made; rows_failed, images the stage phases failed), plus
    the measurements themselves."""

    stage: str = "bench"
    mode: str = "throughput"  # "throughput" (a, b, c per kind), "memory" (c at each size) or "fetch" (--fetch only: no rows)
    config: dict[str, Any] = dataclasses.field(default_factory=dict)
    machine: dict[str, Any] = dataclasses.field(default_factory=dict)
    # throughput: one row per kind {"kind", "images", "a", "b", "c", "c/a", "c/b"};
    # memory: one row per (kind, size) {"kind", "images", "c"}
    rows: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    fetch: dict[str, Any] | None = None  # the fetch phase (fetch.py), when run

    def __post_init__(self) -> None:
        fetched = [self.fetch] if self.fetch is not None else []
        self.rows_in = sum(int(r.get("images", 0)) for r in [*self.rows, *fetched])
        self.rows_out = len(self.rows) + len(fetched)
        self.rows_failed = sum(int(r.get("c", {}).get("rows_failed", 0)) for r in self.rows) + sum(
            int(f["stage"]["failed"]) for f in fetched
        )

    def _header(self) -> list[str]:
        c, m = self.config, self.machine
        precision = m.get("precision") or c["precision"]
        asked = f" (asked {c['precision']})" if precision != c["precision"] else ""
        device = c["device"]
        if m.get("gpu"):
            device += f" ({m['gpu']})"
        elif c["device"] == "GPU":
            device += " (no CUDA here: ran on the CPU)"
        decode = f", stage decodes with {m['decode']}" if m.get("decode") else ""
        bf16 = "yes" if m.get("cpu_bf16") else "no"
        flags = m.get("cpu_flags")
        int8 = "yes" if any(f in (flags or ()) for f in ("avx512_vnni", "avx_vnni", "amx_int8")) else "no"
        flag_text = f", flags {' '.join(flags) if flags else '(none of ' + ' '.join(SHOWN_CPU_FLAGS) + ')'}"
        if c.get("precisions"):
            precision, asked = m.get("precision") or ", ".join(c["precisions"]), ""
        return [
            f"imgsearch bench: {c['image_model']} ({c['weights']} weights), device {device}, "
            f"precision {precision}{asked}, batch {c['batch_size']}{decode}",
            f"machine: {m['cpu']}, {m['cores']} cores, torch {m.get('torch', '?')} with "
            f"{m.get('torch_threads', '?')} threads, CPU bf16 {bf16}, CPU int8 (VNNI/AMX) {int8}"
            + (flag_text if flags is not None else ""),
        ]

    def table(self) -> str:
        """The measurements as printed: what ran on what machine, then the throughput or the memory
        table with its notes, and the fetch phase's section when it ran (alone with --fetch only)."""
        sections = []
        if self.mode == "throughput":
            sections.append(self._throughput_table())
        elif self.mode == "memory":
            sections.append(self._memory_table())
        if self.fetch is not None:
            sections.append(fetch_phase.format_result(self.fetch))
        return "\n".join([*self._header(), "", "\n\n".join(sections)])

    def report(self) -> str:
        """What the CLI prints above summary_line(): the table, then a blank line."""
        return self.table() + "\n"

    def summary_line(self) -> str:
        return f"bench took {self.seconds:.0f} s"

    def _throughput_table(self) -> str:
        header = ["kind", "precision", "images", "a img/s", "b img/s", "c img/s", "c/a", "c/b", "RSS a MiB", "RSS b MiB", "RSS c MiB"]
        rows = []
        for r in self.rows:
            a, b, c = r["a"], r["b"], r["c"]
            rows.append(
                [
                    r["kind"],
                    r.get("precision") or b.get("precision", "?"),
                    str(r["images"]),
                    _fmt_rate(a["images_per_s"]),
                    _fmt_rate(b["images_per_s"]),
                    _fmt_rate(c["images_per_s"]),
                    _fmt_ratio(r["c/a"]),
                    _fmt_ratio(r["c/b"]),
                    _fmt_mib(a["peak_rss_mib"]),
                    _fmt_mib(b["peak_rss_mib"]),
                    _fmt_mib(c["peak_rss_mib"]),
                ]
            )
        b0 = self.rows[0]["b"] if self.rows else {}
        notes = [
            "targets (information, not asserted): " + "; ".join(_targets(self.rows)),
            *_int8_notes(self.rows),
            f"a = {PHASE_NAMES[PHASE_PROTOTYPE]}: read, PIL open + convert RGB, torchvision transform, one image per forward",
            f"b = {PHASE_NAMES[PHASE_MODEL]}: model.inference on pre-made uint8 batches, decoding excluded; "
            f"{b0.get('batches', '?')} timed batches of {b0.get('batch_size', '?')} after a warm-up, one figure for every kind",
            f"c = {PHASE_NAMES[PHASE_STAGE]}: rows_out / the stage report's seconds (the pipeline's wall time: "
            "workers, model load, read, decode, RunInference, Parquet; not the driver's encoder build)",
            "c seconds (report / wall around run()): "
            + ", ".join(f"{r['kind']} {r['c']['seconds']:.1f} / {r['c']['wall_seconds']:.1f}" for r in self.rows),
            "RSS = each phase's own process peak (ru_maxrss)"
            if all(r[p].get("peak_rss_own_process") for r in self.rows for p in PHASES)
            else "RSS = peak of the whole calling process (phases ran in-process)",
        ]
        return format_table(header, rows, left=2) + "\n\n" + "\n".join(notes)

    def _memory_table(self) -> str:
        sizes = sorted({r["images"] for r in self.rows})
        header = ["kind", "measure", *(f"{n} images" for n in sizes)]
        rows = []
        for kind in dict.fromkeys(r["kind"] for r in self.rows):
            by_size = {r["images"]: r["c"] for r in self.rows if r["kind"] == kind}
            rows.append([kind, "peak RSS MiB", *(_fmt_mib(by_size[n]["peak_rss_mib"]) for n in sizes)])
            rows.append([kind, "c img/s", *(_fmt_rate(by_size[n]["images_per_s"]) for n in sizes)])
            rows.append([kind, "c seconds", *(f"{by_size[n]['seconds']:.1f}" for n in sizes)])
        notes = [f"{PHASE_NAMES[PHASE_STAGE]} at each size, each run in its own process; RSS = its peak (ru_maxrss)"]
        for kind in dict.fromkeys(r["kind"] for r in self.rows):
            by_size = {r["images"]: r["c"]["peak_rss_mib"] for r in self.rows if r["kind"] == kind}
            small, large = by_size[sizes[0]], by_size[sizes[-1]]
            if len(sizes) > 1 and small:
                notes.append(
                    f"{kind}: peak RSS at {sizes[-1]} vs {sizes[0]} images: {large - small:+.0f} MiB ({(large / small - 1) * 100:+.1f}%)"
                )
        return format_table(header, rows, left=2) + "\n\n" + "\n".join(notes)
