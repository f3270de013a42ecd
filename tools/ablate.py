"""Every ranker's published-ranking quality over training seeds: the figures design choices are made on.

    python tools/ablate.py --out OUT --ground-truth GT.jsonl [--seeds 5] [--losses contrastive,all-tags]

OUT must hold an index, features and neighbours' signals (an `imgsearch build` that ran once).
For each loss and seed it reruns train, export and rank (which evaluates what it publishes),
then prints, for every ranker of the evaluation, the mean and spread over seeds of the AUC and
R-precision over all published images (R-precision where the evaluation reports it). The
training-free rankers do not move with the seed; the matcher and the combination do, and a
difference between two designs is real only beyond that spread.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from export import evaluate  # noqa: E402
from model import schema, storage, train  # noqa: E402
from pipelines import cli  # noqa: E402


def run_once(out: str, ground_truth: str, loss: str, seed: int) -> dict[str, dict[str, float | None]]:
    """ranker -> {auc, r_precision} over all published images, for one training seed."""
    for argv in (
        ["train", "--out", out, "--loss", loss, "--seed", str(seed)],
        ["export", "--out", out],
        ["rank", "--out", out, "--ground-truth", ground_truth, "--keep-versions", "1"],
    ):
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):  # the stages' own summaries: shown only on failure
            code = cli.main(argv)
        if code:
            raise SystemExit(f"{' '.join(argv)} exited {code}:\n{printed.getvalue()}")
    metrics = storage.read_json(schema.out_path(out, schema.METRICS_JSON))
    rankers = metrics["subsets"][evaluate.SUBSET_ALL]["rankers"]
    return {name: {k: v.get(k) for k in ("auc", "r_precision")} for name, v in rankers.items()}


def summarise(runs: list[dict[str, dict[str, float | None]]], measure: str) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for ranker in runs[0]:
        values = [r[ranker][measure] for r in runs if r.get(ranker, {}).get(measure) is not None]
        if values:
            out[ranker] = (statistics.fmean(values), statistics.pstdev(values))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--ground-truth", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--losses", default=train.DEFAULT_LOSS, help=f"comma-separated, of {', '.join(sorted(train.LOSSES))}")
    parser.add_argument("--json", help="also write every run's figures here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results: dict[str, list] = {}
    for loss in args.losses.split(","):
        results[loss] = [run_once(args.out, args.ground_truth, loss, seed) for seed in range(args.seeds)]
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    for loss, runs in results.items():
        auc, rp = summarise(runs, "auc"), summarise(runs, "r_precision")
        print(f"\n--loss {loss}, {len(runs)} seeds: mean ± spread over seeds, all published images")
        print(f"{'ranker':<24} | {'AUC':>15} | {'R-precision':>15}")
        for ranker, (m, sd) in auc.items():
            r = rp.get(ranker)
            print(f"{ranker:<24} | {m:7.4f} ± {sd:.4f} | " + (f"{r[0]:7.4f} ± {r[1]:.4f}" if r else f"{'-':>15}"))


if __name__ == "__main__":
    main()
