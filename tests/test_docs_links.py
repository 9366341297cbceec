"""The documentation holds together: every relative link in README.md and docs/*.md points to a file
or folder that exists, every #fragment to a heading of its target (GitHub's anchors), and the README
stays one page."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README_MAX_LINES = 150

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
INLINE_CODE = re.compile(r"(`+)(.+?)\1")
# [text](target) and ![alt](target); the target may be followed by a "title"
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:")   # http:, https:, mailto:, ...


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


def _lines_outside_code(text: str):
    """(line number, line) for every line outside fenced code blocks."""
    fenced = False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield n, line


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text, lowercased, punctuation removed except
    hyphens, spaces and underscores, each space a hyphen."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link's text only
    text = re.sub(r"<[^>]+>", "", text)                            # inline HTML tags
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor GitHub gives the headings of a Markdown file (a repeated heading gets -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in _lines_outside_code(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path):
    """(line number, target) of every Markdown link outside code."""
    for n, line in _lines_outside_code(path.read_text(encoding="utf-8")):
        for m in LINK.finditer(INLINE_CODE.sub("", line)):
            yield n, m.group(1)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    problems = []
    for n, target in links(path):
        if EXTERNAL.match(target):
            continue
        file_part, _, fragment = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(root)}:{n}: ({target})"
        if not dest.exists():
            problems.append(f"{where} no such file or folder {dest}")
            continue
        if fragment:
            if dest.is_dir() or dest.suffix.lower() != ".md":
                problems.append(f"{where} a #fragment needs a Markdown file")
            elif fragment not in anchors(dest):
                problems.append(f"{where} no heading with anchor #{fragment} in {dest.relative_to(root)}")
    return problems


def test_slug_follows_githubs_rule():
    assert slug("Engines: Detectron2 or portable torchvision") == "engines-detectron2-or-portable-torchvision"
    assert slug("Each method at its own learning rate (`benchmarks/lr_sweep.py`)") == \
        "each-method-at-its-own-learning-rate-benchmarkslr_sweeppy"
    assert slug("SEED's central claim at small scale") == "seeds-central-claim-at-small-scale"
    assert slug("The demo (`make demo`)") == "the-demo-make-demo"


def test_repeated_headings_get_numbered_anchors(tmp_path):
    f = tmp_path / "a.md"
    f.write_text("# Results\n## Results\n```\n# not a heading\n```\n## Results\n", encoding="utf-8")
    assert anchors(f) == {"results", "results-1", "results-2"}


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "b.md").write_text("# Here\n", encoding="utf-8")
    f = tmp_path / "a.md"
    f.write_text("[ok](b.md#here) [gone](c.md) [bad](b.md#there) `[code](x.md)` [web](https://x.org/y)\n"
                 "```\n[fenced](nowhere.md)\n```\n", encoding="utf-8")
    problems = broken_links(f, root=tmp_path)
    assert len(problems) == 2 and "c.md" in problems[0] and "#there" in problems[1]


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path):
    problems = broken_links(path)
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_docs_exist_and_readme_is_one_page():
    assert len(doc_files()) > 1, "docs/*.md missing"
    n = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines; keep it to {README_MAX_LINES} and move the rest to docs/"
