"""World-bench generate-and-score: prompts, measures, targets, the end-to-end CLI run and its resume.

A random-weight debug model scores low (that is expected); a ground-truth "model" (World renders of the
prompt's scene) must pass the t2v targets, so the harness wires prompts, specs and sizes correctly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from chronotope.bench.generate import BenchConfig, Job, plan_jobs, plan_prompts, run_generate_and_score
from chronotope.bench.modes import BENCH, psnr, seam_ratio
from chronotope.bench.generate_report import TARGETS, aggregate
from chronotope.cli import main
from chronotope.pipeline import PipelineOutput, VideoPipeline
from chronotope.world import detailed_caption, is_heldout, render, sample_scene

ALL_MODES = "t2v,t2i,i2v,extend,connect,loop,long"
ARGS = ["--num", "4", "--resolution", "32px", "--num-frames", "9", "--steps", "2", "--steps-table", "1,2",
        "--include-heldout-fraction", "0.5", "--modes", ALL_MODES, "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One CLI run with a random debug model (every mode, 4 prompts): (model dir, out dir)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread is fastest on the shared 2 cores
    root = tmp_path_factory.mktemp("genbench")
    model, out = root / "model", root / "out"
    pipe = VideoPipeline.from_presets("debug", "debug", text_encoder="debug", defaults={"num_frames": 9})
    pipe.save_pretrained(model)  # trained on 9-frame clips: long mode makes 4 x 8 + 1 = 33 frames
    assert main(["bench", "generate-and-score", "--model", str(model), "--out", str(out), *ARGS]) == 0
    yield model, out
    torch.set_num_threads(threads)


def _in_unit(x) -> bool:
    return x is None or 0.0 <= x <= 1.0


def test_results_structure_and_ranges(run):
    _, out = run
    res = json.loads((out / "results.json").read_text())
    assert res["generated"] == 4 * 7 + 4 and res["skipped"] == 0  # + t2v at 1 step for the steps table
    assert len(res["videos"]) == 32
    by_name = {v["name"]: v for v in res["videos"]}
    for v in res["videos"]:
        assert v["scene_seed"] >= 10_000_000
        assert v["heldout"] == is_heldout(v["spec"]) == (v["index"] in (1, 3))  # fraction 0.5: every 2nd
        assert all(_in_unit(v["scores"][k]) for k in ("overall", "color", "shape", "motion", "size", "count"))
        assert (out / v["path"]).is_file() and (out / "videos" / f"{v['name']}.json").is_file()
    # sizes cycle through trained then untrained aspect ratios
    assert [by_name[f"0000{i}_t2v_s2"]["aspect_ratio"] for i in range(4)] == ["1:1", "16:9", "9:16", "2:1"]
    assert [by_name[f"0000{i}_t2v_s2"]["trained_ar"] for i in range(4)] == [True, True, True, False]
    assert (by_name["00003_t2v_s2"]["height"], by_name["00003_t2v_s2"]["width"]) == (16, 32)
    # each mode's shape and measures
    assert by_name["00000_t2i_s2"]["num_frames"] == 1 and by_name["00000_t2i_s2"]["scores"]["motion"] is None
    assert by_name["00000_loop_s2"]["num_frames"] == 8 and by_name["00000_loop_s2"]["metrics"]["ratio"] > 0
    assert by_name["00000_long_s2"]["num_frames"] == 33  # 4x the model's 9-frame clips
    assert by_name["00000_long_s2"]["metrics"]["quarter_frames"] == 9
    assert 0 < by_name["00000_i2v_s2"]["metrics"]["psnr_first"] < 100
    assert by_name["00000_extend_s2"]["metrics"]["psnr_kept"] == 100.0  # given frames are kept verbatim
    assert by_name["00000_connect_s2"]["num_frames"] == 9
    ceil = by_name["00000_t2v_s2"]["metrics"]["ceilings"]  # the prompt's render, and it through the random VAE
    assert ceil["ground_truth"]["color"] == 1.0 and ceil["vae_reconstruction"]["color"] < 1.0
    assert "ceilings" not in by_name["00000_t2v_s1"]["metrics"]  # steps-table runs repeat the same prompts
    s = res["summary"]
    assert s["steps_table"] == [{"steps": 1, "videos": 4, **{k: s["steps_table"][0][k] for k in ("overall", "seconds_per_video")}},
                                {"steps": 2, "videos": 4, **{k: s["steps_table"][1][k] for k in ("overall", "seconds_per_video")}}]
    assert all(_in_unit(r["overall"]) and r["seconds_per_video"] > 0 for r in s["steps_table"])
    assert s["t2v"]["groups"]["heldout"]["videos"] == 2 and s["t2v"]["groups"]["untrained_ar"]["videos"] == 1
    assert s["t2v"]["groups"]["seen"]["color"] < 0.95  # a random model does not draw the colors
    assert {t["key"] for t in s["targets"]} == {t[0] for t in TARGETS}
    assert all(t["status"] in ("PASS", "MISS") for t in s["targets"])  # every mode ran: no n/a
    c = s["t2v"]["ceilings"]
    assert c["videos"] == 4 and c["vae_reconstruction"]["overall"] < c["ground_truth"]["overall"]
    assert 0 < c["vae_psnr"] < 100


def test_report_plots_grid_and_rescore(run):
    _, out = run
    report = (out / "report.md").read_text()
    assert "| metric | value | target | status |" in report
    for _, label, *_ in TARGETS:
        assert label in report
    assert "MISS" in report and "## Sampling steps" in report and "grid.gif" in report
    assert "| ground truth through the VAE | 4 |" in report
    for name in ("grid.gif", "per_attribute.png", "steps.png"):
        assert (out / name).stat().st_size > 100
    from chronotope.bench import run_bench

    rescored = run_bench(out / "videos", out / "rescore")  # the sidecars carry the spec
    assert len(rescored["videos"]) == 32 and not rescored["errors"]


def test_rerun_resumes_without_regenerating(run):
    model, out = run
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "videos").iterdir()}
    os.remove(out / "videos" / "00002_loop_s2.json")  # an interrupted job: its sidecar never got written
    assert main(["bench", "generate-and-score", "--model", str(model), "--out", str(out), *ARGS]) == 0
    res = json.loads((out / "results.json").read_text())
    assert (res["generated"], res["skipped"]) == (1, 31)
    changed = {p.name for p, t in mtimes.items() if p.exists() and p.stat().st_mtime_ns != t}
    assert changed == {"00002_loop_s2.mp4", "00002_loop_s2.json"}
    assert (out / "videos" / "00002_loop_s2.json").is_file()


class GroundTruthPipe:
    """A "model" that returns the World render of the prompt's scene: the harness must score it ~1."""

    defaults = {"num_frames": 17, "fps": 8.0}

    def __call__(self, caption, mode=None, height=64, width=64, num_frames=17, seed=0, fps=8.0, **kw):
        scene = next((s for s in (sample_scene(seed), sample_scene(seed, include_heldout=True))
                      if detailed_caption(s, seed) == caption), sample_scene(seed))
        frames = render(scene, height, width, num_frames, fps).frames
        return PipelineOutput([frames], None, [caption], seed, fps, mode, None)


def test_ground_truth_passes_the_t2v_targets(tmp_path):
    cfg = BenchConfig(out=str(tmp_path), num=6, resolution="64px", num_frames=[17], modes=["t2v"], steps=1,
                      steps_table=[], heldout_fraction=0.34, untrained_aspect_ratios=["2:1"], progress=False)
    res = run_generate_and_score(GroundTruthPipe(), cfg)
    status = {t["key"]: t["status"] for t in res["summary"]["targets"]}
    for key in ("t2v_overall", "t2v_color", "t2v_shape", "t2v_motion", "heldout_overall", "untrained_ar"):
        assert status[key] == "PASS", (key, res["summary"]["targets"])
    assert status["loop_closure"] == "n/a"  # modes not run are not claimed
    c = res["summary"]["t2v"]["ceilings"]  # a pipeline without a VAE: ground truth only
    assert c["ground_truth"]["overall"] == res["summary"]["t2v"]["groups"]["all"]["overall"]
    report = (tmp_path / "report.md").read_text()
    assert c["vae_psnr"] is None and "through the VAE" not in report
    # steps_table=[]: no empty steps section or plot
    assert "Sampling steps" not in report and "steps.png" not in report and not (tmp_path / "steps.png").exists()


class ShiftRecordingPipe(GroundTruthPipe):
    """Records the shift-rule scale the pipeline defaults hold when each video is made."""

    def __init__(self):
        self.defaults = {"num_frames": 17, "fps": 8.0, "time_shift": 3.0}
        self.seen = []

    def with_defaults(self, **changes) -> "ShiftRecordingPipe":
        other = ShiftRecordingPipe()
        other.defaults, other.seen = {**self.defaults, **changes}, self.seen
        return other

    def __call__(self, caption, **kw):
        self.seen.append(self.defaults["time_shift"])
        return super().__call__(caption, **kw)


def test_time_shift_override_reaches_every_video_and_its_sidecar(tmp_path):
    cfg = BenchConfig(out=str(tmp_path), num=2, num_frames=[17], modes=["t2v"], steps=1, steps_table=[],
                      untrained_aspect_ratios=[], progress=False)
    pipe = ShiftRecordingPipe()
    res = run_generate_and_score(pipe, cfg)
    assert res["config"]["time_shift_used"] == 3.0 and set(pipe.seen) == {3.0}  # default: the model's own
    cfg.time_shift = 1.5
    pipe = ShiftRecordingPipe()
    res = run_generate_and_score(pipe, cfg)
    assert res["generated"] == 2 and res["skipped"] == 0  # videos made with another shift are not reused
    assert res["config"]["time_shift_used"] == 1.5 and set(pipe.seen) == {1.5}
    assert pipe.defaults["time_shift"] == 3.0  # the caller's pipeline is left as it came
    side = json.loads((tmp_path / "videos" / "00000_t2v_s1.json").read_text())
    assert side["job"]["time_shift"] == 1.5


def test_plan_prompts_heldout_share_seeds_and_captions():
    cfg = BenchConfig(out="unused", num=20, heldout_fraction=0.15)
    prompts = plan_prompts(cfg)
    assert sum(p.heldout for p in prompts) == 3
    assert all(p.heldout == is_heldout(p.spec) for p in prompts)
    assert len({p.scene_seed for p in prompts}) == 20 and min(p.scene_seed for p in prompts) >= 10_000_000
    assert prompts == plan_prompts(cfg)  # deterministic
    p = prompts[0]
    assert p.caption == detailed_caption(sample_scene(p.scene_seed, include_heldout=p.heldout), p.scene_seed)
    assert not any(q.heldout for q in plan_prompts(BenchConfig(out="unused", num=20, heldout_fraction=0.0)))
    jobs = plan_jobs(BenchConfig(out="unused", num=3, modes=["t2v", "loop"], steps=20, steps_table=[5, 20],
                                 steps_table_prompts=2), plan_prompts(BenchConfig(out="unused", num=3)))
    assert sorted(j.name for j in jobs if j.mode == "t2v") == ["00000_t2v_s20", "00000_t2v_s5", "00001_t2v_s20",
                                                                "00001_t2v_s5", "00002_t2v_s20"]
    assert isinstance(jobs[0], Job) and len(jobs) == 3 + 3 + 2


def test_plan_prompts_with_a_composition_show_it_in_every_prompt():
    cfg = BenchConfig(out="unused", num=12, composition=("purple", "triangle"))
    prompts = plan_prompts(cfg)
    assert all(any((o["color"], o["shape"]) == ("purple", "triangle") for o in p.spec["objects"]) for p in prompts)
    assert all(p.heldout and is_heldout(p.spec) for p in prompts)  # a held-out composition
    for p in prompts:  # run_job re-draws each scene from (seed, heldout): the very scene that was planned
        assert sample_scene(p.scene_seed, include_heldout=p.heldout).spec == p.spec
    assert [p.scene_seed // 1000 for p in prompts] == [10_000 + i for i in range(12)]  # prompt i keeps its seed block
    seen = plan_prompts(BenchConfig(out="unused", num=12, composition=("red", "circle")))
    assert all(any((o["color"], o["shape"]) == ("red", "circle") for o in p.spec["objects"]) for p in seen)
    assert not any(p.heldout for p in seen)


@pytest.mark.parametrize("kwargs", [dict(modes=["t2v", "dance"]), dict(num_frames=[8]), dict(num_frames=[5]),
                                    dict(heldout_fraction=1.5), dict(num=0), dict(steps_table=[0]),
                                    dict(aspect_ratios=["wide"]), dict(time_shift=0.0),
                                    dict(composition=("violet", "triangle")), dict(composition=("purple", "star"))])
def test_bad_flags_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        BenchConfig(out="unused", **kwargs).check()  # 5 frames: too short for connect's two given clips


def test_psnr_and_seam_ratio():
    a = np.zeros((2, 8, 8, 3), np.uint8)
    assert psnr(a, a) == 100.0
    assert psnr(a, a + 1) == pytest.approx(10 * np.log10(255**2), abs=1e-9)  # mse 1
    ramp = np.repeat(np.arange(0, 100, 10, dtype=np.uint8)[:, None, None, None], 4, axis=1).repeat(4, 2).repeat(3, 3)
    assert seam_ratio(ramp, [5]) == pytest.approx(1.0)
    jump = ramp.copy()
    jump[5:] += 50
    assert seam_ratio(jump, [5]) == pytest.approx(6.0)  # a 60-level step against 10-level ones
    with pytest.raises(ValueError):
        psnr(a, a[:1])


def test_every_benched_mode_is_a_mode():
    from chronotope.request import MODES

    assert set(BENCH) == set(MODES) - {"edit"}  # edit needs a user's video to edit


def test_targets_pass_and_miss_on_synthetic_records():
    cfg = BenchConfig(out="unused", modes=["t2v", "loop"], steps=20, steps_table=[])
    perfect = {k: 1.0 for k in ("overall", "color", "shape", "size", "motion", "count", "background")}
    base = dict(steps=20, heldout=False, trained_ar=True, index=0, seconds=1.0, metrics={})
    records = [{**base, "mode": "t2v", "scores": perfect},
               {**base, "mode": "t2v", "trained_ar": False, "heldout": True, "scores": {**perfect, "overall": 0.5}},
               {**base, "mode": "loop", "scores": perfect, "metrics": {"ratio": 2.0}}]
    status = {t["key"]: t["status"] for t in aggregate(records, cfg)["targets"]}
    assert status["t2v_overall"] == status["t2v_color"] == "PASS"
    assert status["untrained_ar"] == status["heldout_overall"] == "MISS"  # 0.5 / 1.0 < 0.8; 0.5 < 0.75
    assert status["loop_closure"] == "MISS" and status["i2v_psnr"] == "n/a"


def test_compare_pairs_twins_and_recomputes_targets_on_shared_prompts(run, tmp_path, capsys):
    from chronotope.bench.compare import compare_runs, load_run

    _, out = run
    base = load_run(out)
    same = compare_runs(base, base)["modes"]["t2v"]  # a run against itself: 4 pairs, no change
    t2v = [v["scores"]["overall"] for v in base["videos"] if v["mode"] == "t2v" and v["steps"] == 2]
    assert same["pairs"] == 4 and same["base"] == same["new"] == pytest.approx(np.mean(t2v))
    assert same["change"] == 0.0 and same["better"] == same["worse"] == 0
    # a candidate run on the first 3 prompts only, each t2v overall 0.1 higher
    new = json.loads(json.dumps(base))
    new["videos"] = [v for v in new["videos"] if v["index"] < 3]
    for v in new["videos"]:
        if v["mode"] == "t2v":
            v["scores"]["overall"] += 0.1
    result = compare_runs(base, new)
    assert result["prompts"] == 3
    assert result["modes"]["t2v"]["pairs"] == 3 and result["modes"]["t2v"]["better"] == 3
    assert result["modes"]["t2v"]["change"] == pytest.approx(0.1)
    assert result["modes"]["i2v"]["change"] == 0.0
    shared = [v for v in base["videos"] if v["index"] < 3 and v["mode"] == "t2v" and v["steps"] == 2]
    seen = [v["scores"]["overall"] for v in shared if not v["heldout"]]
    target = next(t for t in result["targets"] if t["key"] == "t2v_overall")
    if seen:  # the base side of a target is recomputed on the 3 shared prompts, not on all 4
        assert target["base"] == pytest.approx(np.mean(seen)) and target["value"] == pytest.approx(np.mean(seen) + 0.1)
    assert result["other_size"] == 0
    resized = json.loads(json.dumps(new))  # prompt 0 made at another size: no longer its twin unless any_size
    for v in resized["videos"]:
        if v["index"] == 0:
            v["height"] *= 2
    assert compare_runs(base, resized)["modes"]["t2v"]["pairs"] == 2
    assert compare_runs(base, resized)["other_size"] == len([v for v in resized["videos"] if v["index"] == 0])
    assert compare_runs(base, resized, any_size=True)["modes"]["t2v"]["pairs"] == 3
    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "results.json").write_text(json.dumps(new))
    assert main(["bench", "compare", str(out), str(tmp_path / "new"), "--json", str(tmp_path / "cmp.json")]) == 0
    assert "| t2v | 3 |" in capsys.readouterr().out
    assert json.loads((tmp_path / "cmp.json").read_text())["modes"]["t2v"]["better"] == 3


def test_compare_refuses_runs_of_other_prompts_or_files(run, tmp_path, capsys):
    from chronotope.bench.compare import compare_runs, load_run

    _, out = run
    base = load_run(out)
    other = json.loads(json.dumps(base))
    other["config"]["seed"] += 1
    with pytest.raises(ValueError, match="differ in seed"):
        compare_runs(base, other)
    older = json.loads(json.dumps(base))
    del older["config"]["scorer"]  # a run from before scorer versions: scorer 1
    with pytest.raises(ValueError, match="scorer 1 and 2"):
        compare_runs(older, base)
    (tmp_path / "x.json").write_text(json.dumps({"videos": 3}))
    with pytest.raises(ValueError, match="not a generate-and-score results.json"):
        load_run(tmp_path / "x.json")
    assert main(["bench", "compare", str(out), str(tmp_path / "missing")]) == 2
    assert "no generate-and-score results" in capsys.readouterr().err

