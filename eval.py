r"""Evaluates a trained LMR checkpoint: a thin absl entry point around
``lmr_jax.commands.evaluate.evaluate_checkpoint``.

  python eval.py --config=configs/qvh.py --workdir=workdir/qvh                  # best checkpoint, val
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --cqval          # + C-QVal (Tab. IV)
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --checkpoint=latest --split=test
  python eval.py --config=configs/qvh.py --workdir=workdir/qvh --cqval --plots=8  # + figures

Writes ``submission.jsonl`` (and, for a labelled split, ``metrics.json``) to ``--output_dir``, by default
``{workdir}/eval/{split}_{checkpoint}``. The model's config is the workdir's ``config.json``; a
``--config`` given instead may differ from it only in run-control and training-only keys (paths,
devices, batch sizes, optimizer, losses, dropout), else it is an error naming the keys. ``--plots N``
writes PNG figures to ``{output_dir}/plots/`` (docs/evaluation.md, "Plots"). Errors are one line on
stderr (exit status 1; usage errors 2); --verbose adds the traceback.
"""

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts

cli.quiet_native_logs()  # before TensorFlow and JAX are imported

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmr_jax.commands import evaluate  # noqa: E402
from lmr_jax.training import checkpoint  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "The training config (configs/*.py[:variant], with the run's --config.x=y overrides); "
    "default: the workdir's config.json.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir holding the checkpoints.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_SPLIT = flags.DEFINE_string(
    "split", None, "A key of config.data.annotation_files; default config.eval_split."
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
flags.mark_flags_as_required(["workdir"])


def main():
  checkpoint.quiet_orbax_logs()
  config = _CONFIG.value or checkpoint.load_config(_WORKDIR.value)
  cli.show_config(config)
  evaluate.evaluate_checkpoint(
      config,
      _WORKDIR.value,
      _CHECKPOINT.value,
      _SPLIT.value,
      cqval=_CQVAL.value,
      output_dir=_OUTPUT_DIR.value,
      plots=_PLOTS.value,
  )


if __name__ == "__main__":
  raise SystemExit(cli.run_absl(main, __doc__))
