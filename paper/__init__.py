"""The paper: Jinja2 templates rendered from artifacts into Markdown, HTML and PDF.

``python -m paper.render --profile fast`` rebuilds it; see ``paper/render.py``.
"""
