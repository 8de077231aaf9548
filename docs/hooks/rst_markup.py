"""MkDocs hook: render the reStructuredText bits of the docstrings.

The docstrings use a few Sphinx constructs that mkdocstrings passes through as
Markdown, where they would show up literally:

* roles such as ``:func:`name``` / ``:class:`~pkg.Name``` become inline code,
  linked through mkdocs-autorefs when ``name`` is a documented object (an
  ``optional`` reference: unresolved names stay plain code, without a warning);
* ``:math:`...``` becomes inline math and a ``.. math::`` paragraph followed by
  an indented block becomes display math (both for pymdownx.arithmatex's
  MathJax set-up);
* a paragraph ending in ``::`` (a reST literal-block marker) ends in ``:``.

Only pages that hold rendered API objects are touched.
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj|py:\w+):<code>(~?)\.?([^<]*)</code>")
_INLINE_MATH = re.compile(r":math:<code>([^<]*)</code>")
_DISPLAY_MATH = re.compile(r"<p>\.\. math::</p>\s*<pre><code>(.*?)</code></pre>", re.DOTALL)
_LITERAL_MARKER = re.compile(r"(\S)::</p>")


def _role(match: re.Match) -> str:
    short, identifier = match.group(1), match.group(2).removesuffix("()")
    title = identifier.rsplit(".", 1)[-1] if short else identifier
    return (
        f'<autoref identifier="{html.escape(identifier, quote=True)}" optional>'
        f"<code>{title}</code></autoref>"
    )


def on_page_content(content: str, **_: Any) -> str:
    if 'class="doc ' not in content and "doc-object" not in content:
        return content
    content = _DISPLAY_MATH.sub(
        lambda m: f'<div class="arithmatex">\\[{m.group(1).strip()}\\]</div>', content
    )
    content = _INLINE_MATH.sub(
        lambda m: f'<span class="arithmatex">\\({m.group(1)}\\)</span>', content
    )
    content = _ROLE.sub(_role, content)
    return _LITERAL_MARKER.sub(r"\1:</p>", content)
