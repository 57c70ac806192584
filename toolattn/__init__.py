"""toolattn: how language models choose tools.

Library layer only: models, tools, prompt sets, prompt formatting with token spans,
the tool-choice engine, attention capture, statistics and artifacts. Experiment logic
lives in ``analyses/``; the paper in ``paper/``.
"""

__version__ = "0.1.0"
