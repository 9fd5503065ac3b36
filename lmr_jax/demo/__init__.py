"""demo.py's web page: a session over a trained workdir (session.py), its pictures (views.py) and the
Gradio page (page.py)."""
