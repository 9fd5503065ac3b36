"""The synthetic context benchmark: QVHighlights-format data where only caption context finds the moment.

Each video is a sequence of events (actor, action, scene) separated by background clips. Visual features
encode actor and action but not the scene (``visual_scene`` > 0 adds it, weakly) -- the visual blind
spot that LMR's caption context fills.
Each query names actor + action + scene; its target event(s) always share actor and action with one or
two other events of the same video in other scenes (each the target of another query), so a model that
sees only the video can at best guess among them, while the per-clip captions (varied wording, as from
randomly drawn instructions; sometimes without the scene) say where each event happens.

Text features come from a fixed token-embedding table (a seeded vector per word: a stand-in for Llama's
frozen embedding layer, and a second one for CLIP's text tokens, whose space the CLIP visual stream shares).

    python -m lmr_jax.data.synthetic --out_dir data/synthetic            # default benchmark (~10 s)
    python -m lmr_jax.data.synthetic --out_dir /tmp/s --train_videos 8 --val_videos 4 --test_videos 4
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import sys
import zlib

import numpy as np
from absl import flags

from lmr_jax import cli, fileio
from lmr_jax.data import features as features_lib
from lmr_jax.data.queries import DataError
from lmr_jax.errors import ConfigError

SETTINGS_FILE = "synthetic_config.json"
# Settings added after data was first written, with the value that data was made with: a settings
# file without the key describes data made that way.
SETTINGS_BEFORE_ADDED = {"visual_scene": 0.0}
# Draws of one video's events before giving up: with the default settings a plan fits at the first
# draw in 99 % of videos (at most 3 in 2,000), so this many failing means the settings leave no room.
MAX_PLAN_DRAWS = 10_000

ACTORS = (
    "man",
    "woman",
    "boy",
    "girl",
    "chef",
    "dog",
    "teacher",
    "old man",
    "couple",
    "athlete",
    "musician",
    "grandmother",
)
ACTIONS = (
    "cooking",
    "dancing",
    "reading a book",
    "running",
    "painting",
    "singing",
    "swimming",
    "eating",
    "talking on the phone",
    "riding a bike",
    "playing guitar",
    "cleaning",
)
SCENES = (
    "kitchen",
    "beach",
    "park",
    "office",
    "street",
    "forest",
    "garden",
    "living room",
    "restaurant",
    "gym",
    "library",
    "market",
)

CAPTION_TEMPLATES = (
    "a {actor} is {action} in the {scene}.",
    "in the {scene}, a {actor} is {action}.",
    "the video shows a {actor} {action} at the {scene}.",
    "we see a {actor} {action}; the setting is a {scene}.",
    "a {actor} {action}, filmed in a {scene}.",
    "this clip captures a {actor} who is {action} inside the {scene}.",
)
CAPTION_TEMPLATES_NO_SCENE = (
    "a {actor} is {action}.",
    "the video shows a {actor} {action}.",
    "someone, a {actor}, is {action} here.",
)
BACKGROUND_CAPTIONS = (
    "the camera pans slowly across the view.",
    "nothing much happens in this part of the video.",
    "a blurry shot with no clear subject.",
    "the scene is quiet and nobody is visible.",
    "a transition between two shots.",
)
QUERY_TEMPLATES = (
    "a {actor} is {action} in the {scene}.",
    "{actor} {action} at the {scene}.",
    "in the {scene} a {actor} is {action}.",
    "the {actor} is {action} inside a {scene}.",
)


def _setting(default, help_text: str):
  """A setting's default and the one line ``--help`` shows for it."""
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
  """Sizes and difficulty. ``visual_noise`` is the per-dimension noise std relative to the signal;
  ``visual_scene`` the length of an event's scene direction in its clips' visual features, against 1
  for its actor's and its action's (0: the visual features carry no scene)."""

  seed: int = _setting(
      0, "random seed of the whole benchmark (same seed and settings: the same files)"
  )
  train_videos: int = _setting(600, "videos in the train split")
  val_videos: int = _setting(150, "videos in the val split")
  test_videos: int = _setting(
      150, "videos in the test split (written unlabelled and as test_with_gt)"
  )
  min_clips: int = _setting(50, "fewest clips per video")
  max_clips: int = _setting(75, "most clips per video")
  clip_len: float = _setting(2.0, "seconds per clip")
  min_event_clips: int = _setting(5, "fewest clips per event")
  max_event_clips: int = _setting(15, "most clips per event")
  max_core_events: int = _setting(
      3,
      "events sharing actor and action (2..this), in different scenes: a query's "
      "target and its look-alikes",
  )
  repeated_scene_prob: float = _setting(
      0.3, "chance that a 3-event core repeats a scene (the query then has two windows)"
  )
  max_other_events: int = _setting(1, "events with another actor and action per video (0..this)")
  caption_scene_missing_prob: float = _setting(0.25, "share of captions that do not name the scene")
  visual_noise: float = _setting(
      0.6, "per-dimension noise std of the visual features, relative to the signal"
  )
  visual_scene: float = _setting(
      0.0,
      "length of an event's scene direction in its clips' visual features, against 1 "
      "for actor and action (0: none)",
  )
  slowfast_dim: int = _setting(2304, "width of the SlowFast-like visual stream")
  clip_dim: int = _setting(512, "width of the CLIP-like visual stream")
  text_dim: int = _setting(512, "width of the CLIP text token features of queries")
  caption_dim: int = _setting(
      512, "width of the caption vectors and caption-encoder query tokens (Llama-7B: 4096)"
  )


_COUNTS = ("train_videos", "val_videos", "test_videos", "min_clips", "min_event_clips")
_DIMS = ("slowfast_dim", "clip_dim", "text_dim", "caption_dim")
_PROBABILITIES = ("repeated_scene_prob", "caption_scene_missing_prob")


def settings_from_config(settings) -> SyntheticConfig:
  """``config.data.synthetic`` (a ConfigDict or dict) as a ``SyntheticConfig``; an unknown key is a
  ConfigError naming it."""
  values = settings.to_dict() if hasattr(settings, "to_dict") else dict(settings)
  names = {f.name for f in dataclasses.fields(SyntheticConfig)}
  for key in values:
    if key not in names:
      raise ConfigError(
          f"config.data.synthetic.{key}: no such synthetic setting (has {sorted(names)})"
      )
  return SyntheticConfig(**values)


def _is_int(x) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def smallest_video(cfg: SyntheticConfig) -> int:
  """The clips of the smallest plan ``_plan_video`` can draw: 2 core events of ``min_event_clips``
  and a background clip before, between and after them."""
  return 2 * cfg.min_event_clips + 3


def _check_ranges(cfg: SyntheticConfig, prefix: str) -> None:
  """Each setting alone (and each min/max pair) within what the generator can use."""
  for name in _COUNTS + _DIMS:
    value = getattr(cfg, name)
    if not _is_int(value) or value < 1:
      raise ConfigError(f"{prefix}{name} must be an integer >= 1, got {value!r}")
  if not _is_int(cfg.seed):
    raise ConfigError(f"{prefix}seed must be an integer, got {cfg.seed!r}")
  for low, high in (("min_clips", "max_clips"), ("min_event_clips", "max_event_clips")):
    if not _is_int(getattr(cfg, high)) or getattr(cfg, high) < getattr(cfg, low):
      raise ConfigError(
          f"{prefix}{high}={getattr(cfg, high)!r} must be an integer >= "
          f"{prefix}{low}={getattr(cfg, low)}"
      )
  if not _is_int(cfg.max_core_events) or not 2 <= cfg.max_core_events <= len(SCENES):
    raise ConfigError(
        f"{prefix}max_core_events must be an integer in [2, {len(SCENES)}] (look-alike events in "
        f"different scenes), got {cfg.max_core_events!r}"
    )
  if not _is_int(cfg.max_other_events) or cfg.max_other_events < 0:
    raise ConfigError(
        f"{prefix}max_other_events must be an integer >= 0, got {cfg.max_other_events!r}"
    )
  for name in _PROBABILITIES:
    value = getattr(cfg, name)
    if not fileio.is_number(value) or not 0.0 <= value <= 1.0:
      raise ConfigError(f"{prefix}{name} must be a probability in [0, 1], got {value!r}")
  if not fileio.is_number(cfg.clip_len) or cfg.clip_len <= 0:
    raise ConfigError(f"{prefix}clip_len must be a number > 0, got {cfg.clip_len!r}")
  for name in ("visual_noise", "visual_scene"):
    value = getattr(cfg, name)
    if not fileio.is_number(value) or not 0 <= value < float("inf"):
      raise ConfigError(f"{prefix}{name} must be a finite number >= 0, got {value!r}")


def check_settings(cfg: SyntheticConfig, prefix: str = "config.data.synthetic.") -> None:
  """Raises a ConfigError naming ``{prefix}{field}`` for settings that cannot make a benchmark,
  among them events that cannot fit in the shortest video (the generator would draw forever)."""
  _check_ranges(cfg, prefix)
  if cfg.clip_dim != cfg.text_dim:
    raise ConfigError(
        f"{prefix}clip_dim={cfg.clip_dim} must equal {prefix}text_dim={cfg.text_dim}: CLIP image "
        "and text features share one space"
    )
  if smallest_video(cfg) > cfg.min_clips:
    raise ConfigError(
        f"{prefix}min_clips={cfg.min_clips} cannot hold the smallest video (2 events of "
        f"{prefix}min_event_clips={cfg.min_event_clips} clips and 3 background clips: "
        f"{smallest_video(cfg)} clips); raise min_clips or lower min_event_clips"
    )


@functools.lru_cache(maxsize=None)
def word_vector(word: str, dim: int, table: str) -> np.ndarray:
  """The fixed embedding of ``word``: the same vector in every run and every split."""
  rng = np.random.default_rng([zlib.crc32(f"{table}:{word}".encode()), dim])
  return (rng.standard_normal(dim) / np.sqrt(dim)).astype(np.float32)


def tokenize(text: str) -> list[str]:
  return text.replace(",", " ,").replace(".", " .").replace(";", " ;").split()


def embed_tokens(text: str, dim: int, table: str) -> np.ndarray:
  return np.stack([word_vector(t, dim, table) for t in tokenize(text)])


@dataclasses.dataclass(frozen=True)
class Event:
  actor: int
  action: int
  scene: int
  start: int  # first clip
  end: int  # one past the last clip


def _plan_video(rng: np.random.Generator, cfg: SyntheticConfig, num_clips: int):
  """Picks the events of one video and the queries it answers; returns (events, queries) or None
  when the events do not fit (the caller draws again).

  The core is 2-3 events sharing one actor and action in different scenes (a scene may recur, giving
  a query two windows); every distinct scene among them makes one query, so each query's target has
  the others as look-alike distractors. ``max_other_events`` unrelated events fill the rest.
  """
  actor, action = int(rng.integers(len(ACTORS))), int(rng.integers(len(ACTIONS)))
  num_core = int(rng.integers(2, cfg.max_core_events + 1))
  scenes = [int(s) for s in rng.permutation(len(SCENES))[:num_core]]
  if num_core >= 3 and rng.random() < cfg.repeated_scene_prob:
    scenes[-1] = scenes[0]
  events = [(actor, action, s) for s in scenes]
  for _ in range(int(rng.integers(0, cfg.max_other_events + 1))):
    for _ in range(MAX_PLAN_DRAWS):  # 143 of the 144 (actor, action) pairs differ from the core's
      other = (int(rng.integers(len(ACTORS))), int(rng.integers(len(ACTIONS))))
      if other != (actor, action):
        break
    else:
      raise DataError(
          f"no unrelated event in {MAX_PLAN_DRAWS} draws: the random generator is broken"
      )
    events.append(other + (int(rng.integers(len(SCENES))),))
  queries = [
      (actor, action, scene, [i for i, e in enumerate(events[:num_core]) if e[2] == scene])
      for scene in dict.fromkeys(scenes)
  ]
  order = rng.permutation(len(events))
  lengths = rng.integers(cfg.min_event_clips, cfg.max_event_clips + 1, size=len(events))
  spare = num_clips - int(lengths.sum())
  if spare < len(events) + 1:
    return None
  # Background gaps: at least one clip between events, the rest spread at random.
  gaps = 1 + rng.multinomial(spare - len(events) - 1, np.ones(len(events) + 1) / (len(events) + 1))
  gaps[0] -= 1
  placed, clip = [None] * len(events), 0
  for slot, e in enumerate(order):
    clip += int(gaps[slot])
    placed[e] = Event(*events[e], start=clip, end=clip + int(lengths[slot]))
    clip += int(lengths[slot])
  return placed, queries


def _caption(rng: np.random.Generator, cfg: SyntheticConfig, event: Event | None) -> str:
  if event is None:
    return BACKGROUND_CAPTIONS[rng.integers(len(BACKGROUND_CAPTIONS))]
  words = dict(actor=ACTORS[event.actor], action=ACTIONS[event.action], scene=SCENES[event.scene])
  if rng.random() < cfg.caption_scene_missing_prob:
    return CAPTION_TEMPLATES_NO_SCENE[rng.integers(len(CAPTION_TEMPLATES_NO_SCENE))].format(**words)
  return CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))].format(**words)


class _VisualBasis:
  """Per visual stream, the direction of each actor, action, scene and of the background.

  The CLIP stream lives in the space of the CLIP text tokens, as real CLIP image and text features do:
  an actor's direction is the mean of its words' CLIP-text vectors. The SlowFast stream uses fixed
  random directions, unrelated to any text. Scenes enter scaled by ``visual_scene`` (their directions
  are drawn from a generator of their own, so that ``visual_scene=0`` writes the very features of the
  benchmark before scenes could be seen).
  """

  def __init__(self, cfg: SyntheticConfig):
    rng = np.random.default_rng([cfg.seed, 7])
    random_unit = lambda n, rng=rng: (  # noqa: E731
        rng.standard_normal((n, cfg.slowfast_dim)).astype(np.float32) / np.sqrt(cfg.slowfast_dim)
    )
    phrase = lambda words: embed_tokens(words, cfg.clip_dim, "clip").mean(0)  # noqa: E731
    self.streams = [
        (random_unit(len(ACTORS)), random_unit(len(ACTIONS)), random_unit(1)),
        (
            np.stack([phrase(a) for a in ACTORS]),
            np.stack([phrase(a) for a in ACTIONS]),
            phrase("background")[None],
        ),
    ]
    scene_rng = np.random.default_rng([cfg.seed, 8])
    self.scenes = [
        cfg.visual_scene * random_unit(len(SCENES), scene_rng),
        cfg.visual_scene * np.stack([phrase(s) for s in SCENES]),
    ]

  def features(self, rng, cfg, events: list[Event], num_clips: int) -> list[np.ndarray]:
    out = []
    for (actors, actions, background), scenes in zip(self.streams, self.scenes):
      dim = actors.shape[1]
      feats = np.repeat(background, num_clips, axis=0)
      for e in events:
        feats[e.start : e.end] = actors[e.actor] + actions[e.action] + scenes[e.scene]
      noise = rng.standard_normal((num_clips, dim), dtype=np.float32) / np.sqrt(dim)
      out.append((feats + cfg.visual_noise * noise).astype(np.float16))
    return out


def _saliency_scores(rng: np.random.Generator, length: int) -> list[list[int]]:
  """Three annotators, peaked towards the middle of the event, integers in [1, 4]."""
  middle = 1.0 - np.abs(np.linspace(-1.0, 1.0, length))
  scores = 2.0 + 2.0 * middle[:, None] + rng.normal(0.0, 0.7, size=(length, 3))
  return np.clip(np.rint(scores), 1, 4).astype(int).tolist()


def _write_video(rng, cfg: SyntheticConfig, basis: _VisualBasis, feat_dir: str, *, vid: str):
  """Plans a video and writes its visual and caption features; returns (clips, events, queries)."""
  num_clips = int(rng.integers(cfg.min_clips, cfg.max_clips + 1))
  for _ in range(MAX_PLAN_DRAWS):
    plan = _plan_video(rng, cfg, num_clips)
    if plan is not None:
      break
  else:
    raise ConfigError(
        f"synthetic video {vid}: no {MAX_PLAN_DRAWS} draws of its events fit in {num_clips} clips; "
        "raise min_clips, or lower max_event_clips, max_core_events or max_other_events"
    )
  events, queries = plan
  clip_event = [None] * num_clips
  for e in events:
    for c in range(e.start, e.end):
      clip_event[c] = e
  slowfast, clip = basis.features(rng, cfg, events, num_clips)
  captions = [_caption(rng, cfg, clip_event[c]) for c in range(num_clips)]
  instructions = [f"synthetic caption style {rng.integers(10)}" for _ in range(num_clips)]
  features_lib.write_npz(
      os.path.join(feat_dir, "slowfast_features", f"{vid}.npz"), features=slowfast
  )
  features_lib.write_npz(os.path.join(feat_dir, "clip_features", f"{vid}.npz"), features=clip)
  features_lib.write_npz(
      os.path.join(feat_dir, "caption_features", f"{vid}.npz"),
      features=np.stack([embed_tokens(c, cfg.caption_dim, "llm").mean(0) for c in captions]),
      captions=np.array(captions),
      instructions=np.array(instructions),
  )
  return num_clips, events, queries


def generate_split(
    cfg: SyntheticConfig,
    out_dir: str,
    split: str,
    num_videos: int,
    *,
    first_qid: int,
    basis: _VisualBasis,
) -> list[dict]:
  """Writes ``num_videos`` videos of ``split`` and their queries' token files; returns the queries'
  annotation records (qids from ``first_qid``)."""
  feat_dir = os.path.join(out_dir, "features")
  rng = np.random.default_rng([cfg.seed, zlib.crc32(split.encode())])
  records = []
  for v in range(num_videos):
    vid = f"syn_{split}_{v:05d}"
    num_clips, events, queries = _write_video(rng, cfg, basis, feat_dir, vid=vid)
    for actor, action, scene, targets in queries:
      qid = first_qid + len(records)
      words = dict(actor=ACTORS[actor], action=ACTIONS[action], scene=SCENES[scene])
      query = QUERY_TEMPLATES[rng.integers(len(QUERY_TEMPLATES))].format(**words)
      features_lib.write_npz(
          os.path.join(feat_dir, "clip_text_features", f"qid{qid}.npz"),
          last_hidden_state=embed_tokens(query, cfg.text_dim, "clip"),
      )
      features_lib.write_npz(
          os.path.join(feat_dir, "caption_query_features", f"qid{qid}.npz"),
          last_hidden_state=embed_tokens(query, cfg.caption_dim, "llm"),
      )
      target_events = sorted((events[t] for t in targets), key=lambda e: e.start)
      clip_ids = [c for e in target_events for c in range(e.start, e.end)]
      scores = [s for e in target_events for s in _saliency_scores(rng, e.end - e.start)]
      records.append(
          {
              "qid": qid,
              "query": query,
              "duration": num_clips * cfg.clip_len,
              "vid": vid,
              "relevant_windows": [
                  [e.start * cfg.clip_len, e.end * cfg.clip_len] for e in target_events
              ],
              "relevant_clip_ids": clip_ids,
              "saliency_scores": scores,
          }
      )
  return records


LABEL_KEYS = ("relevant_windows", "relevant_clip_ids", "saliency_scores")


def generate(cfg: SyntheticConfig, out_dir: str) -> dict[str, str]:
  """Writes the benchmark under ``out_dir``; returns the annotation file of each split. Settings
  that cannot make one are a ConfigError before anything is written."""
  check_settings(cfg)
  for d in (
      "slowfast_features",
      "clip_features",
      "clip_text_features",
      "caption_features",
      "caption_query_features",
  ):
    os.makedirs(os.path.join(out_dir, "features", d), exist_ok=True)
  os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
  basis = _VisualBasis(cfg)
  files, qid = {}, 0
  for split, n in (("train", cfg.train_videos), ("val", cfg.val_videos), ("test", cfg.test_videos)):
    records = generate_split(cfg, out_dir, split, n, first_qid=qid, basis=basis)
    qid += len(records)
    if split == "test":  # as QVHighlights: a release without labels, and the labels apart
      files["test_with_gt"] = os.path.join(out_dir, "annotations", "test_with_gt.jsonl")
      fileio.write_jsonl(files["test_with_gt"], records)
      records = [{k: v for k, v in r.items() if k not in LABEL_KEYS} for r in records]
    files[split] = os.path.join(out_dir, "annotations", f"{split}.jsonl")
    fileio.write_jsonl(files[split], records)
  # Written last: its presence says the data is complete, its content which settings made it.
  fileio.write_json(os.path.join(out_dir, SETTINGS_FILE), dataclasses.asdict(cfg))
  return files


def _stored_settings(path: str) -> dict:
  """The settings file of existing synthetic data; an unreadable one is an error, never redone (the
  folder may hold someone's data)."""
  try:
    with open(path, encoding="utf-8") as f:
      stored = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise DataError(
        f"{path}: unreadable synthetic settings file ({type(e).__name__}); delete the folder "
        "or point config.data.feat_root elsewhere"
    ) from None
  if not isinstance(stored, dict):
    raise DataError(f"{path}: not a synthetic settings file (expected a JSON object)")
  return stored


def ensure(data) -> None:
  """Writes the benchmark that ``data.synthetic`` (a ``config.data``) describes, unless the folder
  above ``data.feat_root`` already holds it with exactly these settings.

  Data made with other settings is never reused nor overwritten: that is a DataError naming the
  settings that differ. A folder without the settings file is an interrupted write and is redone.
  """
  root = os.path.dirname(os.path.normpath(data.feat_root))
  cfg = settings_from_config(data.synthetic)
  check_settings(cfg)
  path = os.path.join(root, SETTINGS_FILE)
  if os.path.exists(path):
    stored = {**SETTINGS_BEFORE_ADDED, **_stored_settings(path)}
    wanted = dataclasses.asdict(cfg)
    differ = [
        f"{k}={stored.get(k)!r} (config: {v!r})" for k, v in wanted.items() if stored.get(k) != v
    ]
    if differ:
      raise DataError(
          f"{path}: the synthetic data there was made with other settings: {', '.join(differ)}; "
          "delete the folder or point config.data.feat_root elsewhere"
      )
    return
  logging.info("Writing the synthetic benchmark to %s", root)
  generate(cfg, root)


def _define_flags(flag_values) -> None:
  flags.DEFINE_string(
      "out_dir",
      None,
      "folder for annotations/ and features/ (made if missing)",
      flag_values=flag_values,
      required=True,
  )
  define = {int: flags.DEFINE_integer, float: flags.DEFINE_float}
  for field in dataclasses.fields(SyntheticConfig):
    define[type(field.default)](
        field.name, field.default, field.metadata["help"], flag_values=flag_values
    )


def _write(args) -> None:
  settings = {f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticConfig)}
  cfg = SyntheticConfig(**settings)
  check_settings(cfg, prefix="--")
  for split, path in generate(cfg, args.out_dir).items():
    with open(path) as f:
      print(f"{split}: {sum(1 for _ in f)} queries -> {path}")


def main(argv=None) -> int:
  return cli.run_command(_define_flags, _write, __doc__, argv)


if __name__ == "__main__":
  sys.exit(main())
