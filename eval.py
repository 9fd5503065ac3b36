r"""Evaluates a trained LMR checkpoint: a thin absl entry point around
``lmr_jax.commands.evaluate.evaluate_checkpoint``.

  python eval.py --config=configs/qvh.py --workdir=workdir/qvh                  # best checkpoint, val
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --cqval          # + C-QVal (Tab. IV)
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --checkpoint=latest --split=test
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --cqval --plots=8  # + figures

Writes ``submission.jsonl`` (and, for a labelled split, ``metrics.json``) to ``--output_dir``, by default
``{workdir}/eval/{split}_{checkpoint}``. Pass the training config (with the same ``--config.x=y``
overrides): a checkpoint that does not fit it is an error. ``--plots N`` writes PNG figures to
``{output_dir}/plots/`` (docs/evaluation.md, "Plots"). Errors are one line on stderr, exit status 1.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmr_jax.commands import evaluate  # noqa: E402
from lmr_jax.errors import LmrError  # noqa: E402
from lmr_jax.training import checkpoint  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The training config (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir holding the checkpoints.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_SPLIT = flags.DEFINE_string(
    "split", None, "A key of config.data.annotation_files; default " "config.eval_split."
)
_CQVAL = flags.DEFINE_bool(
    "cqval", False, "Also score the C-QVal complex-query splits (paper Tab. IV)."
)
_PLOTS = flags.DEFINE_integer(
    "plots",
    0,
    "Also draw figures into {output_dir}/plots/: training curves, and a timeline and a VQF attention "
    "map for this many queries sampled with a fixed seed (and, with --cqval, its bar chart).",
)
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Default: {workdir}/eval/{split}_{checkpoint}."
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  checkpoint.quiet_orbax_logs()
  logging.info("Config:\n%s", _CONFIG.value)
  try:
    evaluate.evaluate_checkpoint(
        _CONFIG.value,
        _WORKDIR.value,
        _CHECKPOINT.value,
        _SPLIT.value,
        _CQVAL.value,
        _OUTPUT_DIR.value,
        _PLOTS.value,
    )
  except LmrError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
