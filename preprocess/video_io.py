"""Video decoding with PyAV: fixed-length clips and the frames sampled from each.

LMR, like Moment-DETR and the QVHighlights features, works on consecutive 2 s clips: clip c covers
[c * clip_len, (c + 1) * clip_len) and a trailing partial clip counts as a clip, so a 150 s video has 75
clips. Every stream written by this package (captions, CLIP features) uses this one plan, so their rows line
up. Frames are sampled at the centres of `frames_per_clip` equal sub-intervals of a clip (one frame: the
clip's middle), taking the frame on screen at that time. The file is decoded once, front to back, and clips
are yielded as soon as they are complete, so memory stays at one clip however long the video is.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import av
import numpy as np

from preprocess import io_utils
from preprocess.io_utils import load_vids

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".mpg", ".mpeg")


def find_videos(videos_dir: str | os.PathLike) -> dict[str, Path]:
  """vid -> file for the videos in a directory; the vid is the file name without its extension."""
  files = sorted(p for p in Path(videos_dir).iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
  videos: dict[str, Path] = {}
  for p in files:
    if p.stem in videos:
      raise ValueError(f"two videos share the id {p.stem!r}: {videos[p.stem].name}, {p.name}")
    videos[p.stem] = p
  return videos


def select_videos(videos_dir: str | os.PathLike, annotations: list[str]) -> dict[str, Path | None]:
  """vid -> file; with annotation files, exactly their vids (None where no file exists, to report it)."""
  found = find_videos(videos_dir)
  if not annotations:
    return dict(found)
  return {vid: found.get(vid) for vid in load_vids(annotations)}


def num_clips(duration: float, clip_len: float) -> int:
  """Clips covering `duration` seconds; a remainder under 1 ms (container rounding) is not a clip."""
  return max(1, math.ceil((duration - 1e-3) / clip_len))


def sample_times(
    duration: float, clip_len: float, frames_per_clip: int, offsets: np.ndarray | None = None
) -> np.ndarray:
  """(num_clips, frames_per_clip) timestamps in seconds, ascending. ``offsets``: seconds into every
  clip instead (the last clip's may lie past the end: its last frame stays on screen)."""
  starts = np.arange(num_clips(duration, clip_len)) * clip_len
  if offsets is not None:
    return starts[:, None] + np.asarray(offsets, np.float64)[None, :]
  ends = np.minimum(starts + clip_len, duration)
  fractions = (np.arange(frames_per_clip) + 0.5) / frames_per_clip
  return starts[:, None] + fractions[None, :] * (ends - starts)[:, None]


class ClipReader:
  """An open video: `num_clips` is known up front; iterating decodes and yields one clip at a time.

  Each yielded array is uint8 (frames_per_clip, height, width, 3), RGB, at the video's own resolution
  (the model processors resize). Use as a context manager so the file is closed on errors.
  """

  def __init__(
      self,
      path: str | os.PathLike,
      clip_len: float = 2.0,
      frames_per_clip: int = 1,
      *,
      offsets: Callable[[float], np.ndarray] | None = None,
  ):
    """``offsets(frame_rate)``, if given, picks the frames instead: seconds into each clip, from the
    stream's average frame rate (frames per second)."""
    self.path = Path(path)
    self._container = av.open(str(path))
    try:
      if not self._container.streams.video:
        raise ValueError("no video stream")
      self._stream = self._container.streams.video[0]
      self._stream.thread_type = "AUTO"
      self.duration = self._duration()
      self.frame_rate = float(self._stream.average_rate or self._stream.guessed_rate or 0)
      if offsets is not None and not self.frame_rate > 0:
        raise ValueError("the stream reports no frame rate")
      picked = None if offsets is None else offsets(self.frame_rate)
      self.times = sample_times(self.duration, clip_len, frames_per_clip, picked)
    except BaseException:
      self._container.close()
      raise

  def _duration(self) -> float:
    stream, container = self._stream, self._container
    if stream.duration is not None and stream.time_base is not None:
      duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
      duration = container.duration / av.time_base
    else:
      raise ValueError("the container reports no duration")
    if not duration > 0:
      raise ValueError(f"non-positive duration {duration}")
    return duration

  @property
  def num_clips(self) -> int:
    return len(self.times)

  def __iter__(self) -> Iterator[np.ndarray]:
    # sample times are relative to the stream's first timestamp, which need not be 0 (e.g. cut clips)
    start = (
        float(self._stream.start_time * self._stream.time_base) if self._stream.start_time else 0.0
    )
    targets = self.times.ravel() + start
    k = self.times.shape[1]
    picked: list[np.ndarray] = []

    def pick(frame: av.VideoFrame) -> Iterator[np.ndarray]:
      picked.append(frame.to_ndarray(format="rgb24"))
      if len(picked) == k:
        yield np.stack(picked)
        picked.clear()

    taken, previous = 0, None
    for frame in self._container.decode(self._stream):
      if frame.time is None:
        continue
      # every target before this frame's timestamp shows the previous frame (or this one, if first)
      while taken < len(targets) and frame.time > targets[taken]:
        yield from pick(previous if previous is not None else frame)
        taken += 1
      previous = frame
    if previous is None:
      raise ValueError("no decodable video frames")
    while taken < len(targets):  # targets after the last frame's timestamp: it stays on screen
      yield from pick(previous)
      taken += 1

  def close(self) -> None:
    self._container.close()

  def __enter__(self) -> ClipReader:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def encode_videos(
    args,
    stream: str,
    *,
    load: Callable[[], Callable[[list[np.ndarray]], np.ndarray]],
    open_clips: Callable[[Path], ClipReader],
    logger: logging.Logger,
    dtype=np.float32,
) -> int:
  """The run of a visual-feature CLI (``args``: its flags): the videos of --videos (or of
  --annotations) in this --shard, each read clip by clip through ``open_clips(path)``, encoded in
  batches of --batch_size clips by the model ``load()`` returns (loaded once, only if a video is
  left), written to ``{--out}/{stream}/{vid}.npz`` as ``features`` of ``dtype``. Returns the exit
  status (1 if a video failed; the others are written)."""
  io_utils.setup_logging(args.log_level)
  args.videos, args.out = Path(args.videos), Path(args.out)
  videos = select_videos(args.videos, args.annotations)
  vids = io_utils.shard_keys(videos, args.shard, args.num_shards)
  logger.info("shard %d/%d: %d of %d videos", args.shard, args.num_shards, len(vids), len(videos))

  def out_path(vid: str) -> Path:
    return args.out / stream / f"{vid}.npz"

  def work(vid: str, encoder) -> None:
    if videos[vid] is None:
      raise FileNotFoundError(f"no video file for {vid} in {args.videos}")
    with open_clips(videos[vid]) as clips:
      features = np.concatenate(
          [encoder(batch) for batch in io_utils.batched(clips, args.batch_size)]
      )
    io_utils.save_npz(out_path(vid), features=features.astype(dtype))

  report = io_utils.run_keys(stream, vids, out_path, load, work=work, logger=logger)
  return io_utils.summarize([report], logger)
