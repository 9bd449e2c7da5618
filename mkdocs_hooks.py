"""mkdocs hook: the docstrings' reStructuredText roles (:func:`x`, :class:`~a.b.C`, :data:`X`, ...) render as code.

The docstrings are Google style with Sphinx-style cross-reference roles; mkdocstrings renders them as Markdown,
where a role shows up as ``:func:`` in front of a code span. This hook drops the role (and a leading ``~``, keeping
only the last dotted name, as Sphinx displays it) from each page's HTML.
"""

import re

_ROLE = re.compile(r":(?:py:)?(?:func|class|data|mod|meth|attr|exc|obj|const|ref|term):<code>~?([^<]*)</code>")


def _display(match: re.Match) -> str:
    target = match.group(1)
    shown = target.rsplit(".", 1)[-1] if match.group(0).split("<code>", 1)[1].startswith("~") else target
    return f"<code>{shown}</code>"


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub(_display, html)
