"""How well the log scanner names real faults: per-signal precision and recall on a labelled
corpus of excerpts from public bug reports (tests/fixtures/logs/corpus.yaml).

Each excerpt is fed line by line through the same `LogScanner` and catalog the agent uses
(`scan_lines` with the shipped catalog). Its predicted label is the signal of its most
specific finding (`most_specific`: the finding whose pattern comes first in the catalog,
the earliest in the log among equals; an unrecognised traceback ranks last and predicts
`crash`); an excerpt with no finding predicts `none`. The test split was fixed by a hash of
each id before any pattern was tuned; the train split is shown for reference.

    .venv/bin/python bench/logscan_accuracy.py [--corpus tests/fixtures/logs/corpus.yaml]
        [--catalog PATH] [--json bench/out/logscan_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agents.watchers.logscan import Catalog, load_catalog, most_specific, scan_lines

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "fixtures" / "logs" / "corpus.yaml"
LABELS = ("interconnect_timeout", "chip_error", "oom", "network", "crash", "user_error", "none")
#: Labels that are the infrastructure's fault: none of them may ever be called user_error.
INFRASTRUCTURE = ("interconnect_timeout", "chip_error", "oom", "network", "crash")


@dataclass(frozen=True)
class Excerpt:
    id: str
    label: str
    split: str
    source: str
    text: str


@dataclass(frozen=True)
class Result:
    excerpt: Excerpt
    predicted: str
    pattern: str | None
    evidence: str | None


def load_corpus(path: Path = CORPUS) -> list[Excerpt]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [Excerpt(e["id"], e["label"], e["split"], e["source"], e["text"]) for e in data["excerpts"]]


def classify(text: str, catalog: Catalog) -> tuple[str, str | None, str | None]:
    """(predicted label, deciding pattern, its evidence) for one excerpt."""
    finding = most_specific(scan_lines(text.splitlines(), catalog), catalog)
    if finding is None:
        return "none", None, None
    return finding.signal.value, finding.pattern, finding.evidence


def evaluate(excerpts: list[Excerpt], catalog: Catalog) -> list[Result]:
    return [Result(e, *classify(e.text, catalog)) for e in excerpts]


def summary(results: list[Result]) -> dict[str, Any]:
    """Accuracy, per-label precision/recall/support and the confusion matrix
    (`confusion[true][predicted]`)."""
    confusion = {t: {p: 0 for p in LABELS} for t in LABELS}
    for r in results:
        confusion[r.excerpt.label][r.predicted] += 1
    per_label = {}
    for label in LABELS:
        tp = confusion[label][label]
        predicted = sum(confusion[t][label] for t in LABELS)
        support = sum(confusion[label].values())
        per_label[label] = {
            "precision": tp / predicted if predicted else None,
            "recall": tp / support if support else None,
            "support": support,
        }
    right = sum(r.predicted == r.excerpt.label for r in results)
    return {
        "excerpts": len(results),
        "accuracy": right / len(results) if results else None,
        "infrastructure_as_user_error": sorted(
            r.excerpt.id for r in results if r.excerpt.label in INFRASTRUCTURE and r.predicted == "user_error"),
        "per_label": per_label,
        "confusion": confusion,
        "wrong": [{"id": r.excerpt.id, "label": r.excerpt.label, "predicted": r.predicted, "pattern": r.pattern}
                  for r in results if r.predicted != r.excerpt.label],
    }


def _pct(value: float | None) -> str:
    return "   -  " if value is None else f"{100 * value:5.1f}%"


def table(name: str, s: dict[str, Any]) -> str:
    short = {"interconnect_timeout": "interc", "chip_error": "chip", "user_error": "user"}
    lines = [f"{name}: {s['excerpts']} excerpts, accuracy {_pct(s['accuracy']).strip()}, "
             f"infrastructure faults called user_error: {len(s['infrastructure_as_user_error'])}",
             "",
             f"{'signal':<22}{'precision':>10}{'recall':>9}{'support':>9}"]
    for label in LABELS:
        m = s["per_label"][label]
        lines.append(f"{label:<22}{_pct(m['precision']):>10}{_pct(m['recall']):>9}{m['support']:>9}")
    lines += ["", "confusion (rows: label, columns: predicted)",
              f"{'':<22}" + "".join(f"{short.get(p, p):>8}" for p in LABELS)]
    for t in LABELS:
        lines.append(f"{t:<22}" + "".join(f"{s['confusion'][t][p]:>8}" for p in LABELS))
    if s["wrong"]:
        lines += ["", "wrong:"] + [f"  {w['id']}: {w['label']} -> {w['predicted']} ({w['pattern']})" for w in s["wrong"]]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corpus", type=Path, default=CORPUS)
    p.add_argument("--catalog", type=Path, default=None, help="a catalog file (default: the shipped one)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "out" / "logscan_accuracy.json")
    args = p.parse_args()
    catalog = load_catalog(args.catalog)
    excerpts = load_corpus(args.corpus)
    out: dict[str, Any] = {"corpus": str(args.corpus), "catalog_sha256": catalog.sha256,
                           "patterns": len(catalog.patterns), "counts": dict(Counter(e.label for e in excerpts))}
    for split in ("test", "train"):
        s = summary(evaluate([e for e in excerpts if e.split == split], catalog))
        out[split] = s
        print(table(f"{split} split", s))
        print()
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(out, indent=2))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
