r"""Trains LMR: a thin absl entry point around ``lmr_jax.commands.train.train_and_evaluate``.

  python train.py --config=configs/synthetic.py --workdir=workdir/synthetic
  python train.py --config=configs/qvh.py --workdir=workdir/qvh --config.batch_size=16

Rerunning the same command in the same workdir resumes from its latest checkpoint; SIGTERM or Ctrl-C
saves a checkpoint after the current step and exits. On a cluster, run the same command on every host
with --config.distributed=True (README, "Scale-out"). Errors in the data, config or checkpoints are one
line on stderr, exit status 1.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import sys  # noqa: E402

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmr_jax.commands import train  # noqa: E402
from lmr_jax.errors import LmrError  # noqa: E402
from lmr_jax.training import checkpoint, parallel  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs go here; resumes from it.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  parallel.initialize_distributed(_CONFIG.value)
  checkpoint.quiet_orbax_logs()
  logging.info("Config:\n%s", _CONFIG.value)
  try:
    train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except LmrError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  app.run(main)
