"""The documentation the code cites: every section of docs/methods.md named in the code,
the tests or the docs is a heading of that page, nothing cites the METHODS.md that the
repository does not hold, every link of the README and docs/ resolves, the README's test
command is what CI runs, and docs/cli.md is what the command-line parser says."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "methods.md"


def _sources() -> list[Path]:
    code = [p for d in ("bench", "baselines", "methods", "tests") for p in (ROOT / d).rglob("*.py")]
    return sorted(code) + sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]


def _pages() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _prose(text: str) -> str:
    """The text outside fenced code blocks (whose ``# comments`` are no headings)."""
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def _anchors(page: Path) -> set[str]:
    return {_anchor(h) for h in re.findall(r"^#+ (.+)$", _prose(page.read_text()), re.M)}


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


def test_every_link_of_the_readme_and_the_docs_resolves():
    broken = []
    for page in _pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page.read_text())):
            if re.match(r"[a-z]+:", target):
                continue  # a web address
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert broken == []


def test_every_docs_page_is_in_the_index():
    index = (ROOT / "docs" / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")} - {"README.md"}
    assert {p for p in pages if f"]({p})" not in index} == set()


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in (ROOT / "README.md").read_text()


def test_the_cli_reference_is_current():
    from bench.cli_reference import COMMAND, markdown
    stale = (ROOT / "docs" / "cli.md").read_text() != markdown()
    assert not stale, f"docs/cli.md is stale: run .venv/bin/{COMMAND}"


def test_the_readme_plugin_passes_check_method():
    from bench.testing import check_method
    code = re.search(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    summary = check_method(namespace["GridRandom"], {"trials": 4})
    assert summary["trials"] == 4 and summary["replayed"] == 4
