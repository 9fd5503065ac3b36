r"""LMR on the synthetic context benchmark (the embedded default; CPU, minutes).

  python train.py --config=configs/synthetic.py --workdir=workdir/synthetic
  python train.py --config=configs/synthetic.py:no_captions --workdir=workdir/synthetic_no_captions
  python train.py --config=configs/synthetic.py:eq5 --workdir=workdir/synthetic_eq5
  python train.py --config=configs/synthetic.py:eq5,scene=0.3 --workdir=workdir/synthetic_eq5_scene0.3

The data (lmr_jax/data/synthetic.py) is written to data/synthetic on first use (data/synthetic_scene{x}
for the other data variants). Only the captions tell the target moment from its distractors, so LMR
with caption context must beat the same model without it.
Measured (2-core CPU, 2026-12-03, README "First run"): full model val R1@0.5 98.05, R1@0.7 93.87,
mAP 77.61 (test 97.43 / 93.43 / 77.54); w/o caption context val 41.23 / 39.55 / 51.32; the paper's
Eq. 5 saliency (`:eq5`) val 40.67 / 38.72 / 45.85. About 17 min of training each (shared CPU).
The experiments on why Eq. 5 stays at chance here: docs/synthetic_benchmark.md.

The variant after the colon is a comma-separated list (``:eq5,scene=0.3``):
  model: "no_captions" -- w/o caption context (the paper's w/o VCE);
         "eq5" -- saliency by the paper's Eq. 5 over the video tokens (the default here also reads
         each clip's caption token, see get_config);
  data:  "scene=X" -- the visual features carry each event's scene with strength X
         (``data.synthetic.visual_scene``; default 0: they carry none).
"""

import ml_collections

from configs import base

MODEL_VARIANTS = {
    "no_captions": {"use_caption_context": False},
    "eq5": {"saliency_tokens": "video"},  # the paper's Eq. 5 on this benchmark
}


def _parse(arg: str) -> tuple[float, dict]:
  """The variant string -> (visual_scene, model overrides)."""
  scene, model = 0.0, {}
  for token in filter(None, (t.strip() for t in arg.split(","))):
    if token.startswith("scene="):
      try:
        scene = float(token[len("scene=") :])
      except ValueError:
        raise ValueError(f"synthetic variant '{token}': scene= takes a number") from None
    elif token in MODEL_VARIANTS:
      model.update(MODEL_VARIANTS[token])
    else:
      raise ValueError(
          f"unknown synthetic variant '{token}', choose from scene=X, {sorted(MODEL_VARIANTS)}"
      )
  return scene, model


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  scene, model_overrides = _parse(arg)
  config = base.get_base_config()
  root = "data/synthetic" if scene == 0.0 else f"data/synthetic_scene{scene:g}"
  config.data.name = "synthetic"
  config.data.feat_root = f"{root}/features"
  config.data.annotation_files = ml_collections.ConfigDict(
      {
          "train": f"{root}/annotations/train.jsonl",
          "val": f"{root}/annotations/val.jsonl",
          "test": f"{root}/annotations/test.jsonl",
          "test_with_gt": f"{root}/annotations/test_with_gt.jsonl",
      }
  )
  config.data.caption_dim = 512
  config.data.generate_synthetic = True
  config.data.synthetic = ml_collections.ConfigDict({"seed": 0, "visual_scene": scene})

  # Not the paper's QVHighlights schedule: tuned for a quick CPU run on this small dataset.
  config.batch_size = 16
  config.optim.learning_rate = 3e-4
  config.optim.warmup_steps = 50
  config.model.input_dropout = 0.1
  config.num_epochs = 15
  config.eval_every_epochs = 5
  config.checkpoint_every_steps = 500

  # The one model setting that is not the paper's, and why (docs/synthetic_benchmark.md): Eq. 5
  # scores the video tokens, but here the visual features carry no scene by construction, so a
  # visual token learns its clip's scene only by attending to the caption tokens; in this short
  # schedule it does not (Eq. 5 as written: val HL Hit1 41 %, chance; R1@0.5 40.67, chance among the
  # look-alikes). Scoring each clip's visual + caption token gives the saliency losses a direct path
  # into the caption VQF. configs/qvh.py and configs/charades.py keep Eq. 5 ("video").
  config.model.saliency_tokens = "sum"

  config.model.update(model_overrides)
  return config.lock()
