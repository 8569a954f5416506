"""Where a benchmark's results go: ``<output>.json`` (the numbers) and ``<output>.md`` (the table), both atomic."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from ssmis.utils import atomic_write_text

__all__ = ["write_results"]


def write_results(results: dict[str, Any], output: Path, report: Callable[[dict[str, Any]], str]) -> str:
    """Write ``results`` to ``output`` (JSON) and ``report(results)`` beside it (``.md``); return the markdown."""
    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2), output)
    markdown = report(results)
    atomic_write_text(markdown, output.with_suffix(".md"))
    return markdown
