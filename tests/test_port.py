"""The QD-DETR weight port: our model and losses reproduce QD-DETR's own outputs (fixtures made by its
code, tests/fixtures/qddetr_parity/ATTRIBUTION.md), and a converted QD-DETR training checkpoint runs
through eval and predict."""

import argparse
import os

import numpy as np
import pytest
import torch

from conftest import FIXTURES, restore_checkpoint, tiny_config
from lmr_jax.commands import evaluate as evaluate_lib
from lmr_jax.inference import predictor as predictor_lib
from lmr_jax.port import qd_detr
from lmr_jax.training import checkpoint as checkpoint_lib

pytestmark = pytest.mark.slow  # runs QD-DETR-sized models and converts checkpoints

PARITY = os.path.join(FIXTURES, "qddetr_parity")


@pytest.mark.parametrize("name", ["qddetr_parity_seed0.npz", "qddetr_parity_k1_seed2.npz"])
def test_outputs_and_losses_equal_qd_detr(name, tmp_path, capsys):
  fixture = os.path.join(PARITY, name)
  out = str(tmp_path / "ours.npz")
  assert qd_detr.main([fixture, "--outputs", out]) == 0, capsys.readouterr().err
  ours, ref = np.load(out), np.load(fixture)
  outputs = [k for k in ref.files if k.startswith("output/")]
  losses = [k for k in ref.files if k.startswith("loss/")]
  assert len(outputs) == 4 and set(losses) == {k for k in ours.files if k.startswith("loss/")}
  for key in outputs:
    assert ours[key].shape == ref[key].shape, key
    np.testing.assert_allclose(ours[key], ref[key], rtol=0, atol=1e-4, err_msg=key)
  for key in losses:
    np.testing.assert_allclose(ours[key], ref[key], rtol=1e-4, atol=0, err_msg=key)


def test_the_batch_mixing_mask_is_what_makes_parity_exact():
  """Without QD-DETR's tiled T2V mask (our default) the outputs of queries whose batch-mates are
  padded differently move by more than the tolerance: the parity test is sensitive to it."""
  fixture = np.load(os.path.join(PARITY, "qddetr_parity_seed0.npz"))
  state_dict = {k.split("/", 1)[1]: fixture[k] for k in fixture.files if k.startswith("param/")}
  params = qd_detr.convert_state_dict(state_dict)
  assert "saliency_token" in params and not any("txt_position" in k for k in params)
  ours = qd_detr.run_fixture(
      os.path.join(PARITY, "qddetr_parity_seed0.npz"), qd_detr_t2v_mask=False
  )
  error = np.abs(ours["output/saliency_scores"] - fixture["output/saliency_scores"]).max()
  assert error > 1e-4


def _padded(batch, extra: int):
  """``batch`` with ``extra`` padding rows (copies of row 0, masked out), as our last eval batch."""
  padded = {k: np.concatenate([v] + [v[:1]] * extra) for k, v in batch.items()}
  padded["example_mask"] = np.arange(len(padded["example_mask"])) < len(batch["example_mask"])
  return padded


def test_eval_protocol_qd_detr_gives_qd_detrs_outputs_on_a_padded_batch():
  """eval_protocol="qd_detr" (the port's) mixes the T2V masks of the real rows only: padded past
  them, as our last eval batch is, the batch still gives each query what QD-DETR computed for it in
  a batch of just those queries (QD-DETR's last batch); mixing over the padded rows would not."""
  import jax

  from lmr_jax.training import state as state_lib

  path = os.path.join(PARITY, "qddetr_parity_seed0.npz")
  fixture = np.load(path)
  config, params, batch = qd_detr.fixture_model(path, qd_detr_t2v_mask=False)
  with config.unlocked():
    config.eval_protocol = "qd_detr"
  model = state_lib.build_model(config)
  apply = jax.jit(lambda p, b: model.apply({"params": p}, b, train=False))
  num_real = len(batch["example_mask"])
  ours = jax.device_get(apply(params, _padded(batch, 2)))
  for key, theirs in (("saliency", "saliency_scores"), ("pred_spans", "pred_spans")):
    np.testing.assert_allclose(
        ours[key][:, :num_real] if key == "pred_spans" else ours[key][:num_real],
        fixture[f"output/{theirs}"],
        rtol=0,
        atol=1e-4,
        err_msg=key,
    )
  every_row = _padded(batch, 2)
  every_row["example_mask"][:] = True  # the padding rows join the mixing
  mixed = jax.device_get(apply(params, every_row))
  error = np.abs(mixed["saliency"][:num_real] - fixture["output/saliency_scores"]).max()
  assert error > 1e-4


def test_the_port_writes_qd_detrs_evaluation_protocol(tmp_path):
  path = str(tmp_path / "model_best.ckpt")
  _qd_detr_checkpoint(path, 34, 24, eval_bsz=50)
  config = qd_detr.port_checkpoint(path, str(tmp_path / "port"), visual_dims=(16, 16))
  saved = checkpoint_lib.load_config(str(tmp_path / "port"))
  assert config.eval_protocol == saved.eval_protocol == "qd_detr"
  assert saved.eval_batch_size == 50
  assert not saved.model.qd_detr_t2v_mask  # training from the port keeps per-row masks


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
  assert qd_detr.main([str(tmp_path / "missing.npz"), "--outputs", str(tmp_path / "o.npz")]) == 1
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "missing.npz: no such file" in err
  not_fixture = tmp_path / "other.npz"
  np.savez(not_fixture, x=np.zeros(3))
  assert qd_detr.main([str(not_fixture), "--outputs", str(tmp_path / "o.npz")]) == 1
  assert "not a QD-DETR parity fixture" in capsys.readouterr().err
  with pytest.raises(qd_detr.PortError, match="contrastive_align_projection_query.weight"):
    qd_detr.convert_state_dict({"contrastive_align_projection_query.weight": np.zeros((2, 2))})
  assert not (tmp_path / "o.npz").exists()


def _qd_detr_checkpoint(path, v_dim, t_dim, **opt):
  """A QD-DETR training checkpoint as its train.py saves it: the fixture's weights with the input
  projections resized to (v_dim, t_dim), plus the unused text-position parameters."""
  fixture = np.load(os.path.join(PARITY, "qddetr_parity_seed0.npz"))
  rng = np.random.default_rng(0)
  state = {
      k.split("/", 1)[1]: fixture[k].astype(np.float32)
      for k in fixture.files
      if k.startswith("param/")
  }
  for prefix, width in (("input_vid_proj.0", v_dim), ("input_txt_proj.0", t_dim)):
    state[f"{prefix}.LayerNorm.weight"] = rng.normal(1, 0.1, width).astype(np.float32)
    state[f"{prefix}.LayerNorm.bias"] = rng.normal(0, 0.1, width).astype(np.float32)
    state[f"{prefix}.net.1.weight"] = rng.normal(0, width**-0.5, (256, width)).astype(np.float32)
  options = dict(
      hidden_dim=256,
      nheads=8,
      dim_feedforward=256,
      enc_layers=2,
      dec_layers=2,
      num_queries=5,
      v_feat_dim=v_dim,
      t_feat_dim=t_dim,
      dropout=0.1,
      input_dropout=0.5,
      max_q_l=32,
      max_v_l=75,
      clip_length=2,
      use_tef=True,
      n_input_proj=2,
      use_txt_pos=False,
      span_loss_type="l1",
      contrastive_align_loss=False,
      a_feat_dir=None,
      pre_norm=False,
      lr=1e-4,
      wd=1e-4,
      bsz=32,
      v_feat_dirs=["features/slowfast_features", "features/clip_features"],
  )
  options.update(opt)
  model = {k: torch.from_numpy(v) for k, v in state.items()}
  model["txt_position_embed.position_embeddings.weight"] = torch.zeros(options["max_q_l"], 256)
  # As QD-DETR's train.py saves it: with the optimizer's and scheduler's states and opt.device.
  params = [torch.nn.Parameter(torch.zeros(2, 2))]
  optimizer = torch.optim.AdamW(params, lr=1e-4)
  params[0].grad = torch.ones(2, 2)
  optimizer.step()
  scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 400)
  opt = argparse.Namespace(**options, device=torch.device("cpu"))
  checkpoint = {
      "model": model,
      "optimizer": optimizer.state_dict(),
      "lr_scheduler": scheduler.state_dict(),
      "epoch": 7,
      "opt": opt,
  }
  torch.save(checkpoint, path)
  return state


def test_converted_checkpoint_runs_through_eval_and_predict(tiny_data_root, tmp_path, capsys):
  tiny = tiny_config(tiny_data_root)
  v_dim, t_dim = sum(tiny.data.visual_dims) + 2, tiny.data.query_dim
  ckpt, workdir = str(tmp_path / "model_best.ckpt"), str(tmp_path / "ported")
  options = dict(max_q_l=tiny.data.max_query_tokens, max_v_l=tiny.data.max_clips)
  state = _qd_detr_checkpoint(ckpt, v_dim, t_dim, **options)
  dims = ",".join(map(str, tiny.data.visual_dims))
  assert qd_detr.main(["--checkpoint", ckpt, "--workdir", workdir, "--visual_dims", dims]) == 0
  assert "wrote" in capsys.readouterr().out

  config = checkpoint_lib.load_config(workdir).unlock()
  assert (config.model.use_caption_context, config.model.language_queries) == (False, False)
  assert config.data.visual_streams == ("slowfast_features", "clip_features")
  config.data.feat_root = tiny.data.feat_root
  config.data.annotation_files = tiny.data.annotation_files
  config.data.caption_dim = tiny.data.caption_dim  # restore_checkpoint reads the captions too
  config.num_devices = 1
  restored, _ = restore_checkpoint(config, workdir, "best")
  flat = qd_detr.convert_state_dict(state)
  from flax import traverse_util  # noqa: PLC0415

  for name, value in traverse_util.flatten_dict(restored.params, sep="/").items():
    np.testing.assert_array_equal(np.asarray(value), flat[name], err_msg=name)

  # eval.py takes the run's config but for paths and placement (the model reads no captions).
  config.data.caption_dim = checkpoint_lib.load_config(workdir).data.caption_dim
  result = evaluate_lib.evaluate_checkpoint(
      config, workdir, split="val", output_dir=str(tmp_path / "e")
  )
  assert result["metrics"] is not None and result["num_queries"] > 0

  predictor = predictor_lib.Predictor.from_workdir(workdir)
  vid_record = next(iter(open(config.data.annotation_files["val"])))
  import json  # noqa: PLC0415

  ann = json.loads(vid_record)
  video = predictor_lib.load_video_inputs(
      config, config.data.feat_root, ann["vid"], ann["duration"]
  )
  query = predictor_lib.load_query_inputs(config, config.data.feat_root, ann["qid"])
  (record,) = predictor.predict(video, [query], top_k=3)
  assert len(record["pred_relevant_windows"]) == 3

  # A second port into the same workdir would overwrite the run: refused, nothing changed.
  before = os.path.getmtime(os.path.join(workdir, "config.json"))
  assert qd_detr.main(["--checkpoint", ckpt, "--workdir", workdir, "--visual_dims", dims]) == 1
  assert "already holds a run" in capsys.readouterr().err
  assert os.path.getmtime(os.path.join(workdir, "config.json")) == before


def test_checkpoint_options_that_change_the_architecture_are_refused(tmp_path, capsys):
  ckpt = str(tmp_path / "txtpos.ckpt")
  _qd_detr_checkpoint(ckpt, 34, 24, use_txt_pos=True, v_feat_dirs=["a/x"])
  assert (
      qd_detr.main(["--checkpoint", ckpt, "--workdir", str(tmp_path / "w"), "--visual_dims", "32"])
      == 1
  )
  assert "use_txt_pos=True is not supported" in capsys.readouterr().err
  ckpt = str(tmp_path / "dims.ckpt")
  _qd_detr_checkpoint(ckpt, 34, 24)
  assert qd_detr.main(["--checkpoint", ckpt, "--workdir", str(tmp_path / "w")]) == 1
  assert "do not make its v_feat_dim 34" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "w")


class _RunsCode:
  """What a hostile checkpoint could hold: unpickling it would run a command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_is_read_without_running_what_it_holds(tmp_path, capsys):
  """Loaded with torch's weights_only unpickler and argparse.Namespace allowed: a file holding any
  other object is refused in one line, and nothing in it runs."""
  ckpt = str(tmp_path / "hostile.ckpt")
  marker = tmp_path / "ran"
  torch.save({"model": {}, "opt": argparse.Namespace(lr=1e-4), "extra": _RunsCode(marker)}, ckpt)
  assert qd_detr.main(["--checkpoint", ckpt, "--workdir", str(tmp_path / "w")]) == 1
  err = capsys.readouterr().err.strip()
  assert (
      err.startswith(f"error: {ckpt}: refused: it holds objects other than tensors")
      and "\n" not in err
  )
  assert not marker.exists() and not os.path.exists(tmp_path / "w")
