"""C-QVal splits with the real spaCy model: the counting rule by hand, and the paper's split sizes."""

import gzip
import json
import os

import pytest

from lmr_jax.evaluation.cqval import (
    GRID,
    PAPER_SIZES,
    SPACY_INSTALL_HINT,
    SpacyModelError,
    build_cqval_splits,
    count_clauses_and_words,
    load_spacy,
    main,
)
from lmr_jax.evaluation.submission import read_jsonl

VAL_QUERIES = os.path.join(os.path.dirname(__file__), "fixtures", "cqval", "val_queries.jsonl.gz")


@pytest.fixture(scope="module")
def nlp():
  return load_spacy()


@pytest.fixture(scope="module")
def val_queries():
  return read_jsonl(VAL_QUERIES)


@pytest.mark.parametrize(
    "text, clauses, words",
    [
        ("A man who is wearing a red hat walks down the street.", 1, 12),  # relcl
        (
            "A woman sitting in front of a desk wearing headphones and using her laptop",
            2,
            14,
        ),  # 2 x acl
        (
            "When the dog barks, the man who holds the leash says that it is hungry.",
            3,
            15,
        ),  # advcl, relcl, ccomp
        ("A girl starts to dance.", 0, 5),  # xcomp is not counted
        ("A man's t-shirt, red.", 0, 6),  # A man 's t shirt red
        ("A man talks  to the camera.", 0, 6),  # the double space is not a word
    ],
)
def test_counting_rule(nlp, text, clauses, words):
  got_clauses, got_words = count_clauses_and_words([text], nlp)
  assert (got_clauses[0], got_words[0]) == (clauses, words)


def test_split_sizes_match_paper_within_5_percent(nlp, val_queries):
  assert len(val_queries) == 1550
  splits = build_cqval_splits(val_queries, nlp)
  assert list(splits) == list(GRID)
  sizes = {key: len(kept) for key, kept in splits.items()}
  for key, paper in PAPER_SIZES.items():
    assert abs(sizes[key] - paper) <= 0.05 * paper, (key, sizes[key], paper)
  for (c, w), kept in splits.items():  # nested: a stricter split is a subset, order is input order
    qids = [r["qid"] for r in kept]
    assert qids == [r["qid"] for r in val_queries if r["qid"] in set(qids)]
    if (c, w + 1) in splits:
      assert {r["qid"] for r in splits[(c, w + 1)]} <= set(qids)


def test_cli_writes_splits_and_size_table(tmp_path, val_queries):
  annotations = str(tmp_path / "ann.jsonl.gz")
  with gzip.open(annotations, "wt") as f:
    f.writelines(json.dumps(r) + "\n" for r in val_queries[:200])
  out_dir = tmp_path / "cqval"
  assert main(["--annotations", annotations, "--out_dir", str(out_dir)]) == 0
  with open(out_dir / "cqval_sizes.json") as f:
    summary = json.load(f)
  assert summary["num_queries"] == 200
  for row in summary["splits"]:  # an empty split is an empty file
    assert (out_dir / row["file"]).read_text().count("\n") == row["size"]
  assert "| 1 | 8 |" in (out_dir / "cqval_sizes.md").read_text()


def test_missing_model_says_how_to_install():
  with pytest.raises(SpacyModelError, match=SPACY_INSTALL_HINT.replace(".", r"\.")):
    load_spacy("no_such_spacy_model")
