"""The web app (`chronotope serve`): every generation mode from one page, over one VideoPipeline.

    forms.py   the form's values -> one generation request; uploads checked as the command line reads them
    studio.py  the session: one pipeline run one request at a time, one output folder, this session's results
    app.py     the Gradio page and serve() (Gradio is the optional `web` extra, imported there only)
"""
