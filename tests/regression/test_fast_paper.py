"""The paper's templates render on the finished `fast` artifacts (Markdown only; rendering to HTML
and PDF is tested on a synthetic tree in ``tests/test_report.py``). Strict: a section whose
artifacts are missing, or a template that reads a metric the artifacts lack, fails here."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from paper import render  # noqa: E402


def test_fast_paper_renders_every_section(tmp_path):
    out = render.build("fast", build_dir=tmp_path, strict=True, to=(), log=lambda *a: None)
    qmd = out["qmd"].read_text()
    assert "Not yet run" not in qmd
    for heading in ("Phase 3: from 2 to 50 tools", "Phase 4: why selection fails",
                    "Real functions: the retrieval heads on BFCL"):
        assert heading in qmd
