"""LMR forward: shapes, masks (padding never changes real outputs), and every ablation switch."""

import functools

import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from lmr_jax.data import dataset
from lmr_jax.errors import ConfigError
from lmr_jax.model import layers, ops
from lmr_jax.model.lmr import LMR


@pytest.fixture(scope="module")
def setup(tiny_data_root):
  config = tiny_config(tiny_data_root)
  source = dataset.example_source(config.data, "val", with_captions=True, training=False)
  batch = {k: np.stack([source.example(i)[k] for i in range(4)]) for k in source.example(0)}
  return config, batch


def _applier(model_config, train=False, seed=0):
  """jit(batch, dropout key -> (params, outputs)): initialises and applies the model in one call (eager
  Flax is slow on CPU). The dropout key is an argument, also in evaluation, so that calls differing only
  in it or in the jit wrapper share one compilation (the session's persistent compilation cache)."""
  model = LMR(model_config)

  def init_and_apply(batch, dropout_key):
    variables = model.init(jax.random.key(seed), batch, train=False)
    outputs = model.apply(variables, batch, train=train, rngs={"dropout": dropout_key})
    return variables["params"], outputs

  return jax.jit(init_and_apply)


def _apply(model_config, batch, train=False, seed=0, dropout_seed=1):
  return _applier(model_config, train, seed)(batch, jax.random.key(dropout_seed))


@pytest.mark.slow
def test_output_shapes(setup):
  config, batch = setup
  _, out = _apply(config.model, batch, train=True)
  b, k, layers = 4, config.model.num_queries, config.model.num_decoder_layers
  assert out["pred_spans"].shape == (layers, b, k, 2)
  assert out["pred_logits"].shape == (layers, b, k, 2)
  assert out["saliency"].shape == out["saliency_neg"].shape == (b, config.data.max_clips)
  assert ((out["pred_spans"] >= 0) & (out["pred_spans"] <= 1)).all()
  # No other query in a batch of one: the output's structure says it, so tracing is enough.
  _, single = jax.eval_shape(
      _applier(config.model, train=True), {k: v[:1] for k, v in batch.items()}, jax.random.key(1)
  )
  assert "saliency_neg" not in single and single["saliency"].shape == (1, config.data.max_clips)


def _pad_to(x, axis, length):
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return np.pad(x, widths)


@pytest.mark.slow
def test_padding_does_not_change_real_outputs(setup):
  config, batch = setup
  padded = dict(batch)
  for key in ("video_feats", "video_mask", "caption_feats", "saliency"):
    padded[key] = _pad_to(batch[key], 1, batch[key].shape[1] + 9)
  for key in ("query_feats", "query_mask", "caption_query_feats", "caption_query_mask"):
    padded[key] = _pad_to(batch[key], 1, batch[key].shape[1] + 5)
  params, out = _apply(config.model, batch)
  out_padded = jax.jit(lambda p, b: LMR(config.model).apply({"params": p}, b, train=False))(
      params, padded
  )
  np.testing.assert_allclose(out["pred_spans"], out_padded["pred_spans"], atol=2e-5)
  np.testing.assert_allclose(out["pred_logits"], out_padded["pred_logits"], atol=2e-5)
  mask = batch["video_mask"]
  num_clips = mask.shape[1]
  np.testing.assert_allclose(
      np.where(mask, out["saliency"], 0),
      np.where(mask, out_padded["saliency"][:, :num_clips], 0),
      atol=2e-5,
  )


@pytest.mark.slow
def test_masked_clips_are_ignored(setup):
  """Changing the features of padded clips or padded query tokens changes nothing."""
  config, batch = setup
  noisy = dict(batch)
  rng = np.random.default_rng(0)
  for key, mask_key in (
      ("video_feats", "video_mask"),
      ("caption_feats", "video_mask"),
      ("query_feats", "query_mask"),
      ("caption_query_feats", "caption_query_mask"),
  ):
    noise = rng.normal(size=batch[key].shape).astype(np.float32)
    noisy[key] = np.where(batch[mask_key][..., None], batch[key], noise)
  params, out = _apply(config.model, batch)
  out_noisy = jax.jit(lambda p, b: LMR(config.model).apply({"params": p}, b, train=False))(
      params, noisy
  )
  np.testing.assert_allclose(out["pred_spans"], out_noisy["pred_spans"], atol=2e-5)


ABLATIONS = {
    "use_caption_context": ("caption_proj", False),  # (param that appears/disappears, present?)
    "use_visual": ("video_proj", False),
    "language_queries": (None, None),  # w/o LMQ: zero content, no parameter comes or goes
    "share_vqf": ("caption_vqf", True),
    "use_vqf": ("visual_vqf", False),
}


@pytest.mark.slow
@pytest.mark.parametrize("switch", sorted(ABLATIONS))
def test_each_ablation_switch_changes_the_computation(setup, switch):
  config, batch = setup
  full_params, full = _apply(config.model, batch)
  ablated_cfg = config.model.copy_and_resolve_references()
  ablated_cfg[switch] = False
  params, out = _apply(ablated_cfg, batch)
  name, present = ABLATIONS[switch]
  if name is not None:
    assert (name in params) == present and (name in full_params) != present
  assert not np.allclose(full["pred_spans"], out["pred_spans"], atol=1e-4)


def test_no_captions_model_needs_no_caption_inputs(setup):
  config, batch = setup
  cfg = config.model.copy_and_resolve_references()
  cfg.use_caption_context = False
  without = {k: v for k, v in batch.items() if not k.startswith("caption")}
  _, out = _apply(cfg, without)
  assert out["pred_spans"].shape[2] == config.model.num_queries


@pytest.mark.slow
def test_shared_vqf_has_one_set_of_weights(setup):
  config, batch = setup
  shared, _ = _apply(config.model, batch)
  cfg = config.model.copy_and_resolve_references()
  cfg.share_vqf = False
  separate, _ = _apply(cfg, batch)
  count = lambda p: sum(x.size for x in jax.tree.leaves(p))  # noqa: E731
  assert count(separate) - count(shared) == count(separate["caption_vqf"])


@pytest.mark.slow
def test_num_queries_sets_the_number_of_moments(setup):
  config, batch = setup
  cfg = config.model.copy_and_resolve_references()
  cfg.num_queries = 3
  _, out = _apply(cfg, batch)
  assert out["pred_spans"].shape[2] == 3


@pytest.mark.slow
def test_dropout_only_in_training(setup):
  """Evaluation ignores the dropout key (another key gives the same outputs); training draws its masks
  from it (same key: same outputs, other key: other outputs, unlike evaluation's). In a run of the
  file, both compilations are other tests' (the session's persistent compilation cache)."""
  config, batch = setup
  assert config.model.input_dropout > 0  # the tiny config's only dropout
  evaluate, train = _applier(config.model, train=False), _applier(config.model, train=True)
  key_a, key_b = jax.random.key(1), jax.random.key(2)
  _, eval_a = evaluate(batch, key_a)
  _, eval_b = evaluate(batch, key_b)
  _, train_a = train(batch, key_a)
  _, train_a_again = train(batch, key_a)
  _, train_b = train(batch, key_b)
  for name in ("pred_spans", "pred_logits", "saliency"):
    np.testing.assert_array_equal(eval_a[name], eval_b[name], err_msg=name)
    np.testing.assert_array_equal(train_a[name], train_a_again[name], err_msg=name)
    assert not np.allclose(train_a[name], train_b[name], atol=1e-3), name
    assert not np.allclose(train_a[name], eval_a[name], atol=1e-3), name


@pytest.mark.slow
@pytest.mark.parametrize(
    "batch, q_len, k_len, dropout_rate, chunks",
    [
        (32, 151, 151, 0.1, 8),  # encoder self-attention: saliency token + 75 clips + 75 captions
        (64, 75, 32, 0.0, 2),  # VQF (T2V): 75 clips attend 32 query tokens, an evaluation batch
    ],
)
def test_attention_paths_agree_at_qvhighlights_shapes(
    monkeypatch, batch, q_len, k_len, dropout_rate, chunks
):
  """The CPU's chunked attention (a few batch rows at a time) and the GPU/TPU path (one batched
  einsum) give the same outputs and gradients (same dropout mask) at QVHighlights shapes (hidden 256
  = 8 heads x 32), and both equal flax's attention when nothing is random."""
  heads, head_dim = 8, 32
  rng = np.random.default_rng(0)
  qkv = [
      rng.normal(size=(batch, n, heads, head_dim)).astype(np.float32) for n in (q_len, k_len, k_len)
  ]
  lengths = rng.integers(k_len // 2, k_len + 1, batch)  # padded keys in most rows
  mask = ops.key_mask(np.arange(k_len)[None] < lengths[:, None], q_len)[:, None]  # (B, 1, Q, K)
  cotangent = rng.normal(size=qkv[0].shape).astype(np.float32)

  # The arrays are arguments, not constants closed over: XLA would constant-fold the whole attention
  # and its gradient at compile time (a minute per case on this CPU).
  def outputs_and_grads(implementation, qkv, mask, cotangent):
    attention = lambda q, k, v: ops.dot_product_attention(  # noqa: E731
        q,
        k,
        v,
        mask,
        dropout_rng=jax.random.key(3),
        dropout_rate=dropout_rate,
        implementation=implementation,
    )
    out, vjp = jax.vjp(attention, *qkv)
    return out, vjp(cotangent)

  real_num_chunks, chunk_counts = ops._num_chunks, []

  def counted(*args, **kwargs):
    chunk_counts.append(real_num_chunks(*args, **kwargs))
    return chunk_counts[-1]

  monkeypatch.setattr(ops, "_num_chunks", counted)
  chunked = jax.jit(functools.partial(outputs_and_grads, "chunked"))(qkv, mask, cotangent)
  assert chunk_counts == [chunks]  # (B, 8, Q, K) float32 logits of B / chunks rows fit in 3 MiB
  batched = jax.jit(functools.partial(outputs_and_grads, "einsum"))(qkv, mask, cotangent)
  assert len(chunk_counts) == 1  # the einsum path does not chunk
  for got, want in zip(jax.tree.leaves(chunked), jax.tree.leaves(batched)):  # out, dq, dk, dv
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)  # values of ~1: float32 round-off
  if dropout_rate == 0.0:  # nothing random: flax's own attention too
    want = nn.dot_product_attention(*qkv, mask=mask)
    np.testing.assert_allclose(chunked[0], want, rtol=1e-6, atol=1e-6)


def test_attention_implementation_follows_the_backend():
  assert ops.resolve_attention("auto", "cpu") == "chunked"
  assert ops.resolve_attention("auto", "cuda") == "einsum"
  assert ops.resolve_attention("auto", "tpu") == "einsum"
  assert ops.resolve_attention("chunked", "tpu") == "chunked"
  assert ops.resolve_attention("auto") == "chunked"  # this machine: the CPU
  with pytest.raises(ConfigError, match="config.model.attention 'flash' is not one of"):
    ops.resolve_attention("flash")


@pytest.mark.parametrize("rate", [0.5, 0.25, 0.1, 0.0])
def test_keep_mask_draws_the_configured_rate(rate):
  keep, keep_prob = ops.keep_mask(jax.random.key(0), rate, (600, 257))
  assert keep.shape == (600, 257) and keep.dtype == jnp.bool_
  assert keep_prob == pytest.approx(1.0 - rate, abs=2**-32)
  assert float(keep.mean()) == pytest.approx(keep_prob, abs=0.005)  # 154k draws: ~6 sigma
  other, _ = ops.keep_mask(jax.random.key(1), rate, (600, 257))
  assert rate == 0.0 or not np.array_equal(keep, other)


def test_keep_mask_elements_and_seeds_are_independent():
  """The counter-based mask: neighbouring elements along each axis, the same element under two keys
  and the mask's two halves show no correlation beyond sampling noise (1e6 draws: sigma 0.001)."""
  keep = np.asarray(ops.keep_mask(jax.random.key(0), 0.1, (1000, 1000))[0], np.float64)
  other = np.asarray(ops.keep_mask(jax.random.key(1), 0.1, (1000, 1000))[0], np.float64)
  pairs = {
      "along a row": (keep[:, :-1], keep[:, 1:]),
      "along a column": (keep[:-1], keep[1:]),
      "two keys": (keep, other),
      "two halves": (keep[:500], keep[500:]),
  }
  for name, (a, b) in pairs.items():
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.006, name
  # Every 32-bit slice of the counter space gets the rate, not just the whole mask.
  np.testing.assert_allclose(keep.reshape(100, -1).mean(1), 0.9, atol=0.02)


def test_input_norm_without_affine_is_normalised_and_dropped():
  """``input_norm_affine=False``: no scale/bias, so nothing below the Dense needs a gradient; dropout
  scales the kept features by 1 / keep_prob."""
  x = np.random.default_rng(0).normal(3.0, 2.0, (4, 7, 64)).astype(np.float32)
  norm = layers.InputNorm(0.5, affine=False)
  variables = norm.init(jax.random.key(0), x, train=False)
  assert not jax.tree.leaves(variables)
  y = np.asarray(norm.apply(variables, x, train=False))
  np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-5)
  np.testing.assert_allclose(y.std(-1), 1.0, atol=1e-3)
  dropped = np.asarray(norm.apply(variables, x, train=True, rngs={"dropout": jax.random.key(1)}))
  kept = dropped != 0
  assert 0.4 < kept.mean() < 0.6
  np.testing.assert_allclose(dropped[kept], 2.0 * y[kept], rtol=1e-5)


@pytest.mark.slow
def test_affine_input_norm_folds_into_the_dense():
  """In evaluation the QD-DETR input LayerNorm's scale and bias fold exactly into the next Dense:
  W (g x + b) + c = (W diag g) x + (W b + c), docs/fidelity.md's claim for ``input_norm_affine=False``.
  """
  rng = np.random.default_rng(1)
  x = rng.normal(1.0, 3.0, (2, 5, 12)).astype(np.float32)
  affine = layers.InputProjection(8, 0.5, affine_first_norm=True)
  params = affine.init(jax.random.key(0), x, train=False)["params"]
  params = jax.tree.map(lambda p: p + rng.normal(0, 0.5, p.shape).astype(np.float32), params)
  scale, bias = params["norm_0"]["LayerNorm"]["scale"], params["norm_0"]["LayerNorm"]["bias"]
  folded = {k: v for k, v in params.items() if k != "norm_0"}
  kernel = params["dense_0"]["kernel"]
  folded["dense_0"] = {
      "kernel": scale[:, None] * kernel,
      "bias": params["dense_0"]["bias"] + bias @ kernel,
  }
  plain = layers.InputProjection(8, 0.5, affine_first_norm=False)
  want = affine.apply({"params": params}, x, train=False)
  got = plain.apply({"params": folded}, x, train=False)
  np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.slow
def test_outputs_do_not_depend_on_batch_mates_unless_qd_detr_mask(setup):
  """A query's outputs are its own; QD-DETR's T2V mask (a parity-only switch) mixes in the padding
  of the other queries of the batch."""
  config, batch = setup
  ragged = dict(batch)
  ragged["query_mask"] = batch["query_mask"].copy()
  ragged["query_mask"][1:, 2:] = False  # batch-mates with other padding than query 0
  ragged["video_mask"] = batch["video_mask"].copy()
  ragged["video_mask"][1:, 10:] = False
  first = {k: v[:1] for k, v in ragged.items()}
  for quirk, same in ((False, True), (True, False)):
    cfg = config.model.copy_and_resolve_references()
    cfg.qd_detr_t2v_mask = quirk
    params, out = _apply(cfg, ragged)
    alone = jax.jit(lambda p, b: LMR(cfg).apply({"params": p}, b, train=False))(params, first)
    close = np.allclose(out["saliency"][:1], alone["saliency"], atol=1e-5)
    assert close == same, (quirk, np.abs(out["saliency"][:1] - alone["saliency"]).max())


@pytest.mark.slow
def test_saliency_of_video_tokens_or_summed_tokens(setup):
  """Eq. 5 scores the video tokens of F_m; the "sum" variant also reads each clip's caption token."""
  config, batch = setup
  params, video = _apply(config.model, batch)
  cfg = config.model.copy_and_resolve_references()
  cfg.saliency_tokens = "sum"
  summed = jax.jit(lambda p, b: LMR(cfg).apply({"params": p}, b, train=False))(params, batch)
  np.testing.assert_allclose(video["pred_spans"], summed["pred_spans"], atol=1e-6)
  assert not np.allclose(video["saliency"], summed["saliency"], atol=1e-4)


def _dot_operand_dtypes(jaxpr) -> set:
  """The operand dtypes of every dot_general in a jaxpr, sub-jaxprs included."""
  dtypes = set()
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      dtypes.update(str(v.aval.dtype) for v in eqn.invars)
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      dtypes |= _dot_operand_dtypes(sub)
  return dtypes


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32(setup):
  """``model.dtype="bfloat16"``: the same float32 parameters, every matmul in bf16, float32 outputs
  within bf16's rounding of the float32 model's (measured max |diff|: spans 0.004, logits 0.02,
  saliency 0.05 on outputs of magnitude ~2; tolerances about twice that)."""
  config, batch = setup
  params, want = _apply(config.model, batch)
  cfg = config.model.copy_and_resolve_references()
  cfg.dtype = "bfloat16"
  model = LMR(cfg)
  got = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))(params, batch)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  for name, atol in {"pred_spans": 0.01, "pred_logits": 0.05, "saliency": 0.1}.items():
    assert got[name].dtype == jnp.float32, name
    np.testing.assert_allclose(got[name], want[name], atol=atol, rtol=0, err_msg=name)
  in_training = jax.make_jaxpr(
      lambda p: model.apply({"params": p}, batch, train=True, rngs={"dropout": jax.random.key(1)})
  )(params)
  assert _dot_operand_dtypes(in_training.jaxpr) == {"bfloat16"}
  with pytest.raises(ConfigError, match="config.model.dtype 'float16' is not one of"):
    cfg.dtype = "float16"
    jax.eval_shape(lambda: LMR(cfg).init(jax.random.key(0), batch, train=False))


@pytest.mark.slow
def test_decoder_memory_video_reads_only_the_video_tokens(setup):
  """``decoder_memory="video"`` (Sec. III-C): the decoder's keys are the L video tokens of F_m,
  where "video_and_captions" reads all 2L context tokens; the saliency (the encoder's output) is the
  same, the moments are not; with the visual stream off it reads the caption tokens, the only
  stream."""
  config, batch = setup
  params, _ = _apply(config.model, batch)

  def outputs_and_keys(memory):
    cfg = config.model.copy_and_resolve_references()
    cfg.decoder_memory = memory
    outputs, state = jax.jit(
        lambda p, b: LMR(cfg).apply({"params": p}, b, train=False, mutable=["intermediates"])
    )(params, batch)
    cross = state["intermediates"]["decoder"]["layers_0"]["cross_attn"]["attention_weights"][0]
    return outputs, cross.shape[-1]  # (B, heads, K, keys)

  both, both_keys = outputs_and_keys("video_and_captions")
  video, video_keys = outputs_and_keys("video")
  assert (video_keys, both_keys) == (config.data.max_clips, 2 * config.data.max_clips)
  np.testing.assert_allclose(both["saliency"], video["saliency"], atol=1e-6)
  assert not np.allclose(both["pred_spans"], video["pred_spans"], atol=1e-4)
  cfg = config.model.copy_and_resolve_references()
  cfg.decoder_memory = "video"
  cfg.use_visual = False
  _, captions_only = _apply(cfg, batch)
  assert np.isfinite(captions_only["pred_spans"]).all()


@pytest.mark.slow
def test_clip_positions_normalised_or_raw_index(setup):
  """QD-DETR's code turns its fastest frequency once over the video; DETR's raw index
  (``clip_positions="index"``) tells neighbouring clips apart. Both count real clips only."""
  mask = np.array([[True] * 6 + [False] * 2, [True] * 8])
  normalized = np.asarray(ops.masked_sine_positions(mask, 16))
  index = np.asarray(ops.masked_sine_positions(mask, 16, normalize=False))
  clip = np.arange(1, 9, dtype=np.float32)
  np.testing.assert_allclose(index[1, :, 0], np.sin(clip), atol=1e-6)
  np.testing.assert_allclose(index[1, :, 1], np.cos(clip), atol=1e-6)
  np.testing.assert_allclose(normalized[0, :6, 0], np.sin(clip[:6] / 6 * 2 * np.pi), atol=1e-5)
  np.testing.assert_allclose(index[0, :6], index[1, :6], atol=1e-6)  # padding does not move them
  # Five clips apart in a 75-clip video at the model's width: 0.995 against 0.74.
  long_video = np.ones((1, 75), bool)
  for normalize, low, high in ((True, 0.99, 1.0), (False, 0.0, 0.8)):
    p = np.asarray(ops.masked_sine_positions(long_video, 256, normalize=normalize))[0]
    cosine = p[30] @ p[35] / np.linalg.norm(p[30]) / np.linalg.norm(p[35])
    assert low < cosine < high, (normalize, cosine)
  config, batch = setup
  params, out = _apply(config.model, batch)
  cfg = config.model.copy_and_resolve_references()
  cfg.clip_positions = "index"
  indexed = jax.jit(lambda p, b: LMR(cfg).apply({"params": p}, b, train=False))(params, batch)
  assert not np.allclose(out["saliency"], indexed["saliency"], atol=1e-4)
