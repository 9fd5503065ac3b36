"""The caption instructions of LMR's Video Context Enhancement (paper Sec. III-B) and their sampler.

TABLE_I is the paper's Table I (arXiv 2405.12540), word for word and in its order. Each clip is
captioned with one instruction drawn uniformly at random from the list. The draw for a video depends
only on (seed, vid), never on sharding, batching or which videos were already done, so a resumed or
re-sharded run asks the same question about the same clip.
"""

from __future__ import annotations

import hashlib

import numpy as np

TABLE_I = (
    "Describe the following video concisely.",
    "Present a brief overview of the provided video.",
    "Provide a concise description of the given video.",
    "Convey a short narrative summarizing the provided video.",
    "Summarize the visual content of the following video.",
    "Deliver a compact portrayal of the presented video.",
    "Furnish a concise explanation of the given video.",
    "Supply a brief account of the provided video.",
    "Narrate the contents of the video with precision.",
    "Offer a succinct analysis of the given video.",
)


def sample_instructions(seed: int, vid: str, num_clips: int) -> list[str]:
  """One Table I instruction per clip of video `vid`, in clip order.

  The generator is seeded with (seed, sha256(vid)): Python's hash() is salted per process, so it
  would give different instructions on every run.
  """
  vid_key = int.from_bytes(hashlib.sha256(vid.encode("utf-8")).digest()[:8], "little")
  rng = np.random.default_rng([seed, vid_key])
  return [TABLE_I[i] for i in rng.integers(len(TABLE_I), size=num_clips)]
