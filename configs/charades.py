r"""LMR on Charades-STA (paper: VGG features; 8 x 100 epochs).

  python train.py --config=configs/charades.py --workdir=workdir/charades            # VGG (paper)
  python train.py --config=configs/charades.py:sf_clip --workdir=workdir/charades_sfc
  python eval.py --config=configs/charades.py --workdir=workdir/charades --split=test

Data under data/charades_sta: the QVHighlights-format annotations (charades_sta_{train,test}_tvr_format
.jsonl) and the peers' (CG-DETR) feature release: VGG rgb features at 1/6 s per clip (4096-d) with GloVe
query tokens (300-d, in clip_text_features/), or SlowFast+CLIP at 1 s clips with CLIP query tokens.
Caption context comes from preprocess/ at 2 s per caption; each visual clip takes the caption of the
2 s window it falls in (data.caption_clip_len). max_clips covers 75 s: every test video fits, the 53 of
12,404 training queries with longer videos are truncated (logged).

Numbers it should reach: the paper reports LMR's Charades-STA R1@{0.5, 0.7} in its Tab. III. The
evaluation is R@{1,5} at IoU {0.3, 0.5, 0.7} and mIoU (lmr_jax/evaluation/charades_metrics.py).

Variants via `:arg`: "" (VGG), "sf_clip".
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = base.get_base_config()
  root = "data/charades_sta"
  config.data.name = "charades_sta"
  config.data.feat_root = f"{root}/features"
  config.data.annotation_files = ml_collections.ConfigDict(
      {
          "train": f"{root}/charades_sta_train_tvr_format.jsonl",
          "test": f"{root}/charades_sta_test_tvr_format.jsonl",
      }
  )
  variants = {
      "": dict(
          visual_streams=("vgg_features/rgb_features",),
          visual_dims=(4096,),
          query_dim=300,
          clip_len=1 / 6,
          max_clips=450,
      ),
      "sf_clip": dict(
          visual_streams=("slowfast_features", "clip_features"),
          visual_dims=(2304, 512),
          query_dim=512,
          clip_len=1.0,
          max_clips=75,
      ),
  }
  if arg not in variants:
    raise ValueError(f"unknown charades variant '{arg}', choose from {sorted(variants)}")
  config.data.update(variants[arg])
  config.data.caption_clip_len = 2.0
  config.batch_size = 8
  config.num_epochs = 100
  config.eval_split = "test"  # Charades-STA has no val split; the peers report test
  config.evals = ("charades_sta",)
  config.best_metric = "R1@0.7"
  return config.lock()
