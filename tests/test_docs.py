"""The API reference (mkdocs.yml, docs/api/*.md) builds with ``mkdocs build --strict`` and covers the public API.

Strict mode turns every warning into a failure: a docstring parameter that is not in the signature, a broken link
between pages, an object rendered on two pages. The docs tools come with the ``dev`` extra (``make test``) and the
``docs`` extra; without them the tests are skipped.
"""

import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# page (docs/api/<page>.md) -> module whose public API it documents
PAGES = {name: f"simdl.{name}" for name in ("algorithms", "topologies", "mixing", "tasks", "data", "models",
                                            "faults", "participation", "systems", "recipes", "memory", "compression",
                                            "runtime")}
TOP_LEVEL = ("simulate", "simulate_batch", "Algorithm", "Context", "Task", "Topology", "Faults")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    pytest.importorskip("mkdocstrings_handlers.python")
    pytest.importorskip("material")
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "WARNING" not in proc.stderr, proc.stderr
    return out


def _ids(site: Path, page: str) -> set[str]:
    html = (site / "api" / page / "index.html").read_text(encoding="utf-8")
    return set(re.findall(r'id="(simdl[\w.]*)"', html))


def _documented(ids: set[str], name: str) -> bool:
    return any(i.rsplit(".", 1)[-1] == name for i in ids)


def _public_api(module_name: str) -> list[str]:
    """Functions and classes a page must show: ``__all__``'s, else the module's own documented public ones."""
    mod = importlib.import_module(module_name)
    names = getattr(mod, "__all__", None)
    if names is None:
        names = [n for n, v in vars(mod).items()
                 if not n.startswith("_") and getattr(v, "__module__", None) == mod.__name__]
    out = []
    for n in names:
        obj = getattr(mod, n)
        if (inspect.isfunction(obj) or inspect.isclass(obj)) and inspect.getdoc(obj):
            out.append(n)
    return out


def test_docs_build_strict(site):
    assert (site / "index.html").is_file()
    for page in ("algorithms", "configs", "multi_device", "api/simdl", *(f"api/{p}" for p in PAGES)):
        assert (site / page / "index.html").is_file(), page


def test_top_level_page(site):
    ids = _ids(site, "simdl")
    missing = [n for n in dict.fromkeys([*TOP_LEVEL, *_public_api("simdl")]) if not _documented(ids, n)]
    assert not missing, f"docs/api/simdl.md does not render {missing}"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_page_covers_public_api(site, page):
    ids = _ids(site, page)
    missing = [n for n in _public_api(PAGES[page]) if not _documented(ids, n)]
    assert not missing, f"docs/api/{page}.md does not render {missing}"


def test_every_algorithm_factory_documented(site):
    from simdl.algorithms import ALGORITHMS

    ids = _ids(site, "algorithms")
    assert [n for n in ALGORITHMS if not _documented(ids, n)] == []


def test_rst_roles_render_as_code(site):
    """Docstrings' :func:`x` / :class:`~a.B` roles render as code spans, not as raw role text."""
    raw = []
    for html in site.rglob("*.html"):
        raw += [f"{html.relative_to(site)}: {m}" for m in
                re.findall(r":(?:func|class|data|mod|meth|attr|exc):<code>[^<]*</code>", html.read_text("utf-8"))]
    assert not raw, raw[:5]
    page = (site / "api" / "simdl" / "index.html").read_text(encoding="utf-8")
    assert "<code>simulate_batch</code>" in page  # from :func:`simulate_batch` in a docstring


def test_role_hook_keeps_the_last_name_after_a_tilde():
    import importlib.util

    spec = importlib.util.spec_from_file_location("mkdocs_hooks", ROOT / "mkdocs_hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    html = "see :class:<code>~simdl.data.dataset.Dataset</code> and :func:<code>simdl.simulate</code>"
    assert hooks.on_page_content(html) == "see <code>Dataset</code> and <code>simdl.simulate</code>"
