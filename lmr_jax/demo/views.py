"""The demo page's pictures of an ``Answer``, as plain data: the moments timeline (HTML whose
buttons seek the player), the saliency curve's rows, the caption table's rows. No web framework here,
so each is tested on its own.
"""

from __future__ import annotations

import html

# A moment button carries its start in data-seek; this page script (installed once, on load) seeks
# the player there. Delegated from the document, it serves timelines rendered after the page loaded.
SEEK_JS = """
() => {
  document.addEventListener("click", (event) => {
    const target = event.target.closest ? event.target.closest("[data-seek]") : null;
    const video = document.querySelector("#lmr-player video");
    if (!target || !video) return;
    video.currentTime = parseFloat(target.dataset.seek);
    video.play().catch(() => {});
  });
}
"""

CSS = """
.lmr-query { margin: 0 0 16px 0; }
.lmr-query-text { font-weight: 600; margin-bottom: 4px; }
.lmr-row { display: flex; align-items: center; gap: 8px; margin: 2px 0; }
.lmr-rank { width: 2.2em; font-size: 12px; color: #6b7280; text-align: right; }
.lmr-lane { position: relative; flex: 1; height: 14px; border-radius: 3px; background: #e5e7eb; }
.lmr-span { position: absolute; top: 0; height: 14px; border: 0; border-radius: 3px; padding: 0;
            cursor: pointer; background: #2563eb; }
.lmr-moment, .lmr-moment-space { width: 12em; font-size: 12px; }
.lmr-moment { border: 1px solid #2563eb; border-radius: 4px; background: white; color: #1e3a8a;
              padding: 1px 6px; cursor: pointer; text-align: left; }
.lmr-axis { flex: 1; display: flex; justify-content: space-between; font-size: 11px; color: #6b7280; }
.lmr-model { font-size: 12px; color: #374151; margin: 4px 0 2px 0; }
.lmr-truth { position: absolute; top: 0; height: 14px; border-radius: 3px; background: #16a34a; }
.lmr-compare .lmr-span { background: #d97706; }
.lmr-compare .lmr-moment { border-color: #d97706; color: #78350f; }
.lmr-strip { position: relative; height: 34px; border-radius: 3px; background: #e5e7eb;
             margin: 4px 0 4px 0; }
.lmr-event { position: absolute; top: 0; height: 34px; border-radius: 3px; overflow: hidden;
             font-size: 11px; line-height: 12px; color: white; padding: 2px 3px;
             box-sizing: border-box; }
.lmr-tick { position: absolute; top: 0; height: 34px; border-left: 1px solid rgba(255,255,255,0.6); }
.lmr-error { border: 1px solid #dc2626; background: #fef2f2; color: #991b1b; border-radius: 4px;
             padding: 8px 12px; }
"""


def _seconds(x: float) -> str:
  return f"{x:.1f}"


def _span_style(start: float, end: float, duration: float) -> str:
  """A span's place on a lane of the video's time axis (at least 0.5 % wide, cut at the end)."""
  left = 100 * min(max(start / duration, 0.0), 1.0)
  width = max(100 * min(end, duration) / duration - left, 0.5)
  return f"left:{left:.3f}%;width:{width:.3f}%"


def _moment_row(rank: int, start: float, end: float, score: float, *, duration: float) -> str:
  """One moment: its rank, a lane with its span on the video's time axis, its times and score."""
  return (
      f'<div class="lmr-row"><span class="lmr-rank">#{rank}</span>'
      f'<div class="lmr-lane"><button class="lmr-span" data-seek="{start}" '
      f'title="play from {_seconds(start)} s" style="{_span_style(start, end, duration)}">'
      f'</button></div><button class="lmr-moment" data-seek="{start}">{_seconds(start)}-'
      f"{_seconds(end)} s &middot; {score:.3f}</button></div>"
  )


def _moments(record: dict, duration: float) -> str:
  return "".join(
      _moment_row(rank, start, end, score, duration=duration)
      for rank, (start, end, score) in enumerate(record["pred_relevant_windows"], 1)
  )


def _truth_row(truth, duration: float) -> str:
  """The query's true moments in one lane, their times beside it, their source as its title."""
  spans = "".join(
      f'<span class="lmr-truth" style="{_span_style(start, end, duration)}"></span>'
      for start, end in truth.windows
  )
  times = ", ".join(f"{_seconds(start)}-{_seconds(end)} s" for start, end in truth.windows)
  return (
      f'<div class="lmr-row lmr-truth-row"><span class="lmr-rank">true</span>'
      f'<div class="lmr-lane">{spans}</div><span class="lmr-moment-space lmr-truth-times" '
      f'title="{html.escape(truth.source)}">{html.escape(times or "none")}</span></div>'
  )


def _query_block(index: int, record: dict, *, truth=None, compare=None, names=("", "")) -> str:
  """One query's moments, best first, one lane each over the same time axis; its true moments
  first when known, and a second model's moments under the first's when compared."""
  duration = max(float(record["duration"]), 1e-6)
  rows = "" if truth is None else _truth_row(truth, duration)
  if compare is None:
    rows += _moments(record, duration)
  else:
    for name, rec, css in (
        (names[0], record, "lmr-model-block"),
        (names[1], compare, "lmr-compare"),
    ):
      rows += (
          f'<div class="{css}"><div class="lmr-model">{html.escape(name)}</div>'
          f"{_moments(rec, duration)}</div>"
      )
  return (
      f'<div class="lmr-query" data-query="{index}">'
      f'<div class="lmr-query-text">{html.escape(record["query"] or "")}</div>{rows}'
      f'<div class="lmr-row"><span class="lmr-rank"></span><div class="lmr-axis"><span>0 s</span>'
      f'<span>{_seconds(duration)} s</span></div><span class="lmr-moment-space"></span></div></div>'
  )


def timeline_html(records: list[dict], truths=None, compare=None, names=("", "")) -> str:
  """Every query's top moments on the video's time axis, best first; a click seeks the player.
  ``truths``: each query's true moments (``synthetic.Truth``); ``compare``: a second model's records
  of the same queries, shown under the first's, the two labelled with ``names``."""
  return "".join(
      _query_block(
          i,
          record,
          truth=None if truths is None else truths[i],
          compare=None if compare is None else compare[i],
          names=names,
      )
      for i, record in enumerate(records)
  )


# One colour per event of a video, in turn (white labels read on each).
EVENT_COLOURS = ("#7c3aed", "#0891b2", "#be123c", "#4d7c0f", "#b45309", "#1d4ed8", "#9d174d")


def strip_html(events, num_clips: int, clip_len: float, duration: float) -> str:
  """A video without frames drawn as its events over its clips: one coloured block per event,
  labelled with what its captions say (``synthetic.Event``), on grey, a tick between clips."""
  duration = max(duration, 1e-6)
  ticks = "".join(
      f'<span class="lmr-tick" style="left:{100 * i * clip_len / duration:.3f}%"></span>'
      for i in range(1, num_clips)
  )
  blocks = "".join(
      f'<div class="lmr-event" data-event="{i}" title="{html.escape(e.label)}: clips {e.start}-'
      f'{e.end - 1}" style="{_span_style(e.start * clip_len, e.end * clip_len, duration)};'
      f'background:{EVENT_COLOURS[i % len(EVENT_COLOURS)]}">{html.escape(e.label)}</div>'
      for i, e in enumerate(events)
  )
  return (
      f'<div class="lmr-strip">{blocks}{ticks}</div><div class="lmr-axis"><span>0 s</span>'
      f"<span>{num_clips} clips of {clip_len:g} s</span><span>{_seconds(duration)} s</span></div>"
  )


def error_html(message: str) -> str:
  return f'<div class="lmr-error" role="alert">{html.escape(message)}</div>'


def saliency_rows(records: list[dict]) -> dict[str, list]:
  """Columns of the saliency curve: each clip's centre in seconds, its score, its query."""
  columns = {"time (s)": [], "saliency": [], "query": []}
  for record in records:
    clip_len = float(record["clip_len"])
    for i, score in enumerate(record["pred_saliency_scores"]):
      columns["time (s)"].append(round((i + 0.5) * clip_len, 3))
      columns["saliency"].append(score)
      columns["query"].append(record["query"])
  return columns


def caption_rows(captions: list[dict]) -> list[list[str]]:
  """The caption table: clip time span, the caption, the Table I instruction that asked for it."""
  return [
      [f"{_seconds(c['start'])}-{_seconds(c['end'])} s", c["caption"], c["instruction"]]
      for c in captions
  ]
