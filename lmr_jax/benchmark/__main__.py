"""``python -m lmr_jax.benchmark``: the command line (see the package's docstring)."""

from __future__ import annotations

import sys

from absl import flags

from lmr_jax import benchmark as benchmark
from lmr_jax import cli, fileio
from lmr_jax.benchmark import devices, report
from lmr_jax.benchmark.profile import format_profile
from lmr_jax.benchmark.roofline import DTYPES, QVH_TRAIN_QUERIES
from lmr_jax.fileio import load_config


def _define_flags(flag_values) -> None:
  flags.DEFINE_string("config", "configs/qvh.py", "config file[:arg]", flag_values=flag_values)
  flags.DEFINE_integer("batch_size", 0, "0: the config's", flag_values=flag_values)
  flags.DEFINE_integer("steps", 10, "timed train steps (median)", flag_values=flag_values)
  flags.DEFINE_integer(
      "warmup", 2, "untimed train steps first (compilation, caches)", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "train_queries",
      QVH_TRAIN_QUERIES,
      "queries per epoch, for the config's schedule's hours",
      flag_values=flag_values,
  )
  flags.DEFINE_integer("data_queries", 128, "size of the tf.data dataset", flag_values=flag_values)
  flags.DEFINE_integer(
      "matmul_size", 0, "0: 2048 on the CPU, 8192 on GPU/TPU", flag_values=flag_values
  )
  flags.DEFINE_list(
      "dtypes",
      list(DTYPES),
      "compute dtypes to time the train step in (besides the config's model.dtype)",
      flag_values=flag_values,
  )
  flags.DEFINE_string("json", "", "also write the figures here", flag_values=flag_values)
  flags.DEFINE_string(
      "profile_dir",
      "",
      "also trace 2 train steps with jax.profiler here (Perfetto/TensorBoard) and print the "
      "slowest ops with the model code they compute",
      flag_values=flag_values,
  )


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _benchmark, benchmark.__doc__, argv)


def _benchmark(args) -> None:
  unknown = [d for d in args.dtypes if d not in DTYPES]
  if unknown or not args.dtypes:
    raise cli.UsageError(f"--dtypes: {unknown or 'none given'}, each must be one of {DTYPES}")
  args.dtypes = tuple(args.dtypes)
  config = load_config(args.config)
  batch_size = args.batch_size or config.batch_size
  results, profile = report.run_benchmark(
      config,
      batch_size=batch_size,
      steps=args.steps,
      warmup=args.warmup,
      train_queries=args.train_queries,
      data_queries=args.data_queries,
      matmul_size=args.matmul_size,
      profile_dir=args.profile_dir,
      dtypes=args.dtypes,
  )
  info = devices.device_info()
  print(report.header(args.config, batch_size, config.model.dtype, info))
  print(report.format_table(results))
  if profile:
    print(f"\nSlowest ops of the train step (trace in {args.profile_dir}):")
    print(format_profile(profile))
  if args.json:
    record = {
        "config": args.config,
        "batch_size": batch_size,
        **info,
        "dtype": config.model.dtype,
        "dtypes": list(args.dtypes),
        "figures": {row[0]: results[row[0]] for row in report.ROWS},
        "pass": {row[0]: report.passes(row[0], results[row[0]]) for row in report.ROWS},
    }
    fileio.write_json(args.json, record, indent=1)


if __name__ == "__main__":
  sys.exit(main())
