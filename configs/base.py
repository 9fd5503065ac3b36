"""Settings shared by every LMR config: the paper's model and loss (arXiv 2405.12540, Sec. IV-B).

Dataset configs (qvh.py, charades.py, synthetic.py) start from ``get_base_config()`` and set their data.
"""

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = ""  # used in logs and file names only
  config.data.feat_root = ""
  config.data.annotation_files = ml_collections.ConfigDict({"train": "", "val": "", "test": ""})
  config.data.visual_streams = ("slowfast_features", "clip_features")
  config.data.visual_dims = (2304, 512)
  config.data.query_feat_dir = "clip_text_features"
  config.data.query_dim = 512
  config.data.caption_feat_dir = "caption_features"
  config.data.caption_query_feat_dir = "caption_query_features"
  config.data.caption_dim = 4096  # Llama-7B's embedding width
  config.data.clip_len = 2.0
  config.data.caption_clip_len = 2.0  # seconds per caption; captions are mapped onto visual clips
  config.data.max_clips = 75
  config.data.max_query_tokens = 32
  config.data.max_windows = 5
  config.data.use_tef = True
  # A `python -m lmr_jax.data.packed` --out_dir: read features from its TFDS datasets, not feat_root.
  config.data.packed_dir = ""
  config.data.preload = True  # read and validate every feature file once, before training
  config.data.generate_synthetic = False  # write the synthetic benchmark first if it is missing
  # True: the train split's features live in device memory (replicated on every device; README
  # "Device-resident data" gives the footprints) and the jitted step gathers its batches there; the
  # host sends per epoch only example indices and labels. Same batches as the tf.data path.
  config.data.device_resident = False
  config.data.resident_dtype = "float32"  # or "bfloat16": half the device memory for the features

  config.model = ml_collections.ConfigDict()
  config.model.hidden_dim = 256
  config.model.num_heads = 8
  config.model.ffn_dim = 256  # paper: "no expansions in feed-forward networks" (QD-DETR: 1024)
  config.model.num_vqf_layers = 2  # paper/QD-DETR: 2 text-to-video cross-attention layers
  config.model.num_encoder_layers = 2  # paper/QD-DETR: 2 self-attention layers
  config.model.num_decoder_layers = 2  # paper/QD-DETR: 2 DAB-DETR decoder layers
  config.model.num_queries = 10  # k (paper Tab. VII; QD-DETR's default)
  config.model.dropout = 0.1
  config.model.input_dropout = 0.5  # both input-projection stages (QD-DETR)
  # QD-DETR's input LayerNorm has scale and bias; False drops them on the first stage (exact in
  # evaluation after folding them into the Dense, ~10 % fewer FLOPs per step; README "Fidelity").
  config.model.input_norm_affine = True
  # Eq. 5 scores the video tokens x_v^i of F_m ("video"); "sum" scores each clip's visual + caption
  # token (a documented variant, not the paper's).
  config.model.saliency_tokens = "video"
  # What the decoder reads as keys and values: the video tokens x_v of F_m ("video", the paper's
  # Sec. III-C: "the video tokens within F_m serve for both decoding and video-query relevance") or
  # every context token [x_v; x_t] ("video_and_captions", Sec. III-D's H over N_v + N_t). Fidelity
  # doc: docs/fidelity.md.
  config.model.decoder_memory = "video_and_captions"
  # The clips' sine positions in VQF and the self-attention layers: QD-DETR's code normalised to the
  # video's length ("normalized"), or DETR's raw clip index ("index", an experiment switch: sharper
  # between neighbouring clips). The decoder always reads normalised positions (its anchors are
  # fractions of the video).
  config.model.clip_positions = "normalized"
  # True reproduces a QD-DETR quirk (its T2V mask is tiled across the batch in the wrong order, so a
  # query's outputs depend on its batch-mates' padding); for the weight-port parity check only.
  config.model.qd_detr_t2v_mask = False
  # Compute dtype: "bfloat16" on GPU/TPU (params, optimizer state, LayerNorm statistics, softmax,
  # outputs, losses stay float32). float32 on the CPU, where XLA's bf16 matmuls are slower.
  config.model.dtype = "float32"
  # "auto": attention in a few batch rows at a time on the CPU (cache-sized), one batched einsum on
  # GPU/TPU; "chunked" / "einsum" force one (lmr_jax/model/layers.py).
  config.model.attention = "auto"
  # Ablations (paper Tab. V/VI); each switches a real code path in lmr_jax/model/lmr.py.
  config.model.use_caption_context = True  # False: w/o VCE
  config.model.use_visual = True  # False: w/o VFE (the visual stream does not enter the context)
  config.model.language_queries = (
      True  # False: w/o LMQ (QD-DETR's content-free queries: zeros + anchors)
  )
  config.model.share_vqf = True  # False: w/o WS (separate visual and caption VQF weights)
  config.model.use_vqf = True  # False: w/o VQF (context tokens skip the query fusion)

  config.loss = ml_collections.ConfigDict()
  config.loss.span_l1 = 10.0
  config.loss.span_giou = 1.0
  config.loss.label = 4.0
  config.loss.background_weight = 0.1  # CE weight of the "no moment" class, as DETR's eos_coef
  config.loss.saliency_margin = 0.2
  config.loss.saliency_hinge = 1.0
  config.loss.saliency_rank_contrastive = 1.0
  config.loss.rank_contrastive_temperature = 0.5
  config.loss.saliency_inter_video = 1.0
  config.loss.aux_layers = True  # the same losses on every decoder layer's output

  config.optim = ml_collections.ConfigDict()
  config.optim.learning_rate = 1e-4
  config.optim.weight_decay = 1e-4
  config.optim.grad_clip_norm = 0.1
  config.optim.warmup_steps = 0
  config.optim.schedule = "constant"  # or "cosine"

  # Data parallelism (lmr_jax/training/parallel.py): the batch is split over a 1-D "data" mesh.
  config.num_devices = 0  # 0: every device of every process; N: the first N (single process)
  config.fsdp = False  # True: shard params and optimizer state over the mesh instead of replicating
  config.distributed = False  # True: jax.distributed.initialize() first (multi-host; see README)

  config.batch_size = 32  # global: split over processes and devices
  # Train steps per jitted call (lax.scan over device-resident batches; needs data.device_resident):
  # fewer host round trips when a step takes a few milliseconds on an accelerator.
  config.steps_per_dispatch = 1
  config.num_epochs = 200
  config.eval_batch_size = 64
  config.eval_every_epochs = 5
  config.log_every_steps = 50
  config.checkpoint_every_steps = 1000
  config.keep_checkpoints = 3
  config.evals = ("qvhighlights",)  # keys of lmr_jax.evaluation.evaluators.METRICS
  config.best_metric = "MR-full-mAP"
  config.eval_split = "val"
  # True: eval, training eval and predict round each predicted window end to a multiple of
  # data.clip_len, as QD-DETR's post-processing does before scoring (see
  # lmr_jax/evaluation/predictions.py). The configs compared with the peers' numbers switch it on.
  config.eval_round_to_clip = False
  return config
