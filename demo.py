r"""A web page that finds the moments of free-text queries in a video, with a trained LMR workdir.

  python demo.py --workdir=workdir/qvh_clip --clip=openai/clip-vit-base-patch32 \
      --llama=meta-llama/Llama-2-7b-hf --captioner=llava-hf/LLaVA-NeXT-Video-7B-hf
  python demo.py --workdir=workdir/qvh --features=data/qvhighlights/features \
      --videos=data/qvhighlights/videos --clip=openai/clip-vit-base-patch32 \
      --llama=meta-llama/Llama-2-7b-hf

  python demo.py --workdir=workdir/synthetic --compare_workdir=workdir/synthetic_no_captions

A workdir trained on the synthetic benchmark needs no downloaded model: without --clip, --llama,
--captioner, --slowfast or --features, the page serves the benchmark's val and test videos (drawn as
their events: they have no frames), encodes queries with the generator's token tables, and shows the
true moments beside the predicted ones; with --compare_workdir (a model of the same data), both
models' moments for the same query.

Serves http://127.0.0.1:7860 (--host, --port). Upload a video (a model that reads SlowFast features
needs --slowfast too), or pick one of --features' videos, type queries, and get the top moments on a
timeline (a click plays the moment), the per-clip saliency curve, the clip captions the video LLM
wrote, and the predictions as predict.py's JSON Lines. The model and the frozen preprocessing models
load once, at start (as predict.py takes them: --clip, --llama, --captioner, --slowfast, local paths
or hub ids); a bad flag, workdir or model exits with one line, status 1. An upload's features are
kept in --cache_dir.
"""

import os
import tempfile

from lmr_jax import cli

if __name__ == "__main__":
  cli.exec_with_tcmalloc()  # first: the allocator is chosen when the process starts

cli.quiet_native_logs()  # before TensorFlow and JAX are imported

from absl import flags, logging  # noqa: E402

from lmr_jax import fileio  # noqa: E402
from lmr_jax.demo import access  # noqa: E402
from lmr_jax.demo import session as session_limits  # noqa: E402
from lmr_jax.inference import encoder_flags  # noqa: E402
from lmr_jax.inference import predictor as predictor_lib  # noqa: E402
from lmr_jax.training import checkpoint  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", None, "A train.py workdir (config.json and checkpoints).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "'best', 'latest' or a step number.")
_FEATURES = flags.DEFINE_string(
    "features", None, "A feature root (docs/data_layout.md) whose videos the page lists."
)
_VIDEOS = flags.DEFINE_string(
    "videos", None, "With --features: a folder of their raw files ({vid}.mp4, ...) for the player."
)
_COMPARE_WORKDIR = flags.DEFINE_string(
    "compare_workdir",
    None,
    "A second synthetic workdir of the same data (e.g. without captions): both models' moments.",
)
_TOP_K = flags.DEFINE_integer("top_k", 10, "Moments per query, best first.")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to serve on (0.0.0.0: every interface).")
_PORT = flags.DEFINE_integer("port", 7860, "Port to serve on.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "Where uploads' features and the predictions go (default: a temporary folder).",
)
_MAX_UPLOAD_MB = flags.DEFINE_float(
    "max_upload_mb", session_limits.MAX_UPLOAD_MB, "Largest upload accepted, in MB."
)
_MAX_VIDEO_MINUTES = flags.DEFINE_float(
    "max_video_minutes", session_limits.MAX_VIDEO_MINUTES, "Longest uploaded video accepted."
)
_MAX_QUEUE = flags.DEFINE_integer(
    "max_queue", access.MAX_QUEUE, "Requests that may wait for the model; more are told it is busy."
)
_AUTH_FILE = flags.DEFINE_string(
    "auth_file",
    None,
    "A file of user:password lines: the page asks for a login (for --host beyond this machine).",
)
_ENCODERS = encoder_flags.define()
flags.mark_flags_as_required(["workdir"])


def _check_flags() -> None:
  features, videos = _FEATURES.value, _VIDEOS.value
  if features and not os.path.isdir(features):
    raise predictor_lib.PredictError(f"{features}: no such feature directory (--features)")
  if videos and not features:
    raise predictor_lib.PredictError("--videos goes with --features")
  if videos and not os.path.isdir(videos):
    raise predictor_lib.PredictError(f"{videos}: no such folder (--videos)")
  if not 0 < _PORT.value < 65536:
    raise predictor_lib.PredictError(f"--port must be in [1, 65535], got {_PORT.value}")
  if _CACHE_DIR.value:  # made by the first write into it, so a refused start leaves nothing behind
    fileio.check_writable_folder(_CACHE_DIR.value, "--cache_dir")
  for flag, value in (
      ("--max_upload_mb", _MAX_UPLOAD_MB),
      ("--max_video_minutes", _MAX_VIDEO_MINUTES),
  ):
    if not value.value > 0:
      raise predictor_lib.PredictError(f"{flag} must be positive, got {value.value}")
  if _MAX_QUEUE.value < 1:
    raise predictor_lib.PredictError(f"--max_queue must be at least 1, got {_MAX_QUEUE.value}")


def _synthetic_session(config):
  """A synthetic workdir's session: its own data and token tables, no preprocessing model."""
  from lmr_jax.demo import synthetic as synthetic_lib

  compare = None
  if _COMPARE_WORKDIR.value:
    compare_config = predictor_lib.load_workdir_config(_COMPARE_WORKDIR.value)
    compare = predictor_lib.Predictor.from_workdir(
        _COMPARE_WORKDIR.value, _CHECKPOINT.value, compare_config
    )
  predictor = predictor_lib.Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value, config)
  cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix="lmr_demo_")
  return synthetic_lib.SyntheticDemoSession(
      predictor, cache_dir, compare=compare, top_k=_TOP_K.value
  )


def load_session():
  """The workdir's model and the preprocessing models, loaded and checked before the page exists."""
  from lmr_jax.demo import session as session_lib
  from lmr_jax.demo import synthetic as synthetic_lib

  _check_flags()
  config = predictor_lib.load_workdir_config(_WORKDIR.value)
  predictor_lib.check_options(config, _TOP_K.value, None, 0.5)
  models = (
      _FEATURES,
      _VIDEOS,
      _ENCODERS.clip,
      _ENCODERS.llama,
      _ENCODERS.captioner,
      _ENCODERS.slowfast,
  )
  if synthetic_lib.data_root(config) is not None and not any(f.present for f in models):
    return _synthetic_session(config)
  if _COMPARE_WORKDIR.value:
    raise predictor_lib.PredictError(
        "--compare_workdir: comparing models is for synthetic workdirs (their true moments are known)"
    )
  raw_videos = True
  try:
    predictor_lib.check_raw_video_config(config)
  except predictor_lib.PredictError:
    if not _FEATURES.value:
      raise
    raw_videos = False  # the page serves --features' videos only
  encoders = _ENCODERS.encoders(config)
  encoders.load(video=raw_videos, text=True)
  predictor = predictor_lib.Predictor.from_workdir(_WORKDIR.value, _CHECKPOINT.value, config)
  cache_dir = _CACHE_DIR.value or tempfile.mkdtemp(prefix="lmr_demo_")
  return session_lib.DemoSession(
      predictor,
      encoders,
      cache_dir,
      _FEATURES.value,
      videos=_VIDEOS.value,
      top_k=_TOP_K.value,
      max_upload_mb=_MAX_UPLOAD_MB.value,
      max_video_minutes=_MAX_VIDEO_MINUTES.value,
  )


def main():
  checkpoint.quiet_orbax_logs()
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a lab machine
  auth = access.read_auth_file(_AUTH_FILE.value) if _AUTH_FILE.value else None  # before the models
  session = load_session()
  # Uploads land in the session's cache, not in a shared /tmp/gradio (Gradio reads this on import).
  os.environ.setdefault("GRADIO_TEMP_DIR", str(session.cache_dir / "uploads"))
  from lmr_jax.demo import page as page_lib  # Gradio, imported once the models are in
  from lmr_jax.demo import synthetic as synthetic_lib

  if isinstance(session, synthetic_lib.SyntheticDemoSession):
    page = page_lib.build_synthetic(session, _WORKDIR.value, _COMPARE_WORKDIR.value)
  else:
    page = page_lib.build(session, _WORKDIR.value)
  if not access.is_loopback(_HOST.value):
    logging.warning(
        "serving on %s: other machines can reach the page%s",
        _HOST.value,
        " (login from --auth_file)" if auth else "; anyone who can is served: add --auth_file",
    )
  logging.info("serving %s on http://%s:%d", _WORKDIR.value, _HOST.value, _PORT.value)
  page.queue(default_concurrency_limit=1, max_size=_MAX_QUEUE.value).launch(
      server_name=_HOST.value,
      server_port=_PORT.value,
      ssr_mode=False,
      show_error=False,
      auth=auth,
      max_file_size=int(_MAX_UPLOAD_MB.value * 2**20),
      **page_lib.launch_options(session),
  )


if __name__ == "__main__":
  raise SystemExit(cli.run_absl(main, __doc__))
