r"""QD-DETR weights -> LMR's QD-DETR base (configs/qvh.py:qd_detr), and the parity check against QD-DETR.

  python -m lmr_jax.port.qd_detr --checkpoint model_best.ckpt --workdir workdir/qd_detr_port
  python eval.py --workdir workdir/qd_detr_port    # QD-DETR's evaluation; or predict.py
  python eval.py --workdir workdir/qd_detr_port --config=configs/qvh.py:qd_detr \
      --config.eval_protocol=qd_detr --config.eval_batch_size=100  # the same, with --config.x overrides
  python -m lmr_jax.port.qd_detr FIXTURE.npz --outputs OUT.npz

The first form reads a QD-DETR training checkpoint (a torch file with "model", its state_dict, and "opt",
its argparse options; torch is imported only here, and loads it with ``weights_only=True``: tensors,
containers, numbers, strings and ``argparse.Namespace``, nothing that could run code) and writes an
orbax checkpoint plus config.json into the workdir, as train.py would. That config evaluates as
QD-DETR's own pipeline does (``eval_protocol="qd_detr"``, batches of its ``eval_bsz``), so eval.py
scores what QD-DETR printed for the checkpoint; ``--config.eval_protocol=lmr`` gives our evaluation
(docs/evaluation.md). ``python -m lmr_jax.port.compare_qd_detr`` checks the two against QD-DETR's
own training and inference. The second reads a parity fixture made by QD-DETR's own code (layout in
docs/fidelity.md), runs our model in evaluation mode on its inputs and our losses on its targets,
and writes the same keys (output/*, loss/*) for comparison.

QD-DETR names map one-to-one onto ours: torch Linear weights are transposed into Dense kernels, the
packed q/k/v in_proj of torch's MultiheadAttention is split, LayerNorm weight -> scale, PReLU weight ->
slope. ``txt_position_embed`` is the one QD-DETR parameter with no counterpart: QD-DETR's forward skips
it unless ``use_txt_pos`` (off in every QD-DETR script), so it is dropped, and a checkpoint trained
with it is refused.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
from collections.abc import Callable

import numpy as np
from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.data import features as features_lib
from lmr_jax.errors import LmrError


class PortError(LmrError):
  """A QD-DETR checkpoint or fixture that cannot be mapped onto LMR's QD-DETR base."""


IGNORED = ("txt_position_embed.",)  # unused by QD-DETR's forward when use_txt_pos is off

_LINEAR = lambda w: np.ascontiguousarray(w.T)  # noqa: E731  torch (out, in) -> Dense (in, out)
_SAME = lambda w: w  # noqa: E731
_SLOPE = lambda w: np.asarray(w).reshape(())  # noqa: E731  PReLU's one slope


def _leaf(torch_leaf: str) -> tuple[str, Callable]:
  """A torch parameter's last name -> (our leaf name, value transform)."""
  return {
      "weight": ("kernel", _LINEAR),
      "bias": ("bias", _SAME),
  }[torch_leaf]


def _mlp(prefix: str, ours: str) -> list[tuple[str, str]]:
  return [(rf"{prefix}\.layers\.(\d+)\.", f"{ours}/layers_\\1/")]


# (torch name prefix regex, our path prefix), tried in order; the rest of the name is mapped by
# _map_rest. Per-layer modules keep their layer number.
_PREFIXES = [
    (r"input_vid_proj\.(\d+)\.LayerNorm\.", r"video_proj/norm_\1/LayerNorm/"),
    (r"input_vid_proj\.(\d+)\.net\.1\.", r"video_proj/dense_\1/"),
    (r"input_txt_proj\.(\d+)\.LayerNorm\.", r"query_proj/norm_\1/LayerNorm/"),
    (r"input_txt_proj\.(\d+)\.net\.1\.", r"query_proj/dense_\1/"),
    (r"transformer\.t2v_encoder\.layers\.(\d+)\.", r"visual_vqf/layers_\1/"),
    (r"transformer\.encoder\.layers\.(\d+)\.", r"encoder_\1/"),
    (r"transformer\.decoder\.layers\.(\d+)\.", r"decoder/layers_\1/"),
    (r"transformer\.decoder\.norm\.", "decoder/norm/"),
    *_mlp(r"transformer\.decoder\.query_scale", "decoder/query_scale"),
    *_mlp(r"transformer\.decoder\.ref_point_head", "decoder/ref_point_head"),
    *_mlp(r"transformer\.decoder\.ref_anchor_head", "decoder/ref_anchor_head"),
    *_mlp(r"transformer\.decoder\.bbox_embed", "decoder/bbox_embed"),
    *_mlp(r"span_embed", "span_head"),
    (r"class_embed\.", "class_head/"),
    (r"saliency_proj1\.", "saliency_clip_proj/"),
    (r"saliency_proj2\.", "saliency_query_proj/"),
]
_WHOLE = {
    "global_rep_token": ("saliency_token", _SAME),
    "global_rep_pos": ("saliency_pos", _SAME),
    "query_embed.weight": ("moment_anchors", _SAME),
}
_NORMS = ("norm1", "norm2", "norm3", "norm", "LayerNorm")


def _map_rest(path: str, rest: str, value: np.ndarray) -> dict[str, np.ndarray]:
  """The part of a torch name after its module prefix -> our {path: value} entries."""
  parts = rest.split(".")
  if rest in ("weight", "bias"):  # the prefix named the module itself
    if path.rstrip("/").split("/")[-1] in _NORMS:
      return {path + ("scale" if rest == "weight" else "bias"): value}
    name, fn = _leaf(rest)
    return {path + name: fn(value)}
  if parts[0] == "self_attn" and parts[1].startswith("in_proj_"):  # torch's packed q, k, v
    q, k, v = np.split(value, 3, axis=0)
    leaf, fn = _leaf("weight" if parts[1] == "in_proj_weight" else "bias")
    return {f"{path}self_attn/{n}_proj/{leaf}": fn(x) for n, x in zip("qkv", (q, k, v))}
  if parts[0] in ("self_attn", "cross_attn") and parts[1] == "out_proj":
    # In the VQF and encoder layers the output Dense sits inside the attention core ("attend");
    # QD-DETR's decoder attention has no input projection, so ours has none either.
    inner = "attend/" if not path.startswith("decoder/") else ""
    name, fn = _leaf(parts[2])
    return {f"{path}{parts[0]}/{inner}out_proj/{name}": fn(value)}
  if parts[0] in ("linear1", "linear2"):
    name, fn = _leaf(parts[1])
    return {f"{path}ffn/{parts[0]}/{name}": fn(value)}
  if parts[0] == "activation":
    return {f"{path}ffn/activation/slope": _SLOPE(value)}
  if parts[0] in _NORMS:
    return {f"{path}{parts[0]}/{'scale' if parts[1] == 'weight' else 'bias'}": value}
  if len(parts) == 2:  # a Linear of a decoder layer (sa_*_proj, ca_*_proj)
    name, fn = _leaf(parts[1])
    return {f"{path}{parts[0]}/{name}": fn(value)}
  raise KeyError(rest)


def convert_state_dict(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """QD-DETR's state_dict (numpy values) -> our params, flat ``{"a/b/c": array}`` (float32)."""
  params = {}
  for torch_name, value in state_dict.items():
    value = np.asarray(value, np.float32)
    if torch_name.startswith(IGNORED):
      continue
    if torch_name in _WHOLE:
      path, fn = _WHOLE[torch_name]
      params[path] = fn(value)
      continue
    for pattern, ours in _PREFIXES:
      match = re.match(pattern, torch_name)
      if match:
        try:
          params.update(_map_rest(match.expand(ours), torch_name[match.end() :], value))
        except KeyError:
          raise PortError(f"QD-DETR parameter {torch_name}: no counterpart in LMR") from None
        break
    else:
      raise PortError(f"QD-DETR parameter {torch_name}: no counterpart in LMR")
  return params


def model_config_for(dims: dict) -> "ml_collections.ConfigDict":  # noqa: F821
  """configs/qvh.py:qd_detr with QD-DETR's dimensions ``dims``: hidden, heads, ffn, enc, dec, k, v_dim,
  t_dim, and optionally dropout, input_dropout, max_q_l, max_v_l, clip_length."""
  from configs import qvh  # noqa: PLC0415 - configs import ml_collections only

  config = qvh.get_config("qd_detr")
  with config.unlocked():
    m, d = config.model, config.data
    m.hidden_dim, m.num_heads, m.ffn_dim = dims["hidden"], dims["heads"], dims["ffn"]
    m.num_vqf_layers = m.num_encoder_layers = dims["enc"]  # QD-DETR builds both with enc_layers
    m.num_decoder_layers, m.num_queries = dims["dec"], dims["k"]
    m.dropout = dims.get("dropout", m.dropout)
    m.input_dropout = dims.get("input_dropout", m.input_dropout)
    d.query_dim = dims["t_dim"]
    d.max_query_tokens = dims.get("max_q_l", d.max_query_tokens)
    d.max_clips = dims.get("max_v_l", d.max_clips)
    d.clip_len = float(dims.get("clip_length", d.clip_len))
    tef = features_lib.TEF_DIM if d.use_tef else 0
    if sum(d.visual_dims) + tef != dims["v_dim"]:
      # Not the QVHighlights SlowFast+CLIP layout: keep the width, one stream of that size.
      d.visual_streams = ("video_features",)
      d.visual_dims = (dims["v_dim"] - tef,)
  return config


def _check_params(params: dict[str, np.ndarray], config, source: str) -> dict:
  """``params`` against the abstract parameters of ``config``'s model: same names, same shapes."""
  import jax  # noqa: PLC0415
  from flax import traverse_util  # noqa: PLC0415

  from lmr_jax.training import state as state_lib  # noqa: PLC0415

  model = state_lib.build_model(config)
  batch = _dummy_batch(config, batch_size=1)
  abstract = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))["params"]
  expected = {k: v.shape for k, v in traverse_util.flatten_dict(abstract, sep="/").items()}
  missing = sorted(set(expected) - set(params))
  unexpected = sorted(set(params) - set(expected))
  if missing or unexpected:
    raise PortError(
        f"{source}: parameters do not fit configs/qvh.py:qd_detr (missing {missing[:3]}, "
        f"unexpected {unexpected[:3]})"
    )
  for name, shape in expected.items():
    if params[name].shape != shape:
      raise PortError(f"{source}: {name} has shape {params[name].shape}, the model needs {shape}")
  return traverse_util.unflatten_dict(params, sep="/")


def _dummy_batch(config, batch_size: int) -> dict[str, np.ndarray]:
  d = config.data
  clips, tokens = d.max_clips, d.max_query_tokens
  video_dim = features_lib.FeatureSpec.from_config(d).video_dim
  return {
      "video_feats": np.zeros((batch_size, clips, video_dim), np.float32),
      "video_mask": np.ones((batch_size, clips), bool),
      "query_feats": np.zeros((batch_size, tokens, d.query_dim), np.float32),
      "query_mask": np.ones((batch_size, tokens), bool),
  }


# ---- the parity fixture ---------------------------------------------------------------------------


def _fixture_batch(fixture) -> dict[str, np.ndarray]:
  cxw = fixture["target/windows_cxw"].astype(np.float32)
  windows = np.stack([cxw[..., 0] - cxw[..., 1] / 2, cxw[..., 0] + cxw[..., 1] / 2], -1)
  batch_size = cxw.shape[0]
  return {
      "video_feats": fixture["input/src_vid"].astype(np.float32),
      "video_mask": fixture["input/src_vid_mask"] > 0,
      "query_feats": fixture["input/src_txt"].astype(np.float32),
      "query_mask": fixture["input/src_txt_mask"] > 0,
      "windows": windows,
      "window_mask": fixture["target/windows_mask"].astype(bool),
      "saliency": fixture["target/saliency_all"].astype(np.float32),
      "saliency_pos": fixture["target/saliency_pos"].astype(np.int32),
      "saliency_neg": fixture["target/saliency_neg"].astype(np.int32),
      "example_mask": np.ones((batch_size,), bool),
  }


# Our loss terms -> QD-DETR's names; QD-DETR's loss_saliency is the unweighted sum of its three parts.
LOSS_NAMES = {"span_l1": "loss_span", "span_giou": "loss_giou", "label": "loss_label"}
SALIENCY_PARTS = ("saliency_hinge", "saliency_rank_contrastive", "saliency_inter_video")


def fixture_model(path: str, qd_detr_t2v_mask: bool = True):
  """(config, params, batch) of a QD-DETR parity fixture: our model at its dimensions with its
  weights, and its inputs and targets as our batch."""
  fixture = _read_npz(path)
  try:
    dims = {k.split("/", 1)[1]: int(fixture[k]) for k in fixture if k.startswith("config/")}
    dims.setdefault("hidden", fixture["param/global_rep_token"].shape[0])
    dims.setdefault("heads", 8)
    state_dict = {k.split("/", 1)[1]: fixture[k] for k in fixture if k.startswith("param/")}
    batch = _fixture_batch(fixture)
  except KeyError as e:
    raise PortError(f"{path}: no key {e} (not a QD-DETR parity fixture)") from None
  config = model_config_for(dims)
  with config.unlocked():
    config.data.max_clips, config.data.max_query_tokens = (
        batch["video_mask"].shape[1],
        batch["query_mask"].shape[1],
    )
    config.data.use_tef = False  # the fixture's video features are used as given
    config.data.visual_dims = (batch["video_feats"].shape[-1],)
    config.data.visual_streams = ("video_features",)
    config.model.qd_detr_t2v_mask = qd_detr_t2v_mask
  return config, _check_params(convert_state_dict(state_dict), config, path), batch


def run_fixture(path: str, qd_detr_t2v_mask: bool = True) -> dict[str, np.ndarray]:
  """Our eval-mode outputs and loss terms on a QD-DETR parity fixture, under the fixture's names.

  ``qd_detr_t2v_mask``: reproduce QD-DETR's batch-mixing T2V mask (ops.qd_detr_t2v_mask), which
  its outputs carry; off, queries with differently padded batch-mates come out slightly different.
  """
  import jax  # noqa: PLC0415

  from lmr_jax.losses import losses  # noqa: PLC0415
  from lmr_jax.training import state as state_lib  # noqa: PLC0415

  config, params, batch = fixture_model(path, qd_detr_t2v_mask)
  model = state_lib.build_model(config)

  @jax.jit
  def outputs_and_losses(params, batch):
    outputs = model.apply({"params": params}, batch, train=False, with_negatives=True)
    _, terms = losses.total_loss(outputs, batch, config.loss)
    return outputs, terms

  outputs, terms = jax.device_get(outputs_and_losses(params, batch))
  result = {
      "output/pred_logits": outputs["pred_logits"],
      "output/pred_spans": outputs["pred_spans"],
      "output/saliency_scores": outputs["saliency"],
      "output/saliency_scores_neg": outputs["saliency_neg"],
      "loss/loss_saliency": sum(terms[name] for name in SALIENCY_PARTS),
  }
  for ours, theirs in LOSS_NAMES.items():
    result[f"loss/{theirs}"] = terms[ours]
    for layer in range(config.model.num_decoder_layers - 1):
      result[f"loss/{theirs}_{layer}"] = terms[f"aux{layer}/{ours}"]
  return {k: np.asarray(v, np.float32) for k, v in result.items()}


def _read_npz(path: str) -> dict[str, np.ndarray]:
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: data[k] for k in data.files}
  except FileNotFoundError:
    raise PortError(f"{path}: no such file") from None
  except (OSError, ValueError) as e:
    raise PortError(f"{path}: not a readable .npz file ({e})") from None


# ---- a real QD-DETR training checkpoint -----------------------------------------------------------

# QD-DETR options that change the architecture away from what we port.
_REQUIRED_OPTIONS = {
    "n_input_proj": 2,
    "use_txt_pos": False,
    "span_loss_type": "l1",
    "contrastive_align_loss": False,
    "a_feat_dir": None,
    "pre_norm": False,
}


def read_checkpoint(path: str) -> tuple[dict[str, np.ndarray], dict]:
  """(state_dict as numpy, options as a dict) of a QD-DETR ``torch.save`` checkpoint."""
  try:
    import torch  # noqa: PLC0415
  except ImportError:
    raise PortError(
        "reading a QD-DETR checkpoint needs PyTorch: pip install -r preprocess/requirements.txt"
    ) from None
  try:
    # torch's weights_only unpickler: tensors, containers, numbers, strings, torch.device (QD-DETR's
    # opt.device) and, allowed here by name, the argparse.Namespace QD-DETR saves its options in.
    # Nothing else is built from the file, so a checkpoint cannot run code when read.
    with torch.serialization.safe_globals([argparse.Namespace]):
      ckpt = torch.load(path, map_location="cpu", weights_only=True)
  except FileNotFoundError:
    raise PortError(f"{path}: no such file") from None
  except pickle.UnpicklingError as e:
    reason = " ".join(str(e).split())[:200]
    raise PortError(
        f"{path}: refused: it holds objects other than tensors and QD-DETR's options, which are not "
        f"unpickled here ({reason})"
    ) from None
  except Exception as e:  # noqa: BLE001 - torch raises many types for a file it cannot read
    raise PortError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
  if not isinstance(ckpt, dict) or "model" not in ckpt or "opt" not in ckpt:
    raise PortError(f"{path}: not a QD-DETR checkpoint (needs the keys 'model' and 'opt')")
  opt = vars(ckpt["opt"]) if not isinstance(ckpt["opt"], dict) else dict(ckpt["opt"])
  state_dict = {
      k: v.detach().float().numpy() for k, v in ckpt["model"].items() if v.is_floating_point()
  }
  return state_dict, opt


# model_config_for's dimension names -> QD-DETR's option names.
_OPTION_DIMS = {
    "hidden": "hidden_dim",
    "heads": "nheads",
    "ffn": "dim_feedforward",
    "enc": "enc_layers",
    "dec": "dec_layers",
    "k": "num_queries",
    "v_dim": "v_feat_dim",
    "t_dim": "t_feat_dim",
    "dropout": "dropout",
    "input_dropout": "input_dropout",
    "max_q_l": "max_q_l",
    "max_v_l": "max_v_l",
    "clip_length": "clip_length",
}
# The widths of the feature streams QD-DETR's QVHighlights scripts read (v_feat_dirs basenames).
KNOWN_STREAM_DIMS = {"slowfast_features": 2304, "clip_features": 512}


def config_from_options(opt: dict, source: str, visual_dims: tuple[int, ...] | None = None):
  """Our config (configs/qvh.py:qd_detr) for a QD-DETR run's options. The visual streams are the
  basenames of its ``v_feat_dirs``, with widths ``visual_dims`` or, for QVHighlights' SlowFast and
  CLIP folders, the known ones; their sum (+ 2 with TEF) must be its ``v_feat_dim``."""
  for key, value in _REQUIRED_OPTIONS.items():
    if key in opt and opt[key] != value:
      raise PortError(
          f"{source}: QD-DETR option {key}={opt[key]!r} is not supported (needs {value!r})"
      )
  missing = [theirs for theirs in _OPTION_DIMS.values() if theirs not in opt]
  if missing:
    raise PortError(f"{source}: 'opt' has no {missing[0]!r}")
  dims = {ours: opt[theirs] for ours, theirs in _OPTION_DIMS.items()}
  config = model_config_for(dims)
  with config.unlocked():
    if "use_tef" in opt:
      config.data.use_tef = bool(opt["use_tef"])
    streams = tuple(os.path.basename(os.path.normpath(p)) for p in opt.get("v_feat_dirs") or ())
    tef = features_lib.TEF_DIM if config.data.use_tef else 0
    if visual_dims is None and streams and all(s in KNOWN_STREAM_DIMS for s in streams):
      visual_dims = tuple(KNOWN_STREAM_DIMS[s] for s in streams)
    if visual_dims is not None:
      if len(visual_dims) != len(streams) or sum(visual_dims) + tef != dims["v_dim"]:
        raise PortError(
            f"{source}: visual streams {streams} with widths {tuple(visual_dims)} (+{tef} TEF) do not "
            f"make its v_feat_dim {dims['v_dim']}; give one width per v_feat_dirs entry"
        )
      config.data.visual_streams, config.data.visual_dims = streams, tuple(visual_dims)
    config.optim.learning_rate = float(opt.get("lr", config.optim.learning_rate))
    config.optim.weight_decay = float(opt.get("wd", config.optim.weight_decay))
    config.batch_size = int(opt.get("bsz", config.batch_size))
    # eval.py and training evaluation on this workdir follow QD-DETR's own evaluation (its batches
    # of eval_bsz, its T2V mask, post-processing and rounding), so the port scores what QD-DETR
    # printed; --config.eval_protocol=lmr gives ours.
    config.eval_protocol = "qd_detr"
    config.eval_batch_size = int(opt.get("eval_bsz", 100))
  return config


def port_checkpoint(checkpoint_path: str, workdir: str, visual_dims: tuple[int, ...] | None = None):
  """Writes the QD-DETR checkpoint as an LMR workdir (orbax checkpoint + config.json); returns the
  config used."""
  import jax  # noqa: PLC0415

  from lmr_jax.data.position import DataPosition  # noqa: PLC0415
  from lmr_jax.training import checkpoint as checkpoint_lib  # noqa: PLC0415
  from lmr_jax.training import train_step  # noqa: PLC0415

  state_dict, opt = read_checkpoint(checkpoint_path)
  config = config_from_options(opt, checkpoint_path, visual_dims)
  params = _check_params(convert_state_dict(state_dict), config, checkpoint_path)
  if os.path.exists(os.path.join(workdir, checkpoint_lib.CONFIG_FILE)):
    raise PortError(f"{workdir}: already holds a run (config.json); choose an empty workdir")
  os.makedirs(workdir, exist_ok=True)
  tx, _ = train_step.make_optimizer(config.optim, 1)
  params = jax.tree.map(np.asarray, params)
  state = train_step.TrainState(step=np.int32(0), params=params, opt_state=tx.init(params))
  checkpointer = checkpoint_lib.Checkpointer(workdir, config.keep_checkpoints, config.best_metric)
  try:
    # Not evaluated here: the best set records -inf, so any evaluated step of a later fine-tuning
    # run replaces it, while eval.py's default --checkpoint=best finds the ported weights.
    checkpointer.save(state, DataPosition(), metrics={config.best_metric: float("-inf")})
  finally:
    checkpointer.close()
  checkpoint_lib.save_config(config, workdir)
  return config


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "outputs", None, "with a fixture: where to write our outputs (.npz)", flag_values=flag_values
  )
  flags.DEFINE_string(
      "checkpoint", None, "a QD-DETR training checkpoint (torch file)", flag_values=flag_values
  )
  flags.DEFINE_string(
      "workdir", None, "with --checkpoint: the LMR workdir to write", flag_values=flag_values
  )
  flags.DEFINE_list(
      "visual_dims",
      None,
      "with --checkpoint: comma-separated widths of its v_feat_dirs streams, when they are not "
      "QVHighlights' slowfast_features (2304) and clip_features (512)",
      flag_values=flag_values,
  )


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _port, __doc__, argv, positional="[FIXTURE.npz]")


def _port(args) -> None:
  if len(args.positional) > 1:
    raise cli.UsageError(f"one fixture at a time, got {args.positional}")
  fixture = args.positional[0] if args.positional else None
  if args.checkpoint:
    if not args.workdir or fixture:
      raise cli.UsageError("--checkpoint needs --workdir and no fixture")
    dims = None
    if args.visual_dims:
      try:
        dims = tuple(int(x) for x in args.visual_dims)
      except ValueError:
        raise cli.UsageError(
            f"--visual_dims: not comma-separated integers: {','.join(args.visual_dims)!r}"
        ) from None
    config = port_checkpoint(args.checkpoint, args.workdir, dims)
    print(
        f"wrote {args.workdir} (config.json, checkpoints/0, best/0; k={config.model.num_queries})"
    )
  elif fixture:
    if not args.outputs:
      raise cli.UsageError("a fixture needs --outputs OUT.npz")
    fileio.check_output_file(args.outputs, [fixture], "--outputs")
    result = run_fixture(fixture)
    features_lib.write_npz(args.outputs, **result)
    print(f"wrote {args.outputs} ({len(result)} arrays)")
  else:
    raise cli.UsageError("give a fixture or --checkpoint")


if __name__ == "__main__":
  sys.exit(main())
