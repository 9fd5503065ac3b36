"""Raw videos and free query text -> LMR inputs, with the frozen PyTorch models of preprocess/.

Imported only for a raw video or free-text queries: it needs preprocess/requirements.txt (torch,
transformers, PyAV), which predicting from precomputed features does not. A video becomes the feature
files of docs/data_layout.md, written as the preprocess CLIs write them (the SlowFast and CLIP image
features the model reads, captions and their Llama embedding vectors), and is then read back by the
loaders that training and evaluation use, so a raw video and its precomputed features give the same
prediction.
"""

from __future__ import annotations

import functools
import os
import types
from collections.abc import Callable
from pathlib import Path

import av
import ml_collections
import numpy as np
import torch

from lmr_jax.inference import predictor as predictor_lib
from lmr_jax.inference.predictor import PredictError
from preprocess import captions as captions_lib
from preprocess import io_utils, runtime
from preprocess.captioners import Captioner
from preprocess.clip_features import ClipImageEncoder
from preprocess.llama_embedding import EMBEDDING_KEY, LlamaEmbedder
from preprocess.slowfast import FEATURE_DIM
from preprocess import slowfast_features
from preprocess.slowfast_features import SlowFastEncoder, frame_offsets
from preprocess.text_features import ClipTextEncoder, write_caption_features
from preprocess.video_io import ClipReader

CLIP_BATCH_SIZE = 64  # clips per CLIP forward pass, preprocess.clip_features' default
Progress = Callable[[str, int, int], None]  # (stage, done, total)


def quiet_model_loading() -> None:
  """No per-checkpoint "Loading weights" progress bars from transformers: an entry point's stderr
  stays for the lines that matter (its one error line, its log)."""
  import transformers  # noqa: PLC0415 - already imported by preprocess; named here for the call

  transformers.utils.logging.disable_progress_bar()


def _unreadable_video(video, error: Exception) -> PredictError:
  """What FFmpeg could not read, in one line naming the file."""
  reason = (str(error).splitlines() or [""])[0][:300]
  return PredictError(f"{video}: unreadable video ({type(error).__name__}: {reason})")


def _missing(flag: str, purpose: str) -> PredictError:
  return PredictError(f"{purpose} needs --{flag} (a checkpoint: hub id or directory)")


def _loaded(flag: str, checkpoint: str | None, purpose: str, load):
  """``load(checkpoint)``, with a missing flag or an unloadable checkpoint as one PredictError line."""
  if not checkpoint:
    raise _missing(flag, purpose)
  try:
    return load(checkpoint)
  except (OSError, ValueError, KeyError) as e:
    reason = (str(e).splitlines() or [""])[0][:300]
    raise PredictError(
        f"--{flag} {checkpoint}: cannot load ({type(e).__name__}: {reason})"
    ) from None


def _check_dim(flag: str, checkpoint: str, what: str, dim: int, *, trained: int, key: str) -> None:
  if dim != trained:
    raise PredictError(
        f"--{flag} {checkpoint} gives {dim}-dim {what}, the model was trained on {trained} ({key}); "
        "use the checkpoint the training features came from"
    )


class Encoders:
  """The frozen models one run needs, each loaded once, on first use, and checked against the
  dims the model was trained on.

  ``clip``: CLIP image features of clips and text tokens of queries; ``llama``: the embedding table
  for captions and the caption side of queries, and for the visual side too when the config reads
  its query tokens from the caption-query files (Charades-STA's paper setting); ``captioner``: a
  video LLM of
  ``preprocess.captioners.BACKENDS``. ``device``/``dtype`` as in preprocess ("auto": CUDA if there is
  one; float16 for the captioner on CUDA, float32 otherwise).
  """

  def __init__(
      self,
      config: ml_collections.ConfigDict,
      *,
      clip: str | None = None,
      llama: str | None = None,
      captioner: str | None = None,
      slowfast: str | None = None,
      embedding_key: str = EMBEDDING_KEY,
      device: str = "auto",
      dtype: str = "auto",
      clip_frames_per_clip: int = 1,
      caption_frames_per_clip: int = 8,
      caption_batch_size: int = 8,
      max_new_tokens: int = 64,
      seed: int = 0,
  ):
    self.config = config
    self.checkpoints = {"clip": clip, "llama": llama, "captioner": captioner, "slowfast": slowfast}
    self.embedding_key = embedding_key
    self.device, self.dtype = device, dtype
    self.clip_frames_per_clip = clip_frames_per_clip
    self.caption_frames_per_clip = caption_frames_per_clip
    self.caption_batch_size = caption_batch_size
    self.max_new_tokens = max_new_tokens
    self.seed = seed

  @property
  def llama_query_tokens(self) -> bool:
    """Whether the visual VQF reads the query's Llama embedding tokens rather than CLIP's: the
    config points both query-token directories at the same files (configs/charades.py)."""
    data = self.config.data
    return data.query_feat_dir == data.caption_query_feat_dir

  def require(self, video: bool, text: bool) -> None:
    """Fails before any model loads when a flag the run needs is missing."""
    streams = self.config.data.visual_streams
    needs = [("clip", "a raw video's visual features")] * (video and "clip_features" in streams)
    needs += [("slowfast", "a raw video's SlowFast features")] * (
        video and "slowfast_features" in streams
    )
    if self.llama_query_tokens:
      needs += [("llama", "encoding query text (data.query_feat_dir holds Llama tokens)")] * text
    else:
      needs += [("clip", "encoding query text")] * text
    if self.config.model.use_caption_context:
      needs += [("llama", "the caption context (config.model.use_caption_context)")] * (
          video or text
      )
      needs += [("captioner", "the captions of a raw video")] * video
    for flag, purpose in needs:
      if not self.checkpoints[flag]:
        raise _missing(flag, purpose)

  def load(self, video: bool, text: bool) -> None:
    """Loads every model ``require`` asks for, checking its dims: a server (demo.py) loads them once
    and fails at its start, not at its first request."""
    self.require(video=video, text=text)
    needed = []
    if text:
      needed.append("llama" if self.llama_query_tokens else "clip_text")
    if self.config.model.use_caption_context:
      needed += ["llama"] + ["captioner"] * video
    if video:
      streams = self.config.data.visual_streams
      needed += ["clip_image"] * ("clip_features" in streams)
      needed += ["slowfast_video"] * ("slowfast_features" in streams)
    for name in needed:
      getattr(self, name)

  def _torch(self, half_on_gpu: bool) -> tuple[torch.device, torch.dtype]:
    return runtime.resolve(self.device, self.dtype, half_on_gpu=half_on_gpu)

  @functools.cached_property
  def llama(self) -> LlamaEmbedder:
    checkpoint = self.checkpoints["llama"]
    embedder = _loaded(
        "llama",
        checkpoint,
        "the caption context (config.model.use_caption_context)",
        lambda c: LlamaEmbedder(c, self.embedding_key),
    )
    data = self.config.data
    _check_dim(
        "llama",
        checkpoint,
        "embeddings",
        embedder.dim,
        trained=data.caption_dim,
        key="data.caption_dim",
    )
    return embedder

  @functools.cached_property
  def clip_text(self) -> ClipTextEncoder:
    checkpoint = self.checkpoints["clip"]
    encoder = _loaded(
        "clip",
        checkpoint,
        "encoding query text",
        lambda c: ClipTextEncoder(c, *self._torch(half_on_gpu=False)),
    )
    dim = encoder.model.config.text_config.hidden_size
    _check_dim(
        "clip",
        checkpoint,
        "text tokens",
        dim,
        trained=self.config.data.query_dim,
        key="data.query_dim",
    )
    return encoder

  @functools.cached_property
  def clip_image(self) -> ClipImageEncoder:
    checkpoint = self.checkpoints["clip"]
    encoder = _loaded(
        "clip",
        checkpoint,
        "a raw video's visual features",
        lambda c: ClipImageEncoder(c, *self._torch(half_on_gpu=False)),
    )
    dim = encoder.model.config.projection_dim
    trained = self._visual_dim("clip_features")
    _check_dim("clip", checkpoint, "image features", dim, trained=trained, key="data.visual_dims")
    return encoder

  def _visual_dim(self, stream: str) -> int:
    data = self.config.data
    return data.visual_dims[list(data.visual_streams).index(stream)]

  @functools.cached_property
  def slowfast_video(self) -> SlowFastEncoder:
    checkpoint = self.checkpoints["slowfast"]
    encoder = _loaded(
        "slowfast",
        checkpoint,
        "a raw video's SlowFast features",
        lambda c: SlowFastEncoder(c, *self._torch(half_on_gpu=False)),
    )
    trained = self._visual_dim("slowfast_features")
    _check_dim(
        "slowfast", checkpoint, "features", FEATURE_DIM, trained=trained, key="data.visual_dims"
    )
    return encoder

  @functools.cached_property
  def captioner(self) -> Captioner:
    return _loaded(
        "captioner",
        self.checkpoints["captioner"],
        "the captions of a raw video",
        lambda c: Captioner(
            c,
            *self._torch(half_on_gpu=True),
            self.max_new_tokens,
            frames_per_clip=self.caption_frames_per_clip,
        ),
    )

  def query(self, text: str) -> predictor_lib.QueryInputs:
    llama_tokens = None
    if self.config.model.use_caption_context or self.llama_query_tokens:
      llama_tokens = self.llama.token_vectors(text)
    tokens = llama_tokens if self.llama_query_tokens else self.clip_text(text)
    return predictor_lib.query_inputs(self.config, text, tokens, llama_tokens)

  def video_duration(self, video: str | os.PathLike) -> float:
    """The video's duration in seconds, read from its container by its content (not its name);
    a file that is not a video FFmpeg can read is a PredictError."""
    try:
      with ClipReader(video, self.config.data.clip_len, 1) as clips:
        return clips.duration
    except (av.FFmpegError, ValueError) as e:
      raise _unreadable_video(video, e) from None

  def write_video_features(
      self,
      video: str | os.PathLike,
      feat_root: str | os.PathLike,
      vid: str,
      on_progress: Progress | None = None,
  ):
    """Writes ``vid``'s feature files for ``video`` under ``feat_root`` (a file already there is
    kept, as the preprocess CLIs resume) and returns the video's duration in seconds.
    ``on_progress(stage, done, total)`` follows the work: "slowfast features", "clip features" and
    "captions" count clips, "caption embeddings" the one file."""
    report = on_progress or (lambda stage, done, total: None)
    predictor_lib.check_raw_video_config(self.config)
    data, root = self.config.data, Path(feat_root)
    # (stream, progress stage, frames per clip, frame times, batch), for the streams the model reads;
    # SlowFast takes the release extractor's frames (preprocess.slowfast_features)
    slowfast_times = lambda rate: frame_offsets(rate, data.clip_len)  # noqa: E731
    plans = {
        "slowfast_features": ("slowfast features", 1, slowfast_times, slowfast_features.BATCH_SIZE),
        "clip_features": ("clip features", self.clip_frames_per_clip, None, CLIP_BATCH_SIZE),
    }
    streams = [(stream, *plans[stream]) for stream in data.visual_streams]
    for stream, stage, frames_per_clip, offsets, batch_size in streams:
      path = root / stream / f"{vid}.npz"
      # loaded first, so that its own errors are not taken for the video's
      encoder = None
      if not path.exists():
        encoder = self.slowfast_video if stream == "slowfast_features" else self.clip_image
      try:
        with ClipReader(video, data.clip_len, frames_per_clip, offsets=offsets) as clips:
          duration = clips.duration
          if encoder is not None:
            features = []
            for batch in io_utils.batched(clips, batch_size):
              features.append(encoder(batch))
              report(stage, sum(map(len, features)), clips.num_clips)
            features = np.concatenate(features)
            if stream == "slowfast_features":
              features = features.astype(slowfast_features.FEATURE_DTYPE)
            io_utils.save_npz(path, features=features)
      except (av.FFmpegError, ValueError) as e:
        raise _unreadable_video(video, e) from None
    if self.config.model.use_caption_context:
      self._write_captions(Path(video), root, vid, report)
    return duration

  def _write_captions(self, video: Path, root: Path, vid: str, report: Progress) -> None:
    """captions/{vid}.json, then caption_features/{vid}.npz, as preprocess.captions and
    preprocess.text_features write them."""
    captions_path = root / "captions" / f"{vid}.json"
    features_path = root / "caption_features" / f"{vid}.npz"
    if not captions_path.exists():
      options = types.SimpleNamespace(
          clip_len=self.config.data.caption_clip_len,
          batch_size=self.caption_batch_size,
          seed=self.seed,
          model=self.checkpoints["captioner"],
      )
      record = captions_lib.caption_video(
          self.captioner,
          video,
          vid,
          options,
          on_progress=lambda done, total: report("captions", done, total),
      )
      io_utils.save_json(captions_path, record)
    if not features_path.exists():
      report("caption embeddings", 0, 1)
      write_caption_features(captions_path, features_path, self.llama)
      report("caption embeddings", 1, 1)
