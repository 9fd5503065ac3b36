"""The demo's web page (Gradio): a video and queries in; the moments timeline, the saliency curve,
the clip captions and a predict.py JSON Lines download out.

Every request goes through one handler that turns any failure into one message in the page (the
status box): a user error (``LmrError``: an unreadable video, no query, features that do not fit the
model) as its own line, anything else as its exception type with the traceback in the server's log
only. Gradio is imported only by this module.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import gradio as gr
import pandas as pd

from lmr_jax import fileio
from lmr_jax.demo import session as session_lib
from lmr_jax.demo import views
from lmr_jax.errors import LmrError

logger = logging.getLogger("lmr_jax.demo")

HELP = (
    "Upload a video (or pick one with precomputed features), write one query per line and press "
    "**Find moments**. The captioner writes one caption per clip first (the context LMR reads; a "
    "video's captions are kept, so later queries about it are fast). Click a moment to play it."
)


def _header(session: session_lib.DemoSession, workdir: str) -> str:
  config = session.config
  captions = "on" if config.model.use_caption_context else "off"
  return (
      f"# LMR: moments of a sentence in a video\n{HELP}\n\n"
      f"Model: `{workdir}` (step {session.predictor.step}; {config.data.name}, "
      f"{config.data.clip_len:g} s clips, caption context {captions}, top {session.top_k} moments)."
  )


def _write_predictions(records: list[dict], out_dir: Path) -> str:
  """predict.py's JSON Lines, in a fresh folder per request (the page links to it)."""
  out_dir.mkdir(parents=True, exist_ok=True)
  path = Path(tempfile.mkdtemp(prefix="request_", dir=out_dir)) / "predictions.jsonl"
  fileio.write_jsonl(str(path), records)
  return str(path)


def _failure_html(error: Exception) -> str:
  """The page's one message for a failed request (call it while handling ``error``): a user error
  (``LmrError``, ``OSError``) as its own line; anything else, a bug, as its type, with the traceback
  in the server's log."""
  if isinstance(error, (LmrError, OSError)):
    logger.info("request refused: %s", error)
    return views.error_html(str(error))
  logger.exception("request failed")
  return views.error_html(
      f"internal error ({type(error).__name__}); the server log has the details"
  )


def _empty_outputs(status_html: str):
  return status_html, "", None, [], None


class Handlers:
  """The page's event functions, bound to one session."""

  def __init__(self, session: session_lib.DemoSession):
    self.session = session

  def answer(self, video, vid, text, progress=gr.Progress()):
    """(status, timeline, saliency, captions, download) for the request; one message on failure."""
    try:
      if vid:
        answer = self.session.answer_features(vid, text)
      else:
        answer = self.session.answer_upload(
            video, text, on_progress=lambda fraction, what: progress(fraction, desc=what)
        )
      download = _write_predictions(answer.records, self.session.cache_dir / "predictions")
    except Exception as e:  # noqa: BLE001 - every failure is one message in the page
      return _empty_outputs(_failure_html(e))
    return (
        "",
        views.timeline_html(answer.records),
        pd.DataFrame(views.saliency_rows(answer.records)),
        views.caption_rows(answer.captions),
        download,
    )

  def pick_feature_video(self, vid):
    """The player shows the picked video's raw file, where ``--videos`` has one."""
    return self.session.video_file(vid) if vid else None


def _answer_components():
  """The answer's side of both pages: (timeline, saliency plot, caption table, download)."""
  timeline = gr.HTML(label="Top moments", elem_id="lmr-timeline")
  saliency = gr.LinePlot(
      x="time (s)", y="saliency", color="query", label="Clip saliency", elem_id="lmr-saliency"
  )
  captions = gr.Dataframe(
      headers=["clip", "caption", "instruction"],
      label="Clip captions (what the model read)",
      interactive=False,
      wrap=True,
      elem_id="lmr-captions",
  )
  download = gr.File(label="Predictions (predict.py JSON Lines)", elem_id="lmr-download")
  return timeline, saliency, captions, download


def build(session: session_lib.DemoSession, workdir: str) -> gr.Blocks:
  """The page; ``launch_options`` holds what ``Blocks.launch`` needs with it."""
  handlers = Handlers(session)
  vids = session.feature_vids
  with gr.Blocks(title="LMR moment retrieval") as page:
    gr.Markdown(_header(session, workdir))
    with gr.Row():
      with gr.Column(scale=1):
        player = gr.Video(label="Video", sources=["upload"], elem_id="lmr-player")
        feature_video = gr.Dropdown(
            choices=vids,
            value=None,
            label="...or a video with precomputed features",
            visible=bool(vids),
            elem_id="lmr-feature-video",
        )
        queries = gr.Textbox(
            label="Queries (one per line)",
            lines=3,
            placeholder="a man cooks pasta in a kitchen",
            elem_id="lmr-queries",
        )
        run = gr.Button("Find moments", variant="primary", elem_id="lmr-run")
        status = gr.HTML(elem_id="lmr-status")
      with gr.Column(scale=1):
        timeline, saliency, captions, download = _answer_components()
    run.click(
        handlers.answer,
        inputs=[player, feature_video, queries],
        outputs=[status, timeline, saliency, captions, download],
    )
    # An upload replaces a picked feature video; picking one shows its raw file, if there is one.
    player.upload(lambda: None, outputs=feature_video)
    feature_video.input(handlers.pick_feature_video, inputs=feature_video, outputs=player)
  return page


SYNTHETIC_HELP = (
    "A video of the synthetic benchmark (it has no frames: its events are drawn as the captions "
    "describe them), queries in the benchmark's words, one per line, or one of the video's "
    "annotated queries, then **Find moments**. Green: the true moments."
)


def _synthetic_header(session, workdir: str, compare_workdir: str | None) -> str:
  config = session.config
  captions = "on" if config.model.use_caption_context else "off"
  compared = ""
  if session.compare is not None:
    other = "on" if session.compare.config.model.use_caption_context else "off"
    compared = (
        f" Compared with `{compare_workdir}` (step {session.compare.step}, caption context "
        f"{other}), in orange."
    )
  return (
      f"# LMR on the synthetic context benchmark\n{SYNTHETIC_HELP}\n\n"
      f"Model: `{workdir}` (step {session.predictor.step}, caption context {captions}, top "
      f"{session.top_k} moments; data `{session.features}`).{compared}"
  )


class SyntheticHandlers:
  """The synthetic page's event functions, bound to one ``SyntheticDemoSession``."""

  def __init__(self, session, names: tuple[str, str]):
    self.session, self.names = session, names

  def pick_video(self, vid):
    """The picked video's events strip and its annotated queries for the second picker."""
    if not vid:
      return "", gr.update(choices=[], value=None)
    try:
      strip = views.strip_html(*self.session.events(vid))
    except LmrError as e:
      return views.error_html(str(e)), gr.update(choices=[], value=None)
    return strip, gr.update(choices=self.session.picks.get(vid, []), value=None)

  def answer(self, vid, text):
    """(status, strip, timeline, saliency, captions, download); one message on failure."""
    try:
      answer = self.session.answer(vid, text)
      download = _write_predictions(answer.records, self.session.cache_dir / "predictions")
    except Exception as e:  # noqa: BLE001 - every failure is one message in the page
      return (_failure_html(e), gr.update()) + _empty_outputs("")[1:]
    records = answer.records
    if answer.compare_records is not None:  # one curve per model and query
      records = [dict(r, query=f"{r['query']} [{self.names[0]}]") for r in answer.records] + [
          dict(r, query=f"{r['query']} [{self.names[1]}]") for r in answer.compare_records
      ]
    return (
        "",
        views.strip_html(answer.events, answer.num_clips, answer.clip_len, answer.duration),
        views.timeline_html(answer.records, answer.truths, answer.compare_records, self.names),
        pd.DataFrame(views.saliency_rows(records)),
        views.caption_rows(answer.captions),
        download,
    )


def _model_names(workdir: str, compare_workdir: str | None) -> tuple[str, str]:
  """Short labels of the two models: the workdirs' folder names, whole paths where those are alike,
  and the second marked when a workdir is compared with itself."""
  first, second = (os.path.normpath(w) if w else "" for w in (workdir, compare_workdir))
  if os.path.basename(first) != os.path.basename(second):
    return os.path.basename(first), os.path.basename(second)
  return (first, second) if first != second else (first, f"{second} (compared)")


def build_synthetic(session, workdir: str, compare_workdir: str | None = None) -> gr.Blocks:
  """The page of a synthetic workdir (``synthetic.SyntheticDemoSession``): the benchmark's videos
  drawn as their events, typed or annotated queries, the true moments beside the predicted ones."""
  handlers = SyntheticHandlers(session, _model_names(workdir, compare_workdir))
  with gr.Blocks(title="LMR moment retrieval: synthetic benchmark") as page:
    gr.Markdown(_synthetic_header(session, workdir, compare_workdir))
    with gr.Row():
      with gr.Column(scale=1):
        video = gr.Dropdown(
            choices=session.feature_vids,
            value=None,
            label="Video (val and test)",
            elem_id="lmr-feature-video",
        )
        strip = gr.HTML(elem_id="lmr-strip")
        picked = gr.Dropdown(
            choices=[], value=None, label="...an annotated query of it", elem_id="lmr-annotated"
        )
        queries = gr.Textbox(
            label="Queries (one per line, the benchmark's words)",
            lines=3,
            placeholder="woman dancing in the kitchen",
            elem_id="lmr-queries",
        )
        run = gr.Button("Find moments", variant="primary", elem_id="lmr-run")
        status = gr.HTML(elem_id="lmr-status")
      with gr.Column(scale=1):
        timeline, saliency, captions, download = _answer_components()
    video.input(handlers.pick_video, inputs=video, outputs=[strip, picked])
    picked.input(lambda text: text or "", inputs=picked, outputs=queries)
    run.click(
        handlers.answer,
        inputs=[video, queries],
        outputs=[status, strip, timeline, saliency, captions, download],
    )
  return page


def launch_options(session: session_lib.DemoSession) -> dict:
  """The page's script and style, and the folders it may serve files from."""
  allowed = [session.cache_dir] + ([session.videos] if session.videos else [])
  return {
      "js": views.SEEK_JS,
      "css": views.CSS,
      "allowed_paths": [os.path.abspath(p) for p in allowed],
  }
