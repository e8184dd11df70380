"""`chronotope serve`: every generation mode from one web page (Gradio Blocks) over one VideoPipeline.

The page only gathers values and shows results; forms.py turns the values into a request, studio.py runs it
(one at a time, into one output folder). Gradio is imported here only (the `web` extra), and its temporary
folder is pointed inside the output folder before the import, so uploads are written nowhere else; results
are served from where they are written (not copied), refused uploads are deleted at once, accepted ones after
a day or when the server stops. Errors show as a toast and beside Generate, where the user is looking.

    chronotope serve                       # the shipped model on http://127.0.0.1:7860
    chronotope serve --model DIR --port 8000 --out results/
"""

from __future__ import annotations

import html
import os
import sys
import traceback

from chronotope.serve.forms import ASPECT_RATIOS, FIELDS, FORM_MODES, LABELS, RESOLUTIONS, UPLOADS, number
from chronotope.serve.studio import Studio

STORYBOARD_EXAMPLE = ('[{"prompt": "a red circle moves left", "num_frames": 17},\n'
                      ' {"prompt": "the red circle bounces around", "num_frames": 17}]')


UPLOAD_MAX_AGE_S = 86400  # accepted uploads are deleted a day after they arrive (and all when the server stops)


def error_text(err: BaseException) -> str:
    """A user's error as the page shows it: one line, as the command line prints it."""
    return " ".join(str(err).split()) or type(err).__name__


def upload_path(value) -> str | None:
    """A File field's value as an event receives it unprocessed (Gradio's FileData: {"path": ..., ...}) -> the
    uploaded file's path. The events take their inputs unprocessed (preprocess=False) because gr.File's own
    processing leaves an empty tmp* file in the upload folder on every call (Gradio 6.31)."""
    return value.get("path") if isinstance(value, dict) else value


def build_app(studio: Studio):
    """The page: inputs on the left, the result (video, expanded prompt, sidecar, download) on the right, the
    gallery of this session's results below. Returns a gradio.Blocks (not launched)."""
    import gradio as gr

    # hourly, uploads older than a day are deleted; all of them when the server stops
    with gr.Blocks(title="Chronotope", delete_cache=(3600, UPLOAD_MAX_AGE_S)) as app:
        gr.Markdown("# Chronotope\nText to video in every mode: choose a mode (auto: from the inputs), "
                    "upload an image or videos for i2v, extend, edit, connect and long, or write a storyboard.")
        with gr.Row():
            with gr.Column(scale=1):
                f, buttons = _form(gr, studio)
            with gr.Column(scale=1):
                shown = _result(gr)
        # a poster (small still) per result, clicked to show that result above
        shown["gallery"] = gr.Gallery(label="Made since the app started (click one to show it)", columns=8,
                                      height=220, fit_columns=False, object_fit="contain", allow_preview=False,
                                      elem_id="gallery")
        _connect(gr, studio, f, buttons, shown)
    return app


def _form(gr, studio: Studio) -> tuple[dict, dict]:
    """The left column: every field of a request ({name: component}, FIELDS) and the buttons and status line
    ({"run", "expand", "status"}). Steps, guidance and sampler start at the model folder's defaults."""
    from chronotope.diffusion.samplers import SAMPLERS

    def optional(label: str, elem_id: str, placeholder: str = "model default"):
        """A number that may be left blank (the default); gr.Number cannot be blank, it sends 0."""
        return gr.Textbox(label=label, placeholder=placeholder, elem_id=elem_id, max_lines=1)

    steps, guidance, sampler = studio.pipe.sampling()  # the model folder's defaults (a few-step model: its own)
    samplers = [*SAMPLERS, *([sampler] if sampler not in SAMPLERS else [])]
    f: dict = {}
    f["prompt"] = gr.Textbox(label=LABELS["prompt"], lines=2, elem_id="prompt",
                             placeholder="a red circle moves left on a black background")
    with gr.Row():
        f["mode"] = gr.Dropdown(list(FORM_MODES), value="auto", label=LABELS["mode"], elem_id="mode")
        expand = gr.Button("Show expanded prompt", size="sm")
    with gr.Accordion("Image and videos (i2v, extend, edit, connect, long)", open=False):
        f["image"] = gr.File(label=LABELS["image"], type="filepath", elem_id="image", file_types=["image"])
        f["video"] = gr.File(label=LABELS["video"], type="filepath", elem_id="video", file_types=["video", "image"])
        f["video_end"] = gr.File(label=LABELS["video_end"] + " (connect)", type="filepath", elem_id="video_end",
                                 file_types=["video", "image"])
        with gr.Row():
            f["direction"] = gr.Radio(["forward", "backward"], value="forward", label="Direction (extend)")
            f["image_position"] = gr.Radio(["first", "last"], value="first", label="Image position (i2v)")
        f["strength"] = optional("Strength (edit: 0 keeps the video, 1 ignores it)", "strength", "0.7")
    with gr.Accordion("Storyboard (mode storyboard)", open=False):
        f["storyboard"] = gr.Textbox(label=LABELS["storyboard"], lines=4, placeholder=STORYBOARD_EXAMPLE,
                                     elem_id="storyboard")
    with gr.Accordion("Size and length", open=False):
        with gr.Row():
            f["resolution"] = gr.Dropdown(list(RESOLUTIONS), value=RESOLUTIONS[0], label=LABELS["resolution"],
                                          allow_custom_value=True)
            f["aspect_ratio"] = gr.Dropdown(list(ASPECT_RATIOS), value=ASPECT_RATIOS[0], label=LABELS["aspect_ratio"],
                                            allow_custom_value=True)
        with gr.Row():
            f["height"] = optional("Height", "height")
            f["width"] = optional("Width", "width")
        with gr.Row():
            f["num_frames"] = optional("Frames (4k+1)", "num_frames")
            f["gap_frames"] = optional("Gap frames (connect, 4m-1)", "gap_frames", "11")
            f["fps"] = optional(LABELS["fps"], "fps")
    with gr.Accordion("Sampling", open=True):
        with gr.Row():
            f["num_inference_steps"] = gr.Number(steps, label=LABELS["num_inference_steps"], precision=0,
                                                 elem_id="steps")
            f["guidance_scale"] = gr.Number(guidance, label=LABELS["guidance_scale"] + " (1 = off)", elem_id="guidance")
            f["seed"] = optional("Seed", "seed", "random")
            f["sampler"] = gr.Dropdown(samplers, value=sampler, label=LABELS["sampler"])
        f["negative_prompt"] = gr.Textbox(label=LABELS["negative_prompt"], lines=1)
        f["expand_prompt"] = gr.Checkbox(True, label="Expand the prompt (detailed caption, as trained)")
    run = gr.Button("Generate", variant="primary", elem_id="generate")
    status = gr.Markdown("", elem_id="status")  # beside Generate: errors show where the user looks
    return f, {"run": run, "expand": expand, "status": status}


def _result(gr) -> dict:
    """The right column: the result's video (or image, for one frame), expanded prompt, sidecar and download."""
    return {
        "video": gr.Video(label="Result", elem_id="result-video", interactive=False, height=360, autoplay=True,
                          loop=True),
        "image": gr.Image(label="Result (one frame)", elem_id="result-image", type="filepath", interactive=False,
                          visible=False, height=360),
        "expanded": gr.Textbox(label="Expanded prompt (what the model saw)", lines=3, elem_id="expanded",
                               interactive=False),
        "settings": gr.JSON(label="Settings (the sidecar)", elem_id="settings", max_height=240),
        "download": gr.File(label="Download", file_count="multiple", elem_id="download", interactive=False),
    }


def _connect(gr, studio: Studio, f: dict, buttons: dict, shown: dict) -> None:
    """The page's events: Generate, each upload checked as it arrives, a gallery click, Show expanded prompt."""
    from chronotope.request import spelled, user_errors
    from chronotope.text.expand import expand_prompt
    from chronotope.text.vocabulary import folder_vocabulary

    status, gallery = buttons["status"], shown["gallery"]
    result = [status] + [shown[k] for k in ("video", "image", "expanded", "settings", "download")]
    vocabulary = folder_vocabulary(studio.model)  # the language the model's prompts are expanded in

    def refused(text: str) -> str:
        """An error for the user: a toast (seen wherever the page is scrolled) and the line beside Generate."""
        gr.Warning(html.escape(text))
        return "**Error:** " + html.escape(text)

    def show_result(result, status: str) -> tuple:
        """A result in the right column: (status, video, image, expanded, settings, download)."""
        one_frame = result.path.endswith(".png")
        notes = "".join(f"\n\n{n}" for n in result.record.get("notes") or [])
        return (f"{status}{notes}",
                gr.update(value=None if one_frame else result.path, visible=not one_frame),
                gr.update(value=result.path if one_frame else None, visible=one_frame),
                result.expanded_prompt, result.record, [result.path, result.sidecar])

    def generate(data: dict, progress=gr.Progress(track_tqdm=True)):
        """Form values {component: value}, unprocessed -> (status, video, image, expanded, settings, download,
        gallery). `progress` must be a positional parameter for Gradio to find it; it follows the sampler's tqdm
        bar."""
        keep = (gr.update(),) * 5
        values = {name: data[f[name]] for name in FIELDS}
        values.update({name: upload_path(values[name]) for name in UPLOADS})
        try:
            with spelled(LABELS):
                result = studio.generate(values)
        except user_errors() as err:
            return (refused(error_text(err)), *keep, studio.gallery())
        except Exception:  # a bug: the traceback goes to the server's log, never to the page
            traceback.print_exc()
            return (refused("the server failed on this request (details in its log)"), *keep, studio.gallery())
        return (*show_result(result, f"Done: {os.path.basename(result.path)}"), studio.gallery())

    def check(value, what):
        """An upload checked as soon as it arrives: the error shows before anything is generated, and the
        refused file is deleted and cleared from its field. -> (status, field)."""
        path = upload_path(value)
        try:
            with spelled(LABELS):
                studio.check_upload(path, what)
        except user_errors() as err:
            studio.discard_upload(path)
            return refused(error_text(err)), None
        return (f"{os.path.basename(path)}: ok" if path else ""), gr.update()

    def show(evt: gr.SelectData):
        """A gallery thumbnail clicked -> that result in the right column."""
        try:
            result = studio.find((evt.value or {}).get("caption") or "")
        except KeyError:
            return (gr.update(),) * 6
        return show_result(result, os.path.basename(result.path))

    # Gradio passes the click by this type hint, which it resolves in the module (gr is imported in here)
    show.__annotations__["evt"] = gr.SelectData

    def show_expanded(prompt, seed, enabled):
        seed = number(seed)  # the expansion a blank seed gets is drawn with the random seed at run time
        seed = seed if isinstance(seed, int) and seed >= 0 else 0
        return expand_prompt(prompt or "", seed, None if enabled else False, vocabulary=vocabulary)

    # one progress bar, on the result (the others would draw it again on every output)
    buttons["run"].click(generate, {f[name] for name in FIELDS}, result + [gallery], api_name="generate",
                         concurrency_id="model", concurrency_limit=1, preprocess=False,
                         show_progress_on=[shown["video"], shown["image"]])
    for what in UPLOADS:
        f[what].upload(lambda p, w=what: check(p, w), f[what], [status, f[what]], preprocess=False,
                       show_progress="hidden")
    gallery.select(show, None, result, show_progress="hidden")
    buttons["expand"].click(show_expanded, [f["prompt"], f["seed"], f["expand_prompt"]], shown["expanded"])


def serve(model: str | None, host: str = "127.0.0.1", port: int = 7860, out: str = "chronotope-serve",
          max_upload_mb: float = 50.0, max_queue: int = 16) -> None:
    """Load the model, then serve the page until interrupted. Uploads and results stay inside `out`. Requests
    run one at a time; `max_queue` more may wait, and beyond that a request is answered "Queue is full" at once
    (HTTP 503) instead of waiting without end."""
    from chronotope.pipeline import VideoPipeline, default_model_dir

    model = model or str(default_model_dir())
    studio = Studio(VideoPipeline.from_pretrained(model), model, out, max_upload_bytes=int(max_upload_mb * 2**20))
    # before gradio is imported: its upload cache and its copies of results go inside the output folder,
    # and it sends no analytics (the network is closed on most machines that run this)
    os.environ["GRADIO_TEMP_DIR"] = str(studio.out.uploads)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if "gradio" in sys.modules:  # it reads GRADIO_TEMP_DIR when imported
        raise RuntimeError("serve() must run before gradio is imported, so that uploads stay in the output folder")
    _ = studio.pipe.text_encoder  # loaded now, not on the first request (seconds for MiniLM)
    import gradio as gr

    gr.set_static_paths([str(studio.out.root)])  # results and posters served where they are, not copied to uploads/
    app = build_app(studio)
    app.queue(default_concurrency_limit=1, api_open=False, max_size=max_queue)
    print(f"chronotope serve: model {model}; results in {studio.out.root}", flush=True)
    app.launch(server_name=host, server_port=port, share=False, allowed_paths=[str(studio.out.root)],
               max_file_size=studio.max_upload_bytes, show_error=False, inbrowser=False)
