"""World-bench: score how well a video obeys its World prompt (shared/DESIGN.md, "World-bench").

    from chronotope.bench import score_video, score_file, run_bench
    score_video(frames, spec)            # frames uint8 [T, H, W, 3] -> {"color": .., ..., "overall": ..}
    score_file("clip.mp4", prompt="a small red circle moves left on a black background")
    run_bench("generated/", "bench_out")  # -> bench_out/results.json, bench_out/report.md
"""

from chronotope.bench.camera import estimate_camera
from chronotope.bench.detect import Detections, detect
from chronotope.bench.motion import classify_motion
from chronotope.bench.run import report_markdown, run_bench, score_file, summarise
from chronotope.bench.score import ATTRIBUTES, check_spec, score_video

__all__ = ["ATTRIBUTES", "Detections", "check_spec", "classify_motion", "detect", "estimate_camera", "report_markdown",
           "run_bench", "score_file", "score_video", "summarise"]
