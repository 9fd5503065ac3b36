r"""Speed benchmark of LMR training and inference at a config's real shapes, on any device.

  python -m lmr_jax.benchmark                              # configs/qvh.py: B32, 75 clips, captions
  python -m lmr_jax.benchmark --config=configs/tiny.py --steps=3 --json=/tmp/bench.json
  python -m lmr_jax.benchmark --dtypes=float32             # the step in fp32 only (+ config's)
  python -m lmr_jax.benchmark --profile_dir=/tmp/lmr_trace # + the slowest ops, time per model part
  python -m lmr_jax.benchmark --qd_detr_root=../shared/reference/qd_detr_repo  # + public QD-DETR

Prints a header (device kind, platform, device count, config, batch, compute dtype, where the
peaks come from) and one markdown table: compile time, train step time and samples/s in the config's
dtype; the step's FLOPs and bytes accessed from XLA's cost analysis and their ratio (arithmetic
intensity); the GFLOP/s the step runs at against plain matmuls measured in the same run (fp32, bf16)
and against the device's datasheet peak (``device_peaks.json``; the measured matmuls where the device is
not listed, as the CPU); the step timed with ``model.dtype`` float32 and bfloat16 (params stay
float32), each with its share of peak (MFU); the roofline step time max(FLOPs / peak, bytes /
bandwidth); the hours of the config's schedule and of the papers' QVHighlights and Charades-STA
schedules at the measured and at the roofline step time; inference latency per query at batch 1 and
32; the share of a step spent in matching + losses; tf.data throughput on a small synthetic dataset
in the real on-disk format; the peak host RSS and, where the device reports it (GPU, TPU), its peak
memory in use. Each row with its target and pass/fail. Beside them, the same figures for the compare
config (``--compare_config``, default ``configs/qvh.py:qd_detr``: our QD-DETR path), whose step is
timed alternating with the config's, and the ratios of the two steps, of their FLOPs and of time per
FLOP; with ``--qd_detr_root`` public QD-DETR's own PyTorch train step and inference on the compare
config's batch (``qd_detr_pytorch``, in a child process) and its step against ours.

The model, optimizer and jitted steps are the training code's own (state_lib.build_model,
train_step.make_optimizer / jit_train_step / jit_eval_step); inputs are random with the real shapes
and masks (videos of 2/3 to all of max_clips clips, 1 to 3 windows). Everything runs on the default
device (``jax.devices()[0]``), timed to ``jax.block_until_ready``.

Modules: ``devices`` (datasheet peaks, from ``device_peaks.json``, and measured matmuls), ``inputs``
(random batches, a small on-disk dataset), ``timing`` (the train step compiled and timed, the
losses' share, inference, memory), ``feeding`` (tf.data and device-resident rates), ``profile`` (the
step's ops by time and by model part), ``roofline`` (peaks, MFU, roofline, schedules),
``qd_detr_pytorch`` (public QD-DETR's step, in its own process), ``report`` (``run_benchmark`` and
the table), ``__main__`` (the command line).
"""
