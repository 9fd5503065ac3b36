"""``python -m lmr_jax.benchmark``: the command line (see the package's docstring)."""

from __future__ import annotations

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts

import sys  # noqa: E402

from absl import flags  # noqa: E402

from lmr_jax import benchmark as benchmark  # noqa: E402
from lmr_jax import fileio  # noqa: E402
from lmr_jax.benchmark import devices, report  # noqa: E402
from lmr_jax.benchmark.profile import format_module_times, format_profile  # noqa: E402
from lmr_jax.benchmark.roofline import DTYPES, QVH_TRAIN_QUERIES  # noqa: E402
from lmr_jax.fileio import load_config  # noqa: E402


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
  flags.DEFINE_string(
      "compare_config",
      "configs/qvh.py:qd_detr",
      "also time this config's step, alternating with --config's, and report their ratio per FLOP "
      "('' or --config itself: none)",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "qd_detr_root",
      "",
      "a public QD-DETR checkout (holds qd_detr/): also time its own PyTorch step and inference on "
      "the compare config's batch, in a child process (lmr_jax/benchmark/qd_detr_pytorch.py)",
      flag_values=flag_values,
  )
  flags.DEFINE_string("json", "", "also write the figures here", flag_values=flag_values)
  flags.DEFINE_string(
      "profile_dir",
      "",
      "also trace 2 train steps with jax.profiler here (Perfetto/TensorBoard) and print the "
      "slowest ops with the model code they compute, and the op time by model part",
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
  compare = args.compare_config if args.compare_config not in ("", args.config) else ""
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
      compare_config=compare,
      qd_detr_root=args.qd_detr_root,
  )
  info = devices.device_info()
  print(report.header(args.config, batch_size, config.model.dtype, info=info, compare=compare))
  print(report.format_table(results))
  if profile:
    print(f"\nSlowest ops of the train step (trace in {args.profile_dir}):")
    print(format_profile(profile))
    print("\nThe train step's op time by model part:")
    print(format_module_times(profile))
  if args.json:
    record = {
        "config": args.config,
        "compare_config": compare or None,
        "batch_size": batch_size,
        **info,
        "dtype": config.model.dtype,
        "dtypes": list(args.dtypes),
        "figures": {key: results[key] for key in report.FIGURE_KEYS},
        "pass": {row[0]: report.passes(row[0], results[row[0]]) for row in report.ROWS},
    }
    fileio.write_json(args.json, record, indent=1)


if __name__ == "__main__":
  sys.exit(main())
