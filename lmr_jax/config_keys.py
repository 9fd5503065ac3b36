"""Every config key, declared once: its default, what it takes, and what a change to it means.

``configs/base.py`` builds its config from ``KEYS``; the value checks (``check``, run by
``commands.preflight`` and ``data.checks``), the resume and eval comparisons (``training.workdir``),
the settings packed data depends on (``data.packed``) and the values of workdirs written before a key
existed (``training.checkpoint``) all read these declarations. Adding a hyperparameter is one ``Key``
here.

What a change means (``Key.use``):
  MODEL     what the steps compute: a run resumes, and a checkpoint evaluates, only with the same value;
  TRAINING  read by training only: eval.py may be given another value (same numbers), resuming may not;
  RUN       where data lives, placement on devices, how long and how often: may change on resume.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Callable
from typing import Any

import ml_collections

from lmr_jax.errors import ConfigError

MODEL, TRAINING, RUN = "model", "training", "run"

# Allowed values of the keys that name an implementation; the modules that implement them read these.
SALIENCY_TOKENS = ("video", "sum")  # model.saliency_tokens
DECODER_MEMORY = ("video", "video_and_captions")  # model.decoder_memory
CLIP_POSITIONS = ("normalized", "index")  # model.clip_positions
DTYPES = ("float32", "bfloat16")  # model.dtype
ATTENTION = ("auto", "chunked", "einsum")  # model.attention
SCHEDULES = ("constant", "cosine")  # optim.schedule
RESIDENT_DTYPES = ("float32", "bfloat16")  # data.resident_dtype
EVAL_PROTOCOLS = ("lmr", "qd_detr")  # eval_protocol


@dataclasses.dataclass(frozen=True)
class Check:
  """A value's type (bool, int, float, str) and a test of it; ``wanted`` completes "must be ..."."""

  kind: type
  test: Callable[[Any], bool]
  wanted: str


def count(minimum: int) -> Check:
  return Check(int, lambda v: v >= minimum, f"an integer >= {minimum}")


def number(test: Callable[[float], bool], wanted: str) -> Check:
  return Check(float, lambda v: math.isfinite(v) and test(v), wanted)


def one_of(choices) -> Check:
  return Check(str, lambda v: v in choices, f"one of {tuple(choices)}")


BOOL = Check(bool, lambda v: True, "True or False")
INT = Check(int, lambda v: True, "an integer")
WEIGHT = number(lambda v: v >= 0, "a finite number >= 0")
RATE = number(lambda v: 0 <= v < 1, "a probability in [0, 1)")
SECONDS = number(lambda v: v > 0, "a positive number of seconds")
FOLDER = Check(str, bool, "the name of a feature folder")

_ABSENT = object()  # "no value": a key not in the base config, or one every workdir has


@dataclasses.dataclass(frozen=True)
class Key:
  """One config key. ``check`` None: checked with its neighbours (``data.checks``, preflight's
  cross-field rules) or free. ``stored``: packed data holds arrays that depend on it.
  ``before_added``: the value runs had before the key existed (their config.json lacks it).
  ``in_base`` False: set only by the configs that use it (``data.synthetic``)."""

  default: Any
  use: str
  check: Check | None = None
  stored: bool = False
  before_added: Any = _ABSENT
  in_base: bool = True


# Dotted name -> declaration, grouped as configs/base.py was. Comments say why a default is what it is.
KEYS: dict[str, Key] = {
    "seed": Key(0, TRAINING, INT),
    # --- data ---
    "data.name": Key("", RUN, stored=True),  # used in logs and file names only
    "data.feat_root": Key("", RUN),
    "data.annotation_files": Key({"train": "", "val": "", "test": ""}, RUN),
    "data.visual_streams": Key(("slowfast_features", "clip_features"), MODEL, stored=True),
    "data.visual_dims": Key((2304, 512), MODEL, stored=True),
    "data.query_feat_dir": Key("clip_text_features", MODEL, FOLDER, stored=True),
    "data.query_dim": Key(512, MODEL, count(1), stored=True),
    "data.caption_feat_dir": Key("caption_features", MODEL, FOLDER, stored=True),
    "data.caption_query_feat_dir": Key("caption_query_features", MODEL, FOLDER, stored=True),
    "data.caption_dim": Key(4096, MODEL, count(1), stored=True),  # Llama-7B's embedding width
    "data.clip_len": Key(2.0, MODEL, SECONDS, stored=True),
    # Seconds per caption; captions are mapped onto visual clips.
    "data.caption_clip_len": Key(2.0, MODEL, SECONDS, stored=True),
    "data.max_clips": Key(75, MODEL, count(1), stored=True),
    "data.max_query_tokens": Key(32, MODEL, count(1), stored=True),
    "data.max_windows": Key(5, MODEL, count(1)),
    "data.use_tef": Key(True, MODEL, BOOL, stored=True),
    # A `python -m lmr_jax.data.packed` --out_dir: read features from its TFDS datasets, not feat_root.
    "data.packed_dir": Key("", RUN),
    "data.preload": Key(True, RUN, BOOL),  # read and validate every feature file once, first
    "data.generate_synthetic": Key(False, RUN, BOOL),  # write the synthetic benchmark if missing
    "data.synthetic": Key(None, TRAINING, in_base=False),  # the synthetic benchmark's settings
    # True: the train split's features live in device memory (replicated on every device;
    # docs/accelerators.md gives the footprints) and the jitted step gathers its batches there; the
    # host sends per epoch only example indices and labels. Same batches as the tf.data path.
    "data.device_resident": Key(False, RUN, BOOL),
    # "bfloat16": half the device memory for the features.
    "data.resident_dtype": Key("float32", RUN, one_of(RESIDENT_DTYPES)),
    # --- model ---
    "model.hidden_dim": Key(256, MODEL, count(1)),
    "model.num_heads": Key(8, MODEL, count(1)),
    # Paper: "no expansions in feed-forward networks" (QD-DETR: 1024).
    "model.ffn_dim": Key(256, MODEL, count(1)),
    "model.num_vqf_layers": Key(2, MODEL, count(1)),  # paper/QD-DETR: 2 text-to-video layers
    "model.num_encoder_layers": Key(2, MODEL, count(1)),  # paper/QD-DETR: 2 self-attention layers
    "model.num_decoder_layers": Key(2, MODEL, count(1)),  # paper/QD-DETR: 2 DAB-DETR layers
    "model.num_queries": Key(10, MODEL, count(1)),  # k (paper Tab. VII; QD-DETR's default)
    "model.dropout": Key(0.1, TRAINING, RATE),
    "model.input_dropout": Key(0.5, TRAINING, RATE),  # both input-projection stages (QD-DETR)
    # QD-DETR's input LayerNorm has scale and bias; False drops them on the first stage (exact in
    # evaluation after folding them into the Dense, fewer FLOPs per step; docs/fidelity.md).
    "model.input_norm_affine": Key(True, MODEL, BOOL),
    # Eq. 5 scores the video tokens x_v^i of F_m ("video"); "sum" scores each clip's visual + caption
    # token (a named extension, not the paper's: configs/synthetic.py:sum).
    "model.saliency_tokens": Key("video", MODEL, one_of(SALIENCY_TOKENS)),
    # What the decoder reads as keys and values: the video tokens x_v of F_m ("video", the paper's
    # Sec. III-C and QD-DETR's) or every context token [x_v; x_t] ("video_and_captions", Sec.
    # III-D's H over N_v + N_t). Runs saved before the key read [x_v; x_t]. docs/fidelity.md,
    # "Decoder memory".
    "model.decoder_memory": Key(
        "video", MODEL, one_of(DECODER_MEMORY), before_added="video_and_captions"
    ),
    # The clips' sine positions in VQF and the self-attention layers: QD-DETR's code normalised to the
    # video's length ("normalized", the real-data configs'), or DETR's raw clip index ("index",
    # configs/synthetic.py's, where position alone pairs a clip with its caption; docs/fidelity.md,
    # "Clip positions"). The decoder always reads normalised positions (its anchors are fractions of
    # the video).
    "model.clip_positions": Key(
        "normalized", MODEL, one_of(CLIP_POSITIONS), before_added="normalized"
    ),
    # True reproduces a QD-DETR quirk (its T2V mask is tiled across the batch in the wrong order, so a
    # query's outputs depend on its batch-mates' padding); for the weight-port parity check only.
    "model.qd_detr_t2v_mask": Key(False, MODEL, BOOL),
    # Compute dtype: "bfloat16" on GPU/TPU (params, optimizer state, LayerNorm statistics, softmax,
    # outputs, losses stay float32). float32 on the CPU, where XLA's bf16 matmuls are slower.
    "model.dtype": Key("float32", TRAINING, one_of(DTYPES)),
    # "auto": attention in a few batch rows at a time on the CPU (cache-sized), one batched einsum on
    # GPU/TPU; "chunked" / "einsum" force one (lmr_jax/model/ops.py).
    "model.attention": Key("auto", RUN, one_of(ATTENTION)),
    # Ablations (paper Tab. V/VI); each switches a real code path in lmr_jax/model/lmr.py.
    "model.use_caption_context": Key(True, MODEL, BOOL, stored=True),  # False: w/o VCE
    "model.use_visual": Key(True, MODEL, BOOL),  # False: w/o VFE (no visual stream in the context)
    "model.language_queries": Key(True, MODEL, BOOL),  # False: w/o LMQ (content-free queries)
    "model.share_vqf": Key(True, MODEL, BOOL),  # False: w/o WS (separate visual and caption VQFs)
    "model.use_vqf": Key(True, MODEL, BOOL),  # False: w/o VQF (context tokens skip query fusion)
    # --- loss ---
    "loss.span_l1": Key(10.0, TRAINING, WEIGHT),
    "loss.span_giou": Key(1.0, TRAINING, WEIGHT),
    "loss.label": Key(4.0, TRAINING, WEIGHT),
    # The CE weight of the "no moment" class, as DETR's eos_coef.
    "loss.background_weight": Key(
        0.1, TRAINING, number(lambda v: 0 < v <= 1, "a number in (0, 1]")
    ),
    "loss.saliency_margin": Key(0.2, TRAINING, WEIGHT),
    "loss.saliency_hinge": Key(1.0, TRAINING, WEIGHT),
    "loss.saliency_rank_contrastive": Key(1.0, TRAINING, WEIGHT),
    "loss.rank_contrastive_temperature": Key(
        0.5, TRAINING, number(lambda v: v > 0, "a number > 0")
    ),
    "loss.saliency_inter_video": Key(1.0, TRAINING, WEIGHT),
    "loss.aux_layers": Key(True, TRAINING, BOOL),  # the same losses on every decoder layer's output
    # --- optimizer ---
    "optim.learning_rate": Key(1e-4, TRAINING, number(lambda v: v > 0, "a number > 0")),
    "optim.weight_decay": Key(1e-4, TRAINING, WEIGHT),
    "optim.grad_clip_norm": Key(0.1, TRAINING, WEIGHT),
    "optim.warmup_steps": Key(0, TRAINING, count(0)),
    "optim.schedule": Key("constant", TRAINING, one_of(SCHEDULES)),
    # --- devices (lmr_jax/training/parallel.py: the batch is split over a 1-D "data" mesh) ---
    "num_devices": Key(0, RUN, count(0)),  # 0: every device of every process; N: the first N
    "fsdp": Key(False, RUN, BOOL),  # True: shard params and optimizer state over the mesh
    "distributed": Key(False, RUN, BOOL),  # True: jax.distributed.initialize() first (multi-host)
    # --- schedule and reporting ---
    "batch_size": Key(32, TRAINING, count(1)),  # global: split over processes and devices
    # Train steps per jitted call (lax.scan over device-resident batches; needs
    # data.device_resident): fewer host round trips when a step takes milliseconds on an accelerator.
    "steps_per_dispatch": Key(1, RUN, count(1)),
    "num_epochs": Key(200, RUN, count(1)),
    "eval_batch_size": Key(64, RUN, count(1)),
    "eval_every_epochs": Key(5, RUN, count(1)),
    "log_every_steps": Key(50, RUN, count(1)),
    "checkpoint_every_steps": Key(1000, RUN, count(1)),
    "keep_checkpoints": Key(3, RUN, count(1)),
    "evals": Key(("qvhighlights",), RUN),  # keys of lmr_jax.evaluation.evaluators.METRICS
    "best_metric": Key("MR-full-mAP", TRAINING),
    "eval_split": Key("val", RUN),
    # True: eval, training eval and predict round each predicted window end to a multiple of
    # data.clip_len, as QD-DETR's post-processing does before scoring
    # (lmr_jax/evaluation/predictions.py). The configs compared with the peers' numbers switch it on.
    "eval_round_to_clip": Key(False, RUN, BOOL),
    # "qd_detr": eval and training eval reproduce QD-DETR's own evaluation pipeline (its batch-mixing
    # T2V mask over the real queries of each eval batch, its post-processing and rounding, float16
    # saliency), for checkpoints ported from QD-DETR (the port writes it); "lmr": ours
    # (lmr_jax/evaluation/predictions.py, docs/evaluation.md).
    "eval_protocol": Key("lmr", RUN, one_of(EVAL_PROTOCOLS), before_added="lmr"),
}


def keys_used(use: str) -> tuple[str, ...]:
  return tuple(name for name, key in KEYS.items() if key.use == use)


def stored_data_keys() -> tuple[str, ...]:
  """The ``config.data`` fields packed data depends on (without the ``data.`` prefix)."""
  return tuple(n.split(".", 1)[1] for n, k in KEYS.items() if k.stored and n.startswith("data."))


def before_added() -> dict[str, Any]:
  return {name: key.before_added for name, key in KEYS.items() if key.before_added is not _ABSENT}


def base_config() -> ml_collections.ConfigDict:
  """A config holding every declared key at its default (unlocked; the dataset configs add theirs)."""
  config = ml_collections.ConfigDict()
  for name, key in KEYS.items():
    if not key.in_base:
      continue
    *groups, leaf = name.split(".")
    node = config
    for group in groups:
      if group not in node:
        node[group] = ml_collections.ConfigDict()
      node = node[group]
    default = key.default
    node[leaf] = ml_collections.ConfigDict(default) if isinstance(default, dict) else default
  return config


def _has_type(value, kind: type) -> bool:
  if kind is bool:
    return isinstance(value, bool)
  if kind is int:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)
  if kind is float:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
  return isinstance(value, kind)


def check(config: ml_collections.ConfigDict, prefix: str = "") -> None:
  """Raises a ``ConfigError`` naming the first declared key under ``prefix`` (e.g. "data.") whose
  value in ``config`` (the config, or its section of that name) is missing or not what it takes."""
  for name, key in KEYS.items():
    if key.check is None or not name.startswith(prefix):
      continue
    node = config
    for part in name[len(prefix) :].split("."):
      if part not in node:
        raise ConfigError(f"config.{name}: missing (configs start from configs/base.py)")
      node = node[part]
    if not _has_type(node, key.check.kind) or not key.check.test(node):
      raise ConfigError(f"config.{name} must be {key.check.wanted}, got {node!r}")
