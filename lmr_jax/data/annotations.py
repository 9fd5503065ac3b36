"""QVHighlights-style JSON Lines annotations, and the checker of annotation files and of a config's splits.

The file format and its checks live in ``queries`` (re-exported here: ``DataError``, ``QueryAnnotation``,
``load_annotations``, ...), which the loaders import; this module adds the command line:

  python -m lmr_jax.data.annotations FILE...                           # annotation files alone
  python -m lmr_jax.data.annotations --config=configs/qvh.py --split=val   # a split and its features

With ``--config`` each split gets every check training and evaluation run before they start
(``dataset.check_split``). A problem is one ``error:`` line on stderr and exit status 1.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.data.queries import (  # noqa: F401 - re-exported: the public names of annotation files
    DataError,
    QueryAnnotation,
    check_clip_ids,
    load_annotations,
    load_split,
    num_clips,
    parse_annotation,
)
from lmr_jax.errors import LmrError


def _report(error: LmrError) -> None:
  print(f"error: {error}", file=sys.stderr, flush=True)


def _check_files(paths: list[str]) -> int:
  """Validates each annotation file; returns how many failed (each said in one line)."""
  failed = 0
  for path in paths:
    try:
      anns = load_annotations(path)
    except LmrError as e:
      _report(e)
      failed += 1
      continue
    labelled = sum(a.has_labels for a in anns)
    print(
        f"{path}: {len(anns)} queries, {len({a.vid for a in anns})} videos, {labelled} labelled, "
        f"max duration {max(a.duration for a in anns):g} s"
    )
  return failed


def _check_config_splits(spec: str, config, splits: list[str]) -> int:
  """Validates each split of ``config`` (from the file ``spec``) as training and evaluation read it;
  returns how many failed (each said in one line)."""
  from lmr_jax.data import dataset  # noqa: PLC0415 - the file checks alone need none of it

  dataset.check_data_config(config.data)
  failed = 0
  for split in splits or dataset.config_splits(config.data):
    try:
      summary = dataset.check_split(
          config.data,
          split,
          with_captions=config.model.use_caption_context,
          training=split == "train",
      )
    except LmrError as e:
      _report(e)
      failed += 1
      continue
    print(f"{spec} {split}: {summary}")
  return failed


def _load_config(spec: str):
  """The config of ``--config``; one that does not load is a usage error (exit status 2), as for
  the other entry points."""
  path = spec.partition(":")[0]
  if not os.path.isfile(path):
    raise cli.UsageError(f"{path}: no such config file (--config)")
  try:
    return fileio.load_config(spec)
  except LmrError:
    raise
  except Exception as e:  # noqa: BLE001 - a config is user code: any failure to load it
    raise cli.UsageError(f"{spec}: the config does not load ({type(e).__name__}: {e})") from e


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "config",
      None,
      "config file[:arg]: validate its splits and their features",
      flag_values=flag_values,
  )
  flags.DEFINE_multi_string(
      "split",
      [],
      "with --config: a split of config.data.annotation_files (repeatable; default: every split "
      "that names a file)",
      flag_values=flag_values,
  )


def _validate(args) -> int:
  if args.split and not args.config:
    raise cli.UsageError("--split needs --config")
  if not args.positional and not args.config:
    raise cli.UsageError("give annotation files, --config, or both")
  config = _load_config(args.config) if args.config else None
  failed = _check_files(args.positional)
  if config is not None:
    failed += _check_config_splits(args.config, config, args.split)
  return 1 if failed else 0


def main(argv=None) -> int:
  """``python -m lmr_jax.data.annotations FILE...`` validates annotation files and prints their counts;
  ``--config=configs/x.py [--split=val]`` validates a config's splits against their features with the
  checks training and evaluation run (every feature file read). Each problem is one ``error:`` line
  on stderr, and the exit status 1; a usage error exits 2."""
  return cli.run_command(_define_flags, _validate, main.__doc__, argv, positional="FILE...")


if __name__ == "__main__":
  sys.exit(main())
