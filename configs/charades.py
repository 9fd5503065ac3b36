r"""LMR on Charades-STA (paper: VGG features, query embedded by Llama's frozen embedding layer;
batch 8 x 100 epochs).

  python train.py --config=configs/charades.py --workdir=workdir/charades              # paper
  python train.py --config=configs/charades.py:vgg_glove --workdir=workdir/charades_glove
  python train.py --config=configs/charades.py:sf_clip --workdir=workdir/charades_sfc
  python eval.py --config=configs/charades.py --workdir=workdir/charades --split=test

Data under data/charades_sta: the QVHighlights-format annotations
(charades_sta_{train,test}_tvr_format.jsonl) and the peers' (CG-DETR) feature release: VGG rgb
features at 1/6 s per clip (4096-d) with GloVe query tokens (300-d, in clip_text_features/), or
SlowFast+CLIP at 1 s clips with CLIP query tokens. Caption context comes from preprocess/ at 2 s per
caption; each visual clip takes the caption of the 2 s window it falls in (data.caption_clip_len).
max_clips covers 75 s: every test video fits, the 53 of 12,404 training queries with longer videos
are truncated (logged).

The paper's setting (Sec. IV-B): "For query text and generated description text, we use only the
frozen embedding layer of Llama"; it uses CLIP query embeddings on QVHighlights only. So the default
variant feeds the visual VQF the query's Llama-7B embedding tokens (4096-d), the very files the
caption VQF reads: caption_query_features/qid{qid}.npz, written by
`python -m preprocess.text_features --llama ... --annotations ...` (docs/preprocess.md).
"vgg_glove" keeps the GloVe tokens of the peers' VGG setting instead (CG-DETR's release).

Numbers it should reach: the paper reports LMR's Charades-STA R1@{0.5, 0.7} and R5@{0.5, 0.7} in
its Tab. III. The evaluation is R@{1,5} at IoU {0.3, 0.5, 0.7}, mIoU, and mAP@0.5, mAP@0.75 and mAP
over IoU 0.5:0.05:0.95 (lmr_jax/evaluation/charades_metrics.py).

Variants via `:arg`: "" (VGG + Llama query tokens, the paper's), "vgg_glove", "sf_clip".
"""

import ml_collections

from configs import base

VGG = dict(visual_streams=("vgg_features/rgb_features",), visual_dims=(4096,), clip_len=1 / 6)


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
      # One set of Llama query tokens serves both VQFs; preprocess writes it once.
      "": dict(
          **VGG,
          query_feat_dir=config.data.caption_query_feat_dir,
          query_dim=config.data.caption_dim,
          max_clips=450,
      ),
      "vgg_glove": dict(**VGG, query_feat_dir="clip_text_features", query_dim=300, max_clips=450),
      "sf_clip": dict(
          visual_streams=("slowfast_features", "clip_features"),
          visual_dims=(2304, 512),
          query_feat_dir="clip_text_features",
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
  # QD-DETR's public code has no Charades-STA path; CG-DETR (its successor, whose Charades features
  # this config reads) rounds Charades windows as QD-DETR rounds QVHighlights ones, to multiples of
  # its --clip_length (0.166666 s for VGG, 1 s for SlowFast+CLIP): data.clip_len here.
  config.eval_round_to_clip = True
  return config.lock()
