r"""Public QD-DETR's own PyTorch code timed on the batch our benchmark times: the baseline of its rows.

  python -m lmr_jax.benchmark.qd_detr_pytorch --qd_detr_root=../shared/reference/qd_detr_repo
  python -m lmr_jax.benchmark --qd_detr_root=../shared/reference/qd_detr_repo   # runs this too

QD-DETR (Moon et al., CVPR 2023; github.com/wjun0830/QD-DETR, MIT) is not a dependency: the script
imports the ``qd_detr`` package from a checkout (``--qd_detr_root``, the folder that holds
``qd_detr/``), as the parity fixtures' maker does, and needs torch (preprocess/requirements.txt). It
builds QD-DETR's model and criterion with its ``config.py`` defaults and ``scripts/train.sh``'s
QVHighlights features (SlowFast + CLIP + 2 endpoints = 2818-d clips, 512-d CLIP text), the optimizer of
its ``setup_model`` (AdamW, lr 1e-4, weight decay 1e-4) and the step of its ``train_epoch`` (forward,
criterion with Hungarian matching, backward, gradient clipping at 0.1, optimizer step); the inputs are
``inputs.random_batch`` of ``configs/qvh.py:qd_detr`` with the same seed as the benchmark's, so both
frameworks run the same shapes, masks and targets. Prints (or writes with ``--json``) the median train
step, the inference latency per query at batch 1 and 32 (its ``model.eval()`` forward under
``torch.no_grad()``) and the process's peak RSS. Runs in its own process, after the JAX figures, so
neither framework's threads or allocator share the cores or the RSS with the other's.
"""

from __future__ import annotations

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts (as the JAX side's)

import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

import numpy as np  # noqa: E402

from lmr_jax import fileio  # noqa: E402
from lmr_jax.benchmark import inputs  # noqa: E402
from lmr_jax.data import features  # noqa: E402
from lmr_jax.errors import LmrError  # noqa: E402

QD_DETR_CONFIG = "configs/qvh.py:qd_detr"


def qd_detr_options(config) -> types.SimpleNamespace:
  """QD-DETR's options (its config.py defaults, train.sh's QVHighlights feature dims) that its
  ``build_model`` reads, at our config's shapes."""
  data = config.data
  return types.SimpleNamespace(
      device="cpu",
      hidden_dim=256,
      nheads=8,
      dim_feedforward=1024,
      enc_layers=2,
      dec_layers=2,
      dropout=0.1,
      input_dropout=0.5,
      pre_norm=False,
      position_embedding="sine",
      max_q_l=data.max_query_tokens,
      max_v_l=data.max_clips,
      a_feat_dir=None,
      t_feat_dim=data.query_dim,
      v_feat_dim=features.FeatureSpec.from_config(data).video_dim,  # + video_tef's 2 endpoints
      num_queries=10,
      aux_loss=True,
      contrastive_align_loss=False,
      contrastive_hdim=64,
      span_loss_type="l1",
      use_txt_pos=False,
      n_input_proj=2,
      set_cost_span=10,
      set_cost_giou=1,
      set_cost_class=4,
      span_loss_coef=10,
      giou_loss_coef=1,
      label_loss_coef=4,
      lw_saliency=1.0,
      eos_coef=0.1,
      temperature=0.07,
      saliency_margin=0.2,
      dset_name="hl",
      lr=1e-4,
      wd=1e-4,
      grad_clip=0.1,
  )


def import_qd_detr(root: str):
  """QD-DETR's ``build_model`` from the checkout at ``root``."""
  if not os.path.isfile(os.path.join(root, "qd_detr", "model.py")):
    raise LmrError(f"{root}: no qd_detr/model.py here; --qd_detr_root takes a QD-DETR checkout")
  import torch  # noqa: PLC0415 - torch is the preprocess side's; only this script needs it

  # Its transformer calls .cuda() unconditionally (transformer.py); on the CPU that is the identity.
  torch.Tensor.cuda = lambda self, *args, **kwargs: self
  sys.path.insert(0, os.path.abspath(root))
  from qd_detr.model import build_model  # noqa: PLC0415

  return build_model


def torch_inputs(batch: dict, torch):
  """Our batch as QD-DETR's ``prepare_batch_inputs`` returns it: model inputs and targets."""
  t = lambda x, dtype=torch.float32: torch.from_numpy(np.asarray(x)).to(dtype)  # noqa: E731
  model_inputs = dict(
      src_txt=t(batch["query_feats"]),
      src_txt_mask=t(batch["query_mask"]),
      src_vid=t(batch["video_feats"]),
      src_vid_mask=t(batch["video_mask"]),
  )
  spans = []
  for windows, mask in zip(batch["windows"], batch["window_mask"]):
    start, end = windows[mask, 0], windows[mask, 1]
    spans.append(dict(spans=t(np.stack([(start + end) / 2, end - start], 1))))
  targets = dict(
      span_labels=spans,
      saliency_pos_labels=t(batch["saliency_pos"], torch.long),
      saliency_neg_labels=t(batch["saliency_neg"], torch.long),
      saliency_all_labels=t(batch["saliency"]),
  )
  return model_inputs, targets


def measure(
    qd_detr_root: str,
    *,
    config_spec: str = QD_DETR_CONFIG,
    batch_size: int,
    steps: int,
    warmup: int,
    seed: int = 0,
) -> dict[str, float]:
  """{"step_s", "infer_b1_ms", "infer_b32_ms", "peak_rss_gb", "threads"} of QD-DETR's own code at
  ``config_spec``'s data shapes."""
  build_model = import_qd_detr(qd_detr_root)
  import torch  # noqa: PLC0415

  config = fileio.load_config(config_spec)
  options = qd_detr_options(config)
  torch.manual_seed(seed)
  model, criterion = build_model(options)
  optimizer = torch.optim.AdamW(
      [p for p in model.parameters() if p.requires_grad], lr=options.lr, weight_decay=options.wd
  )
  rng = np.random.default_rng(seed)  # the JAX benchmark's first batch: the same numbers
  model_inputs, targets = torch_inputs(inputs.random_batch(config, batch_size, rng), torch)

  def train_step():  # QD-DETR's train_epoch, one batch
    outputs = model(**model_inputs)
    loss_dict = criterion(outputs, targets)
    weights = criterion.weight_dict
    loss = sum(loss_dict[k] * weights[k] for k in loss_dict if k in weights)
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), options.grad_clip)
    optimizer.step()
    return loss.item()  # its loop reads the loss every step (loss_meters)

  model.train()
  criterion.train()
  step_s = _median_seconds(train_step, steps, warmup)
  model.eval()
  figures = {"step_s": step_s}
  with torch.no_grad():
    for size in (1, 32):
      eval_inputs, _ = torch_inputs(inputs.random_batch(config, size, rng), torch)
      seconds = _median_seconds(lambda: model(**eval_inputs), max(steps, 5), warmup)
      figures[f"infer_b{size}_ms"] = 1e3 * seconds / size
  figures["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
  figures["threads"] = torch.get_num_threads()
  return figures


def _median_seconds(fn, repeats: int, warmup: int) -> float:
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def _define_flags(flag_values) -> None:
  from absl import flags  # noqa: PLC0415

  flags.DEFINE_string(
      "qd_detr_root",
      None,
      "a QD-DETR checkout (the folder holding qd_detr/)",
      flag_values=flag_values,
  )
  flags.DEFINE_string(
      "config", QD_DETR_CONFIG, "the shapes: config.py[:arg]", flag_values=flag_values
  )
  flags.DEFINE_integer(
      "batch_size", 32, "the batch of the timed train step", flag_values=flag_values
  )
  flags.DEFINE_integer("steps", 10, "timed train steps (median)", flag_values=flag_values)
  flags.DEFINE_integer("warmup", 2, "untimed train steps first", flag_values=flag_values)
  flags.DEFINE_string(
      "json", "", "write the figures here, one line (else print them)", flag_values=flag_values
  )
  flags.mark_flag_as_required("qd_detr_root", flag_values=flag_values)


def _measure(args) -> int:
  figures = measure(
      args.qd_detr_root,
      config_spec=args.config,
      batch_size=args.batch_size,
      steps=args.steps,
      warmup=args.warmup,
  )
  if args.json:
    fileio.write_json(args.json, figures, indent=None)  # one line: fileio.read_jsonl reads it
  else:
    print(json.dumps(figures, indent=1))
  return 0


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _measure, __doc__, argv)


if __name__ == "__main__":
  sys.exit(main())
