"""``python -m lmr_jax.benchmark``: the command line (see the package's docstring)."""

from __future__ import annotations

import argparse
import json
import sys

from lmr_jax import benchmark as benchmark
from lmr_jax import cli
from lmr_jax.benchmark import devices, report
from lmr_jax.benchmark.profile import format_profile
from lmr_jax.benchmark.roofline import DTYPES, QVH_TRAIN_QUERIES
from lmr_jax.fileio import load_config


def parse_dtypes(spec: str) -> tuple[str, ...]:
  """``--dtypes``: comma-separated, each one of ``DTYPES``."""
  dtypes = tuple(d.strip() for d in spec.split(",") if d.strip())
  unknown = [d for d in dtypes if d not in DTYPES]
  if unknown:
    raise argparse.ArgumentTypeError(f"{unknown} not in {DTYPES}")
  return dtypes


def parse_args(argv):
  parser = argparse.ArgumentParser(
      prog="python -m lmr_jax.benchmark", description=benchmark.__doc__.split("\n\n")[0]
  )
  parser.add_argument("--config", default="configs/qvh.py", help="config file[:arg]")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--steps", type=int, default=10, help="timed train steps (median)")
  parser.add_argument(
      "--warmup", type=int, default=2, help="untimed train steps first (compilation, caches)"
  )
  parser.add_argument(
      "--train_queries",
      type=int,
      default=QVH_TRAIN_QUERIES,
      help="queries per epoch, for the config's schedule's hours",
  )
  parser.add_argument("--data_queries", type=int, default=128, help="size of the tf.data dataset")
  parser.add_argument(
      "--matmul_size", type=int, default=0, help="0: 2048 on the CPU, 8192 on GPU/TPU"
  )
  parser.add_argument(
      "--dtypes",
      default=",".join(DTYPES),
      type=parse_dtypes,
      help="compute dtypes to time the train step in (besides the config's model.dtype)",
  )
  parser.add_argument("--json", default="", help="also write the figures here")
  parser.add_argument(
      "--profile_dir",
      default="",
      help="also trace 2 train steps with jax.profiler here (Perfetto/TensorBoard) and print the "
      "slowest ops with the model code they compute",
  )
  return parser.parse_args(argv)


def main(argv=None) -> None:
  args = parse_args(argv)
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
    with open(args.json, "w") as f:
      json.dump(record, f, indent=1)


if __name__ == "__main__":
  sys.exit(cli.exit_code(main, sys.argv))
