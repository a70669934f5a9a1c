"""Docs that cannot rot: every relative link and #anchor in README.md,
CHANGELOG.md and docs/ resolves, and every Python example marked runnable runs.

An example is marked by an HTML comment on the line before its fence:
``<!-- runnable -->`` runs on CPU here (the blocks of one page in order, in one
namespace); ``<!-- gpu -->`` needs CUDA and runs only where it is available.
Unmarked blocks are sketches (they need a real pipeline or model)."""

import pathlib
import re
import unicodedata

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGES = sorted(
    [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "csrc/cuda/README.md", *(ROOT / "docs").rglob("*.md")]
)
FENCE = re.compile(r"^(```|~~~)")
MARKER = re.compile(r"^<!--\s*(runnable|gpu)\s*-->\s*$")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
# Packages an example may need that are optional for diffaccel itself: without
# one, its page's examples are skipped with the reason (make test installs them).
OPTIONAL = {"diffusers", "torchsde", "k_diffusion", "matplotlib"}


def _blocks(text: str):
    """(marker or None, info string, code, first line number) for each fenced block,
    and the text outside the blocks."""
    blocks, prose, lines = [], [], text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            prose.append(lines[i])
            i += 1
            continue
        fence, info, start = match.group(1), lines[i][3:].strip(), i
        previous = next((line for line in reversed(lines[:start]) if line.strip()), "")
        marker = MARKER.match(previous)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        i += 1
        blocks.append((marker.group(1) if marker else None, info, "\n".join(body) + "\n", start + 2))
    return blocks, "\n".join(prose)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: its text lowercased, every character
    other than a letter, digit, underscore, hyphen or space dropped, spaces
    made hyphens (inline code counts by its text, links by their label)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).replace("`", "").lower()
    kept = "".join(c for c in text if c in "-_ " or unicodedata.category(c)[0] in "LN")
    return kept.replace(" ", "-")


def anchors_of(page: pathlib.Path):
    """Every heading anchor of a page, with GitHub's -1, -2 suffixes for repeats."""
    _, prose = _blocks(page.read_text())
    seen, anchors = {}, set()
    for line in prose.splitlines():
        match = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if match:
            base = github_anchor(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            anchors.add(base if count == 0 else f"{base}-{count}")
    return anchors


def _links(page: pathlib.Path):
    _, prose = _blocks(page.read_text())
    return [m.group(1) for m in LINK.finditer(re.sub(r"`[^`\n]*`", "", prose))]  # not inside inline code


def test_there_are_docs_to_check():
    names = {p.relative_to(ROOT).as_posix() for p in PAGES}
    assert {"README.md", "CHANGELOG.md", "docs/diffusers.md", "docs/ops.md"} <= names
    assert all(_links(p) or p.name == "CHANGELOG.md" for p in PAGES)


def test_anchor_rules_match_githubs():
    assert github_anchor("`ei_step`: one sampler update, fused") == "ei_step-one-sampler-update-fused"
    assert github_anchor("The loop: `diffaccel.sample`") == "the-loop-diffaccelsample"
    assert github_anchor("What has run on a GPU, and what has not") == "what-has-run-on-a-gpu-and-what-has-not"
    assert (
        github_anchor("`multistep_combine`: `y = sum_j coeffs[..., j] * tensors[j]`")
        == "multistep_combine-y--sum_j-coeffs-j--tensorsj"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_and_anchors_resolve(page):
    broken = []
    for target in _links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no file {resolved.relative_to(ROOT) if ROOT in resolved.parents else resolved}")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors_of(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: broken links:\n" + "\n".join(broken)


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_marker_marks_a_python_block(page):
    text = page.read_text()
    blocks, _ = _blocks(text)
    marked = [b for b in blocks if b[0]]
    assert all(info.split()[:1] == ["python"] for _, info, _, _ in marked), page
    markers = sum(1 for line in text.splitlines() if MARKER.match(line))
    assert markers == len(marked), f"{page.name}: a runnable / gpu marker not right before a ```python fence"


def _run(page: pathlib.Path, kind: str) -> int:
    blocks = [(code, line) for marker, _, code, line in _blocks(page.read_text())[0] if marker == kind]
    namespace = {"__name__": f"docs_example_{page.stem}"}
    for code, line in blocks:
        try:
            # As a user runs them: the host as the default device (the suite's GPU
            # run makes CUDA the default, under which stock diffusers cannot run).
            with torch.device("cpu"):
                exec(compile(code, f"{page.relative_to(ROOT)}:{line}", "exec"), namespace)
        except ModuleNotFoundError as error:
            if error.name and error.name.split(".")[0] in OPTIONAL:
                pytest.skip(f"{page.name}'s examples need {error.name}, not installed here")
            raise
    return len(blocks)


RUNNABLE = [p for p in PAGES if any(b[0] == "runnable" for b in _blocks(p.read_text())[0])]
GPU = [p for p in PAGES if any(b[0] == "gpu" for b in _blocks(p.read_text())[0])]


@pytest.mark.filterwarnings("ignore::FutureWarning")  # diffusers' deprecation notices
@pytest.mark.parametrize("page", RUNNABLE, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_runnable_examples_run(page):
    assert _run(page, "runnable") > 0


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the example needs CUDA")
@pytest.mark.parametrize("page", GPU, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_gpu_examples_run(page):
    assert _run(page, "gpu") > 0


def test_readme_stays_short_and_shows_both_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    assert "make demo" in readme and "make test" in readme
