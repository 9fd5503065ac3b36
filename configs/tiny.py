r"""A seconds-long LMR config for tests and smoke runs (tiny synthetic data, tiny model).

  python -m lmr_jax.data.synthetic --out_dir data/tiny --train_videos 12 --val_videos 5 \
      --test_videos 3 --min_clips 20 --max_clips 24 --min_event_clips 2 --max_event_clips 3 \
      --slowfast_dim 24 --clip_dim 16 --text_dim 16 --caption_dim 20
  python train.py --config=configs/tiny.py --workdir=/tmp/lmr_tiny

Numbers: none to reach; it exercises every code path in seconds.
"""

import ml_collections

from configs import base


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  config = base.get_base_config()
  root = "data/tiny"
  config.data.name = "tiny"
  config.data.feat_root = f"{root}/features"
  config.data.annotation_files = ml_collections.ConfigDict(
      {
          split: f"{root}/annotations/{split}.jsonl"
          for split in ("train", "val", "test", "test_with_gt")
      }
  )
  config.data.visual_dims = (24, 16)
  config.data.query_dim = 16
  config.data.caption_dim = 20
  config.data.max_clips = 24
  config.data.max_query_tokens = 12

  config.model.hidden_dim = 16
  config.model.num_heads = 2
  config.model.ffn_dim = 16
  config.model.num_queries = 5
  # One layer per stack (the paper's are 2 each): every code path is there, and the train step
  # compiles in ~40 % less time, which is most of what the tests' trainings cost on a CPU. The
  # paper's depths are trained in tests/test_training.py and compared with QD-DETR in test_port.py.
  config.model.num_vqf_layers = 1
  config.model.num_encoder_layers = 1
  config.model.num_decoder_layers = 1
  # Dropout on the input projections only (the batch-split, sharding-sensitive masks the parity tests
  # need); the attention and FFN dropouts' masks cost another ~20 % of the step's compilation and are
  # tested in tests/test_model.py.
  config.model.dropout = 0.0
  # `:use_caption_context,share_vqf` switches those model flags off (the ablations, in tests).
  for switch in filter(None, arg.split(",")):
    if switch not in config.model or not isinstance(config.model[switch], bool):
      raise ValueError(f"tiny config: '{switch}' is not a boolean config.model switch")
    config.model[switch] = False

  config.batch_size = 4
  config.eval_batch_size = 4
  config.num_epochs = 2
  config.eval_every_epochs = 1
  config.log_every_steps = 2
  config.checkpoint_every_steps = 3
  return config.lock()
