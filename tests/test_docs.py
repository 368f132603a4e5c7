"""The documentation the code cites: every section of docs/methods.md named in the code,
the tests or the docs is a heading of that page, and nothing cites the METHODS.md that the
repository does not hold."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "methods.md"


def _sources() -> list[Path]:
    code = [p for d in ("bench", "baselines", "methods", "tests") for p in (ROOT / d).rglob("*.py")]
    return sorted(code) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_cited_section_of_the_methods_page_exists():
    text = PAGE.read_text()
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}
    cited = {(str(p.relative_to(ROOT)), a) for p in _sources()
             for a in re.findall(r"methods\.md#([\w-]+)", p.read_text())}
    assert len(cited) >= 5
    assert {(p, a) for p, a in cited if a not in anchors} == set()
    own = set(re.findall(r"\]\(#([\w-]+)\)", text))  # the page's table of contents
    assert own and own <= anchors, own - anchors


def test_nothing_cites_the_methods_file_the_repository_does_not_hold():
    assert not (ROOT / "METHODS.md").exists()
    stale = [str(p.relative_to(ROOT)) for p in _sources()
             if p != Path(__file__).resolve() and "METHODS.md" in p.read_text()]
    assert stale == []
