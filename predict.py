r"""Predicts moments and clip saliency of queries in one video with a trained LMR workdir.

  python predict.py --workdir=workdir/qvh_clip --video=my.mp4 --query="a man cooks in a kitchen" \
      --clip=openai/clip-vit-base-patch32 --llama=meta-llama/Llama-2-7b-hf \
      --captioner=llava-hf/LLaVA-NeXT-Video-7B-hf
  python predict.py --workdir=workdir/qvh --features=data/qvhighlights/features --vid=VID \
      --query="a man cooks in a kitchen" --clip=openai/clip-vit-base-patch32 \
      --llama=meta-llama/Llama-2-7b-hf
  python predict.py --workdir=workdir/qvh --features=data/qvhighlights/features --vid=VID --qid=2579

The model and its config come from --workdir (its config.json). A raw --video goes through preprocess/
first (torch side; a model that reads SlowFast features needs --slowfast, the SlowFast R50 8x8 checkpoint); --features reads precomputed files. Queries are free text
(--query, repeatable, or --queries_file, one per line; encoded with --clip and --llama) or annotated
queries whose token files are in --features (--qid). The video's features are computed once for all
queries. Prints one JSON object per query, or writes them as JSON Lines to --output. Videos longer than
the model's max_clips are predicted in sliding windows (docs/predict.md). Errors are one line on stderr,
exit status 1.
"""

import json
import os
import sys
import tempfile

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts

cli.quiet_native_logs()  # before TensorFlow and JAX are imported

from absl import flags, logging  # noqa: E402

from lmr_jax import fileio  # noqa: E402
from lmr_jax.inference import encoder_flags  # noqa: E402
from lmr_jax.inference import predictor as predictor_lib  # noqa: E402
from lmr_jax.training import checkpoint  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (config.json and checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_VIDEO = flags.DEFINE_string("video", None, "A raw video file (mp4, mkv, webm, ...).")
_FEATURES = flags.DEFINE_string(
    "features", None, "A feature root (docs/data_layout.md) holding --vid's files."
)
_VID = flags.DEFINE_string(
    "vid", None, "The video id under --features (default with --video: its name)."
)
_DURATION = flags.DEFINE_float(
    "duration",
    None,
    "With --features: the video's duration in seconds (default: its clips' length).",
)
_QUERY = flags.DEFINE_multi_string("query", [], "A query sentence; repeat for several.")
_QUERIES_FILE = flags.DEFINE_string("queries_file", None, "A text file with one query per line.")
_QID = flags.DEFINE_multi_integer(
    "qid", [], "With --features: an annotated query whose token files are there; repeatable."
)
_TOP_K = flags.DEFINE_integer("top_k", 10, "Moments per query, best first.")
_WINDOW_STRIDE = flags.DEFINE_integer(
    "window_stride", None, "Long videos: clips between window starts (default max_clips // 2)."
)
_NMS_IOU = flags.DEFINE_float(
    "nms_iou", 0.5, "Long videos: IoU at which a moment of another window is a duplicate."
)
_OUTPUT = flags.DEFINE_string("output", None, "Write JSON Lines here instead of printing.")
_SAVE_FEATURES = flags.DEFINE_string(
    "save_features",
    None,
    "With --video: keep its feature files under this root (files already there are reused); "
    "default: a temporary directory.",
)
_ENCODERS = encoder_flags.define()
flags.mark_flags_as_required(["workdir"])


def _query_texts() -> list[str]:
  texts = list(_QUERY.value)
  if _QUERIES_FILE.value:
    try:
      with open(_QUERIES_FILE.value, encoding="utf-8") as f:
        texts += [line.strip() for line in f if line.strip()]
    except OSError as e:
      raise predictor_lib.PredictError(f"--queries_file: {e}") from None
  if any(not text.strip() for text in texts):
    raise predictor_lib.PredictError("--query: empty query")
  return texts


def _check_inputs(texts: list[str]) -> None:
  """Flag combinations and paths, before anything is loaded."""
  video, features = _VIDEO.value, _FEATURES.value
  if bool(video) == bool(features):
    raise predictor_lib.PredictError("pass either --video or --features")
  if video and not os.path.isfile(video):
    raise predictor_lib.PredictError(f"{video}: no such video file")
  if features and not os.path.isdir(features):
    raise predictor_lib.PredictError(f"{features}: no such feature directory")
  if features and not _VID.value:
    raise predictor_lib.PredictError("--features needs --vid, the video id of its files")
  if video and (_QID.value or _DURATION.value is not None):
    raise predictor_lib.PredictError("--qid and --duration go with --features")
  if not texts and not _QID.value:
    raise predictor_lib.PredictError("no query: pass --query, --queries_file or --qid")
  if _DURATION.value is not None and not _DURATION.value > 0:
    raise predictor_lib.PredictError(f"--duration must be > 0 seconds, got {_DURATION.value}")
  if _OUTPUT.value:
    inputs = [video, _QUERIES_FILE.value, os.path.join(_WORKDIR.value, checkpoint.CONFIG_FILE)]
    fileio.check_output_file(_OUTPUT.value, inputs, "--output")


def records_from_flags() -> list[dict]:
  """The flags checked, the inputs loaded and the records of every query, best moments first."""
  texts = _query_texts()
  _check_inputs(texts)
  config = predictor_lib.load_workdir_config(_WORKDIR.value)
  predictor_lib.check_options(config, _TOP_K.value, _WINDOW_STRIDE.value, _NMS_IOU.value)
  video = _VIDEO.value
  if video:
    predictor_lib.check_raw_video_config(config)
  encoders = None
  if video or texts:
    encoders = _ENCODERS.encoders(config)
    encoders.require(video=bool(video), text=bool(texts))
  features = _FEATURES.value
  if features:  # cheap to read, so a missing file fails before the checkpoint is restored
    inputs = predictor_lib.load_video_inputs(config, features, _VID.value, _DURATION.value)
  queries = [predictor_lib.load_query_inputs(config, features, qid) for qid in _QID.value]
  predictor = predictor_lib.Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value, config)
  queries = [encoders.query(text) for text in texts] + queries
  if video:
    vid = _VID.value or os.path.splitext(os.path.basename(video))[0]
    with tempfile.TemporaryDirectory(prefix="lmr_predict_") as scratch:
      feat_root = _SAVE_FEATURES.value or scratch
      duration = encoders.write_video_features(video, feat_root, vid)
      inputs = predictor_lib.load_video_inputs(config, feat_root, vid, duration)
  records = predictor.predict(
      inputs, queries, _TOP_K.value, _WINDOW_STRIDE.value, nms_iou=_NMS_IOU.value
  )
  if video:
    records = [{**record, "video": video} for record in records]
  return records


def main():
  checkpoint.quiet_orbax_logs()
  records = records_from_flags()
  lines = "".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
  if _OUTPUT.value:
    fileio.atomic_write_text(_OUTPUT.value, lines)
    logging.info("wrote %d predictions to %s", len(records), _OUTPUT.value)
  else:
    sys.stdout.write(lines)


if __name__ == "__main__":
  raise SystemExit(cli.run_absl(main, __doc__))
