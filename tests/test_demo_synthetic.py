"""demo.py on a synthetic workdir: the generator's vocabulary and token tables, the events read from
the captions, the true moments, the session on the session's tiny trained workdir, and the page served
by demo.py with no downloaded model, driven in headless Chromium (as tests/test_demo.py drives it).
"""

import copy
import json
import urllib.error
import urllib.parse
import urllib.request

import numpy as np
import pytest

import browser as browser_lib  # noqa: E402
from conftest import REPO, child_environment  # noqa: E402
from lmr_jax.data import queries as queries_lib  # noqa: E402
from lmr_jax.data import synthetic  # noqa: E402
from lmr_jax.demo import synthetic as demo_synthetic  # noqa: E402
from lmr_jax.demo import views  # noqa: E402
from lmr_jax.demo.session import DemoError  # noqa: E402

CAPTIONS = [
    "a blurry shot with no clear subject.",
    "a old man is cooking in the living room.",
    "the video shows a old man cooking.",  # no scene: still the same event
    "in the living room, a old man is cooking.",
    "a transition between two shots.",
    "a old man is cooking in the kitchen.",
    "a dog is swimming in the park.",  # adjacent, another actor and action: another event
]


# --- the vocabulary, the captions' events, the true moments --------------------------------------


def test_queries_in_the_benchmark_words_pass_and_an_unknown_word_is_one_message():
  demo_synthetic.check_vocabulary("Woman dancing in the kitchen")
  demo_synthetic.check_vocabulary("the old man is talking on the phone inside a living room.")
  with pytest.raises(DemoError) as error:
    demo_synthetic.check_vocabulary("woman dancing in the bathroom with a bathroom cat")
  message = str(error.value)
  assert message.startswith(
      "'bathroom', 'with', 'cat': not in the synthetic benchmark's vocabulary"
  )
  assert "\n" not in message and " kitchen " in message and " woman" in message


def test_subject_takes_the_longest_phrase_and_only_one():
  subject = demo_synthetic.Subject.of("The old man is reading a book in the living room.")
  assert subject == demo_synthetic.Subject("old man", "reading a book", "living room")
  assert demo_synthetic.Subject.of("a man and a woman").actor is None  # two actors: not one
  assert demo_synthetic.Subject.of("a man in the park").action is None


def test_caption_events_are_runs_of_one_actor_and_action():
  events = demo_synthetic.caption_events(CAPTIONS)
  assert events == [
      demo_synthetic.Event(1, 4, "old man", "cooking", "living room"),
      demo_synthetic.Event(5, 6, "old man", "cooking", "kitchen"),
      demo_synthetic.Event(6, 7, "dog", "swimming", "park"),
  ]
  assert events[0].label == "old man cooking, living room"


def test_true_moments_come_from_the_annotation_else_from_the_captions():
  events = demo_synthetic.caption_events(CAPTIONS)
  annotated = {"a old man is cooking in the kitchen .": ((10.0, 12.0),)}
  truth = demo_synthetic.true_moments(
      "A old man is cooking in the kitchen.",
      events,
      clip_len=2.0,
      duration=13.0,
      annotated=annotated,
  )
  assert truth == demo_synthetic.Truth(((10.0, 12.0),), "annotation")
  truth = demo_synthetic.true_moments(
      "old man cooking living room", events, clip_len=2.0, duration=13.0, annotated=annotated
  )
  assert truth == demo_synthetic.Truth(((2.0, 8.0),), "the captions' events")
  truth = demo_synthetic.true_moments(
      "dog swimming park", events, clip_len=2.0, duration=13.0, annotated={}
  )
  assert truth.windows == ((12.0, 13.0),)  # cut to the video's duration
  assert (
      demo_synthetic.true_moments(
          "old man cooking", events, clip_len=2.0, duration=13.0, annotated={}
      ).windows
      == ()
  )


def test_the_captions_events_give_every_annotated_querys_windows(tmp_path):
  """On benchmark-sized events (5-15 clips), the true moments read from the captions are the
  generator's own annotation windows, for every query of a split."""
  settings = synthetic.SyntheticConfig(
      seed=11,
      train_videos=1,
      val_videos=25,
      test_videos=1,
      slowfast_dim=8,
      clip_dim=8,
      text_dim=8,
      caption_dim=8,
  )
  files = synthetic.generate(settings, str(tmp_path))
  annotations = queries_lib.load_annotations(files["val"])
  assert len(annotations) > 40
  for ann in annotations:
    with np.load(tmp_path / "features" / "caption_features" / f"{ann.vid}.npz") as npz:
      captions = [str(c) for c in npz["captions"]]
    events = demo_synthetic.caption_events(captions)
    truth = demo_synthetic.true_moments(
        ann.query, events, clip_len=2.0, duration=ann.duration, annotated={}
    )
    assert truth.windows == ann.windows, ann.qid


def test_strip_and_timeline_with_true_moments_and_a_second_model():
  events = demo_synthetic.caption_events(CAPTIONS)
  strip = views.strip_html(events, 7, 2.0, 13.0)
  assert strip.count('class="lmr-event"') == 3 and strip.count('class="lmr-tick"') == 6
  assert ">old man cooking, living room<" in strip and "left:15.385%;width:46.154%" in strip
  record = {
      "query": "q",
      "duration": 13.0,
      "clip_len": 2.0,
      "pred_relevant_windows": [[2.0, 8.0, 0.9], [10.0, 12.0, 0.4]],
      "pred_saliency_scores": [0.0] * 7,
  }
  other = {**record, "pred_relevant_windows": [[10.0, 12.0, 0.7]]}
  truth = demo_synthetic.Truth(((2.0, 8.0),), "annotation")
  page = views.timeline_html([record], [truth], [other], ("lmr", "no_captions"))
  assert page.count('class="lmr-truth"') == 1 and ">2.0-8.0 s<" in page
  assert page.count('class="lmr-moment"') == 3 and page.count('class="lmr-compare"') == 1
  assert page.index(">lmr<") < page.index("2.0-8.0 s &middot; 0.900") < page.index(">no_captions<")
  assert views.timeline_html([record]).count("lmr-truth") == 0  # without truths, as before


# --- the session on a trained workdir ------------------------------------------------------------


@pytest.fixture(scope="module")
def session(tiny_trained, tmp_path_factory):
  from lmr_jax.inference import predictor as predictor_lib

  _, workdir, _ = tiny_trained
  predictor = predictor_lib.Predictor.from_workdir(workdir)
  return demo_synthetic.SyntheticDemoSession(
      predictor, tmp_path_factory.mktemp("demo_cache"), compare=predictor, top_k=5
  )


@pytest.mark.slow
def test_session_serves_val_and_test_videos_and_encodes_as_the_generator(session):
  from lmr_jax.inference import predictor as predictor_lib

  config = session.config
  annotations = {
      split: queries_lib.load_annotations(config.data.annotation_files[split])
      for split in ("val", "test_with_gt")
  }
  assert session.feature_vids == sorted({a.vid for anns in annotations.values() for a in anns})
  ann = annotations["val"][0]
  answer = session.answer(ann.vid, ann.query)
  # a typed query is the generator's query token file: the same prediction as from the qid's files
  inputs = predictor_lib.load_video_inputs(config, config.data.feat_root, ann.vid)
  from_files = predictor_lib.load_query_inputs(config, config.data.feat_root, ann.qid)
  expected = session.predictor.predict(inputs, [from_files], 5)[0]
  assert answer.records[0]["pred_relevant_windows"] == expected["pred_relevant_windows"]
  assert answer.records[0]["pred_saliency_scores"] == expected["pred_saliency_scores"]
  assert answer.truths == [demo_synthetic.Truth(ann.windows, "annotation")]
  assert answer.compare_records == answer.records  # compared with itself
  assert [c["caption"] for c in answer.captions] == session.captions(ann.vid)
  assert answer.captions[0]["instruction"].startswith("synthetic caption style")
  assert (ann.query, ann.query) in [(q, q) for _, q in session.picks[ann.vid]]


@pytest.mark.slow
@pytest.mark.parametrize(
    "vid, text, message",
    [
        (None, "man cooking", "pick one of the benchmark's"),
        ("../../etc/passwd", "man cooking", "pick one of the benchmark's"),
        ("syn_train_00000", "man cooking", "pick one of the benchmark's"),
        ("{vid}", "", "enter a query"),
        ("{vid}", "a unicorn in the kitchen", "'unicorn': not in the synthetic benchmark"),
    ],
)
def test_bad_requests_are_one_line(session, vid, text, message):
  vid = vid and vid.format(vid=session.feature_vids[0])
  with pytest.raises(DemoError) as error:
    session.answer(vid, text)
  assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.slow
def test_a_workdir_of_other_data_or_another_datas_model_is_refused(session, tmp_path):
  from lmr_jax.inference import predictor as predictor_lib

  config = copy.deepcopy(session.config).unlock()
  config.data.feat_root = str(tmp_path / "features")
  other = predictor_lib.Predictor(config, session.predictor.params, session.predictor.step)
  with pytest.raises(DemoError, match="not the synthetic generator's data"):
    demo_synthetic.SyntheticDemoSession(other, tmp_path)
  with pytest.raises(DemoError, match="--compare_workdir was trained on"):
    demo_synthetic.SyntheticDemoSession(session.predictor, tmp_path, compare=other)


# --- the page, in a real browser -----------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tiny_trained, tmp_path_factory):
  """demo.py serving the tiny trained workdir compared with itself, with no model flag."""
  browser_lib.skip_without_browser()
  _, workdir, _ = tiny_trained
  root = tmp_path_factory.mktemp("served_synthetic")
  flags = [f"--workdir={workdir}", f"--compare_workdir={workdir}", "--top_k=3"]
  flags += [f"--cache_dir={root / 'cache'}"]
  with browser_lib.serve_demo(flags, root / "demo.log", cwd=REPO, env=child_environment(1)) as url:
    yield url


@pytest.mark.slow
def test_page_shows_a_picked_and_a_typed_query_with_true_moments(served, session, tmp_path):
  from selenium.webdriver.common.by import By
  from selenium.webdriver.support.ui import WebDriverWait

  vid = session.feature_vids[0]
  picked_label, picked_text = session.picks[vid][0]
  event = next(e for e in session.events(vid)[0] if e.scene)
  typed = f"{event.actor} {event.action} in the {event.scene}"
  with browser_lib.open_browser(tmp_path) as driver:
    browser_lib.ask_synthetic(driver, served, vid, picked_label, [picked_text, typed])
    wait = WebDriverWait(driver, 60)
    assert driver.find_element(By.ID, "lmr-status").text == ""
    timeline = driver.find_element(By.ID, "lmr-timeline")
    texts = [e.text for e in timeline.find_elements(By.CLASS_NAME, "lmr-query-text")]
    assert texts == [picked_text, typed]
    truths = [e.text for e in timeline.find_elements(By.CLASS_NAME, "lmr-truth-times")]
    events, _, clip_len, duration = session.events(vid)
    expected = [
        demo_synthetic.true_moments(
            q, events, clip_len=clip_len, duration=duration, annotated=session.annotated[vid]
        )
        for q in texts
    ]
    assert truths == [", ".join(f"{s:.1f}-{e:.1f} s" for s, e in t.windows) for t in expected]
    assert all(t.windows for t in expected)
    # both models' top 3 for each query, the second in its own block
    assert len(timeline.find_elements(By.CLASS_NAME, "lmr-moment")) == 2 * 2 * 3
    assert len(timeline.find_elements(By.CLASS_NAME, "lmr-compare")) == 2
    captions = driver.find_element(By.ID, "lmr-captions").text
    assert session.captions(vid)[0] in captions
    wait.until(
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#lmr-saliency .mark-line path")) == 4
    )
    link = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, "#lmr-download a[href]"))
    with urllib.request.urlopen(link.get_attribute("href"), timeout=30) as response:
      records = [json.loads(line) for line in response.read().decode().splitlines()]
    assert [r["query"] for r in records] == texts
    driver.save_screenshot(str(tmp_path / "demo_synthetic.png"))
    assert (tmp_path / "demo_synthetic.png").stat().st_size > 10_000


# --- the page facing a network: login, upload limits, over HTTP as a client sends them -----------


def _multipart(name: str, data: bytes) -> tuple[bytes, str]:
  boundary = "lmrboundary7f3a"
  body = (
      (
          f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
          "Content-Type: video/mp4\r\n\r\n"
      ).encode()
      + data
      + f"\r\n--{boundary}--\r\n".encode()
  )
  return body, f"multipart/form-data; boundary={boundary}"


def _request(url: str, data=None, headers=None, cookie: str = "") -> tuple[int, bytes, object]:
  request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
  if cookie:
    request.add_header("Cookie", cookie)
  try:
    with urllib.request.urlopen(request, timeout=60) as response:
      return response.status, response.read(), response.headers
  except urllib.error.HTTPError as e:
    return e.code, e.read(), e.headers


@pytest.mark.slow
def test_a_page_on_the_network_asks_for_a_login_and_refuses_oversized_uploads(
    tiny_trained, tmp_path
):
  """demo.py on every interface with a login file and a 1 MB upload limit: it warns that the page is
  reachable; without the login the API answers 401; after it, an upload over the limit is refused
  with 413 before it lands, and one within it lands in the session's cache, nowhere else."""
  _, workdir, _ = tiny_trained
  logins = tmp_path / "logins"
  logins.write_text("alice:correct horse\n")
  cache = tmp_path / "cache"
  flags = [
      f"--workdir={workdir}",
      f"--cache_dir={cache}",
      f"--auth_file={logins}",
      "--max_upload_mb=1",
      "--host=0.0.0.0",
  ]
  log = tmp_path / "demo.log"
  with browser_lib.serve_demo(flags, log, cwd=REPO, env=child_environment(1)) as url:
    assert "other machines can reach the page (login from --auth_file)" in log.read_text()
    assert _request(url + "config")[0] == 401
    wrong = urllib.parse.urlencode({"username": "alice", "password": "wrong"}).encode()
    assert _request(url + "login", wrong)[0] == 400
    right = urllib.parse.urlencode({"username": "alice", "password": "correct horse"}).encode()
    status, _, headers = _request(url + "login", right)
    assert status == 200
    cookie = "; ".join(c.split(";", 1)[0] for c in headers.get_all("Set-Cookie"))
    assert _request(url + "config", cookie=cookie)[0] == 200

    upload = url + "gradio_api/upload"
    body, kind = _multipart("big.mp4", b"\0" * (2 << 20))
    status, text, _ = _request(upload, body, {"Content-Type": kind}, cookie)
    assert status == 413 and b"maximum allowed size of 1048576 bytes" in text
    body, kind = _multipart("notes.mp4", b"meeting notes, not a video\n")
    assert _request(upload, body, {"Content-Type": kind})[0] == 401  # no login, no upload
    status, text, _ = _request(upload, body, {"Content-Type": kind}, cookie)
    assert status == 200
    (landed,) = json.loads(text)
    assert landed.startswith(str(cache / "uploads") + "/") and landed.endswith("notes.mp4")
