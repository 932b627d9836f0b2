"""MkDocs hook: links from a page to a repository file outside ``docs/`` work in the site too.

The pages are also read on GitHub, where ``[results](../benchmarks/results/streaming_memory.md)``
in ``docs/data.md`` opens the file. MkDocs only knows the files under ``docs/``, so in the site
such a link would be broken. This hook copies each linked repository file into the site under
``repo/`` (a Markdown file becomes a page, whose own links are followed the same way; anything
else is served as it is) and points the link there. A link to a file that does not exist is left
alone, so ``mkdocs build --strict`` still reports it.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files, InclusionLevel

PREFIX = "repo"
# Inline links and images, [text](target) / ![alt](target "title"), and reference definitions, [id]: target.
_LINK = re.compile(r"(?P<head>\]\()(?P<target>[^)\s#]+)(?P<tail>[^)]*\))|(?P<rhead>^\s*\[[^\]]+\]:\s*)(?P<rtarget>[^\s#]+)", re.M)


def _dirs(config: Any) -> tuple[Path, Path]:
    # abspath, not resolve(): a symlinked folder stays where it is linked
    return Path(os.path.abspath(config.docs_dir)), Path(os.path.abspath(config.config_file_path)).parent


def _site_uri(path: Path, docs_dir: Path, root: Path) -> str:
    """Where a file of the checkout is in the site: as it is under docs/, under repo/ otherwise."""
    if path.is_relative_to(docs_dir):
        return path.relative_to(docs_dir).as_posix()
    return f"{PREFIX}/{path.relative_to(root).as_posix()}"


def _rewrite(markdown: str, source: Path, uri: str, docs_dir: Path, root: Path) -> tuple[str, set[Path]]:
    """``markdown`` (of the file ``source``, at ``uri`` in the site) with its links pointed at the site's copies.

    Also returns the files outside ``docs_dir`` that it links to.
    """
    outside: set[Path] = set()

    def replace(m: re.Match) -> str:
        target = m["target"] or m["rtarget"]
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^/", target):
            return m[0]  # a URL or an absolute path
        path = Path(os.path.abspath(source.parent / target))
        if not path.is_relative_to(root) or not path.is_file():
            return m[0]  # left for mkdocs to report if it is broken
        if not path.is_relative_to(docs_dir):
            outside.add(path)
        new = posixpath.relpath(_site_uri(path, docs_dir, root), posixpath.dirname(uri) or ".")
        return f"{m['head']}{new}{m['tail']}" if m["target"] else f"{m['rhead']}{new}"

    return _LINK.sub(replace, markdown), outside


def on_files(files: Files, config: Any, **kwargs: Any) -> Files:
    docs_dir, root = _dirs(config)
    todo = [(Path(f.abs_src_path), f.src_uri) for f in files.documentation_pages() if f.abs_src_path]
    added: set[Path] = set()
    while todo:
        source, uri = todo.pop()
        for path in _rewrite(source.read_text(encoding="utf-8"), source, uri, docs_dir, root)[1] - added:
            added.add(path)
            site_uri = _site_uri(path, docs_dir, root)
            files.append(File.generated(config, site_uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV))
            if path.suffix == ".md":
                todo.append((path, site_uri))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, **kwargs: Any) -> str:
    if page.file.abs_src_path is None:
        return markdown
    docs_dir, root = _dirs(config)
    return _rewrite(markdown, Path(page.file.abs_src_path), page.file.src_uri, docs_dir, root)[0]
