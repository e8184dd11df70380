"""`chronotope serve` under load: 20 clients at once queue 40 requests through the page's API (gradio_client, on
127.0.0.1), on a debug model (32x32, 5 frames, 1 step) and a queue of 4. Every request must end in its own result
or a "queue is full" answer at once; none may hang, fail, be lost, be written twice or be answered with another's
result, and the server serves the next request afterwards. 37 s on a 2-core machine busy with other jobs: the
server starting (16 s), 20 clients connecting (4 s), the rush (13 s: 10 results, 30 busy answers).
"""

from __future__ import annotations

import json
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from chronotope.serve.forms import FIELDS, LABELS
from test_serve_browser import server

CLIENTS, PER_CLIENT, QUEUE = 20, 2, 4  # 40 requests, at most 4 waiting while one runs
FORM = {"prompt": "", "mode": "auto", "image": None, "video": None, "video_end": None, "direction": "forward",
        "image_position": "first", "strength": "", "storyboard": "", "resolution": "model default",
        "aspect_ratio": "model default", "height": "", "width": "", "num_frames": "", "gap_frames": "", "fps": "",
        "num_inference_steps": 1, "guidance_scale": 1, "seed": "", "sampler": "euler", "negative_prompt": "",
        "expand_prompt": False}


def test_every_request_gets_its_result_or_a_busy_answer_and_nothing_is_lost(tmp_path):
    pytest.importorskip("gradio_client", reason="gradio_client comes with gradio (pip install -e '.[dev]')")
    import torch
    from gradio_client import Client
    from gradio_client.utils import QueueError

    from chronotope.pipeline import VideoPipeline

    torch.set_num_threads(1)
    VideoPipeline.from_presets("debug", "debug", defaults=dict(height=32, width=32, num_frames=5)).save_pretrained(
        tmp_path / "model")
    out = (tmp_path / "out").resolve()
    start = threading.Barrier(CLIENTS)
    answers: dict[int, tuple[str, object]] = {}

    def client(i: int, url: str) -> None:
        c = Client(url, verbose=False, download_files=False)
        start.wait(timeout=120)  # all 20 submit their first request within a few milliseconds
        for k in range(i * PER_CLIENT, (i + 1) * PER_CLIENT):
            values = {**FORM, "prompt": f"request {k}", "seed": str(k)}
            try:
                answers[k] = ("done", c.submit(*(values[n] for n in FIELDS), api_name="/generate").result(timeout=120))
            except QueueError as err:
                answers[k] = ("busy", str(err))
            except Exception as err:  # anything else is a failure, reported below with the request it hit
                answers[k] = ("failed", repr(err))
        c.close()

    with server(str(tmp_path / "model"), out, tmp_path / "cwd", "--max-queue", str(QUEUE)) as url:
        first = Client(url, verbose=False, download_files=False)
        api = first.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]
        labels = [p["label"] for p in api["parameters"]]  # the form's fields, in FIELDS order
        assert [label.startswith(LABELS.get(n, "")) for n, label in zip(FIELDS, labels)] == [True] * len(FIELDS)
        t0 = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            list(pool.map(client, range(CLIENTS), [url] * CLIENTS))
        seconds = time.monotonic() - t0
        last = first.predict(*({**FORM, "prompt": "after the rush", "seed": "99"}[n] for n in FIELDS),
                             api_name="/generate")
        first.close()
    log = (tmp_path / "serve.log").read_text()

    kinds = {k: kind for k, (kind, _) in answers.items()}
    assert sorted(kinds) == list(range(CLIENTS * PER_CLIENT)), "a request got no answer"
    failed = {k: a for k, (kind, a) in answers.items() if kind == "failed"}
    assert failed == {}, failed
    done = {k: a for k, (kind, a) in answers.items() if kind == "done"}
    busy = [a for kind, a in answers.values() if kind == "busy"]
    assert busy and all("Queue is full" in a for a in busy)  # the bound held, and said so at once
    assert len(done) > QUEUE  # ... while the queue kept taking requests as it drained

    names = []
    for k, (status, video, _image, _expanded, record, download, _gallery) in done.items():
        name = re.match(r"Done: (\d{4}-t2v\.mp4)", status).group(1)  # its own result, not another's:
        assert (record["prompt"], record["seed"], record["num_inference_steps"]) == (f"request {k}", k, 1)
        assert Path(video["value"]["path"]) == out / name and [Path(d["path"]).name for d in download] == [
            name, name.replace(".mp4", ".json")]
        assert json.loads((out / name.replace(".mp4", ".json")).read_text())["prompt"] == f"request {k}"
        names.append(name)
    n = len(done) + 1  # the results on disk are exactly the answered ones (and the last), numbered without a gap
    assert sorted(names) == [f"{i:04d}-t2v.mp4" for i in range(1, n)]
    assert sorted(p.name for p in out.glob("*.mp4")) == [f"{i:04d}-t2v.mp4" for i in range(1, n + 1)]
    assert len(list(out.glob("*.json"))) == len(list((out / "posters").glob("*.png"))) == n
    assert last[0] == f"Done: {n:04d}-t2v.mp4" and len(last[6]) == n  # served after the rush; the gallery has all
    assert "Traceback" not in log, log
    print(f"{len(done)} results and {len(busy)} busy answers in {seconds:.1f} s")
