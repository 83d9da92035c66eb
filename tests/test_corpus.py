"""The labelled fault-excerpt corpus and the scanner's accuracy on it (issue #12).

The corpus (tests/fixtures/logs/corpus.yaml) is real text from public bug reports; its
test split was fixed by a hash of each id before any pattern was tuned. These tests keep
it honest (every excerpt sourced and labelled, the split still the hash's) and guard the
scanner against regressions: at least 95 % right on the test split, and not one
infrastructure fault called the user's error.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

from agents.watchers.logscan import load_catalog

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("logscan_accuracy", ROOT / "bench" / "logscan_accuracy.py")
assert _spec is not None and _spec.loader is not None
accuracy = importlib.util.module_from_spec(_spec)
sys.modules["logscan_accuracy"] = accuracy
_spec.loader.exec_module(accuracy)

CATALOG = load_catalog()
CORPUS = accuracy.load_corpus()
SOURCES = (ROOT / "tests" / "fixtures" / "logs" / "SOURCES.md").read_text(encoding="utf-8")


def test_the_corpus_is_big_enough_and_covers_every_label() -> None:
    assert len(CORPUS) >= 150
    assert len({e.id for e in CORPUS}) == len(CORPUS)
    labels = {e.label for e in CORPUS}
    assert labels == set(accuracy.LABELS)
    for label in accuracy.LABELS:
        assert sum(e.label == label for e in CORPUS if e.split == "test") >= 3, label


@pytest.mark.parametrize("excerpt", CORPUS, ids=lambda e: e.id)
def test_every_excerpt_has_a_source_a_label_and_the_hash_split(excerpt) -> None:
    assert excerpt.source.startswith("https://")
    assert excerpt.label in accuracy.LABELS
    assert excerpt.text.strip()
    expected = "test" if int(hashlib.sha256(excerpt.id.encode()).hexdigest()[:8], 16) % 10 < 3 else "train"
    assert excerpt.split == expected, "the split is fixed by the id's hash; do not move excerpts between splits"
    assert f"`{excerpt.id}`" in SOURCES and excerpt.source in SOURCES


def test_the_scanner_is_right_on_the_test_split() -> None:
    summary = accuracy.summary(accuracy.evaluate([e for e in CORPUS if e.split == "test"], CATALOG))
    assert summary["accuracy"] >= 0.95, summary["wrong"]
    assert summary["infrastructure_as_user_error"] == []


def test_no_infrastructure_fault_anywhere_in_the_corpus_is_a_user_error() -> None:
    summary = accuracy.summary(accuracy.evaluate(CORPUS, CATALOG))
    assert summary["infrastructure_as_user_error"] == []


def test_the_summary_counts_what_it_says() -> None:
    excerpts = [accuracy.Excerpt("a", "oom", "test", "https://x", "CUDA out of memory. Tried to allocate 2 GiB"),
                accuracy.Excerpt("b", "crash", "test", "https://x", "step 1 loss 0.5"),
                accuracy.Excerpt("c", "none", "test", "https://x", "step 2 loss 0.4")]
    s = accuracy.summary(accuracy.evaluate(excerpts, CATALOG))
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["confusion"]["crash"]["none"] == 1
    assert s["per_label"]["none"] == {"precision": 0.5, "recall": 1.0, "support": 1}
    assert s["per_label"]["oom"]["precision"] == 1.0
    assert [w["id"] for w in s["wrong"]] == ["b"]
