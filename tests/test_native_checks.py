"""The argument-check convention of csrc/ (csrc/common/checks.h), held by reading the sources.

One error type per kind of mistake: PP_CHECK_VALUE (ValueError), PP_CHECK_TYPE (TypeError),
PP_CHECK_INDEX (IndexError); a plain TORCH_CHECK (RuntimeError) only where no argument can be at
fault. Each family's CPU, CUDA and Meta implementations share one checks header, so they reject
the same calls with the same message (the behaviour is tested per op in tests/kernels/).
"""

from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parent.parent / "csrc"
SOURCES = sorted(p for p in CSRC.rglob("*") if p.suffix in (".cpp", ".h", ".cu", ".cuh"))
FAMILIES = sorted(p.name for p in CSRC.iterdir() if p.is_dir() and p.name != "common")
# Plain TORCH_CHECK is for these only: a failed CUDA launch, a dtype branch the checks make unreachable.
INTERNAL = ("CUDA launch failed", "unsupported dtype")


def _code_lines(path: Path):
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.lstrip().startswith("//"):
            yield n, line


@pytest.mark.parametrize("path", SOURCES, ids=[str(p.relative_to(CSRC)) for p in SOURCES])
def test_checks_use_the_convention(path):
    if path == CSRC / "common" / "checks.h":
        return
    for n, line in _code_lines(path):
        where = f"{path.relative_to(CSRC)}:{n}"
        for raw in ("TORCH_CHECK_VALUE(", "TORCH_CHECK_TYPE(", "TORCH_CHECK_INDEX("):
            assert raw not in line, f"{where}: use PP_CHECK_* from common/checks.h, not {raw[:-1]}"
        if "TORCH_CHECK(" in line:
            assert any(s in line for s in INTERNAL), \
                f"{where}: an argument check must be PP_CHECK_VALUE / _TYPE / _INDEX, not TORCH_CHECK"


@pytest.mark.parametrize("family", FAMILIES)
def test_every_implementation_uses_the_family_checks(family):
    header = f'#include "{family}/{family}_checks.h"'
    assert (CSRC / family / f"{family}_checks.h").is_file()
    impls = [CSRC / family / f"{family}_{kind}.cpp" for kind in ("cpu", "meta", "cuda")]
    for impl in impls:
        assert impl.is_file(), f"missing {impl.relative_to(CSRC)}"
        assert header in impl.read_text(), f"{impl.relative_to(CSRC)} does not include {header}"
    meta = impls[1].read_text()
    assert "TORCH_LIBRARY_IMPL(procpaint, Meta" in meta
    for impl in (impls[0], impls[2]):
        assert "TORCH_LIBRARY_IMPL(procpaint, Meta" not in impl.read_text(), \
            f"Meta implementations belong in {impls[1].relative_to(CSRC)}"


def test_every_macro_of_checks_h_is_used():
    text = (CSRC / "common" / "checks.h").read_text()
    macros = [ln.split()[1].split("(")[0] for ln in text.splitlines() if ln.startswith("#define")]
    assert macros
    used = "".join(p.read_text() for p in SOURCES if p.name != "checks.h")
    for m in macros:
        assert m + "(" in used, f"{m} is defined in common/checks.h but never used"
