r"""CLI: caption every 2 s clip of every video with a frozen multimodal LLM (LMR Video Context Enhancement).

    python -m preprocess.captions --videos DIR --model llava-hf/LLaVA-NeXT-Video-7B-hf --out FEAT_ROOT \
        [--annotations train.jsonl,val.jsonl,...] [--shard I --num_shards N]

Writes FEAT_ROOT/captions/{vid}.json: {"vid", "model", "seed", "clip_len", "frames_per_clip", "captions",
"instructions"}, one caption per clip in chronological order with the Table I instruction it answered.
`python -m preprocess.text_features --llama ...` turns these into caption_features/{vid}.npz.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from pathlib import Path

from absl import flags

from lmr_jax import cli
from preprocess import io_utils, runtime
from preprocess.captioners import Captioner
from preprocess.instructions import sample_instructions
from preprocess.video_io import ClipReader, select_videos

logger = logging.getLogger("preprocess.captions")


def _define_flags(flag_values) -> None:
  io_utils.define_video_flags(flag_values, verb="caption")
  flags.DEFINE_string(
      "model",
      None,
      "captioner checkpoint (hub id or directory)",
      flag_values=flag_values,
      required=True,
  )
  flags.DEFINE_float("clip_len", 2.0, "seconds per clip", flag_values=flag_values)
  flags.DEFINE_integer(
      "frames_per_clip", 8, "frames a video LLM sees per clip", flag_values=flag_values
  )
  flags.DEFINE_integer("batch_size", 8, "clips per generate() call", flag_values=flag_values)
  flags.DEFINE_integer(
      "max_new_tokens", 64, "longest caption, in generated tokens", flag_values=flag_values
  )
  flags.DEFINE_integer("seed", 0, "seed of the per-video instruction draw", flag_values=flag_values)
  io_utils.define_run_flags(flag_values)
  runtime.define_device_flags(flag_values, half_on_gpu=True)


def caption_video(
    captioner: Captioner,
    path: Path,
    vid: str,
    args: types.SimpleNamespace,
    *,
    on_progress: Callable[[int, int], None] | None = None,
) -> dict:
  """Captions and instructions for every clip of one video, in clip order; ``on_progress(done,
  total)`` is called with the clips captioned so far after each batch (the demo's progress bar)."""
  with ClipReader(path, args.clip_len, captioner.frames_per_clip) as clips:
    instructions = sample_instructions(args.seed, vid, clips.num_clips)
    captions: list[str] = []
    for batch in io_utils.batched(clips, args.batch_size):
      captions += captioner.caption(batch, instructions[len(captions) : len(captions) + len(batch)])
      if on_progress is not None:
        on_progress(len(captions), clips.num_clips)
  return {
      "vid": vid,
      "model": args.model,
      "seed": args.seed,
      "clip_len": args.clip_len,
      "frames_per_clip": captioner.frames_per_clip,
      "captions": captions,
      "instructions": instructions,
  }


def main(argv: list[str] | None = None) -> int:
  return cli.run_command(_define_flags, _caption_all, __doc__, argv)


def _caption_all(args: types.SimpleNamespace) -> int:
  io_utils.setup_logging(args.log_level)
  args.videos, args.out = Path(args.videos), Path(args.out)
  videos = select_videos(args.videos, args.annotations)
  vids = io_utils.shard_keys(videos, args.shard, args.num_shards)
  logger.info("shard %d/%d: %d of %d videos", args.shard, args.num_shards, len(vids), len(videos))
  device, dtype = runtime.resolve(args.device, args.dtype, half_on_gpu=True)

  def out_path(vid: str) -> Path:
    return args.out / "captions" / f"{vid}.json"

  def load() -> Captioner:
    return Captioner(
        args.model, device, dtype, args.max_new_tokens, frames_per_clip=args.frames_per_clip
    )

  def work(vid: str, captioner: Captioner) -> None:
    if videos[vid] is None:
      raise FileNotFoundError(f"no video file for {vid} in {args.videos}")
    io_utils.save_json(out_path(vid), caption_video(captioner, videos[vid], vid, args))

  report = io_utils.run_keys("captions", vids, out_path, load, work=work, logger=logger)
  return io_utils.summarize([report], logger)


if __name__ == "__main__":
  sys.exit(main())
