r"""Trains LMR: a thin absl entry point around ``lmr_jax.commands.train.train_and_evaluate``.

  python train.py --config=configs/synthetic.py --workdir=workdir/synthetic
  python train.py --config=configs/qvh.py --workdir=workdir/qvh --config.batch_size=16

Rerunning the same command in the same workdir resumes from its latest checkpoint; SIGTERM or Ctrl-C
saves a checkpoint after the current step and exits. On a cluster, run the same command on every host
with --config.distributed=True (docs/scale_out.md). Errors in the data, config or checkpoints are one
line on stderr (exit status 1; usage errors 2);
--verbose adds the traceback and prints the config; --start_over trains a workdir anew, keeping the
old run in previous_run_N/.
"""

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts

cli.quiet_native_logs()  # before TensorFlow and JAX are imported

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from lmr_jax.commands import train  # noqa: E402
from lmr_jax.training import checkpoint, parallel  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints and logs go here; resumes from it.")
_START_OVER = flags.DEFINE_bool(
    "start_over",
    False,
    "Train from step 0 even though the workdir holds a run (it moves into previous_run_N/).",
)
flags.mark_flags_as_required(["config", "workdir"])


def main():
  parallel.initialize_distributed(_CONFIG.value)
  checkpoint.quiet_orbax_logs()
  cli.show_config(_CONFIG.value)
  train.train_and_evaluate(_CONFIG.value, _WORKDIR.value, _START_OVER.value)


if __name__ == "__main__":
  raise SystemExit(cli.run_absl(main, __doc__))
