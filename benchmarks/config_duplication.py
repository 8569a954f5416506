"""How much of the bundles' YAML is copied: lines in a run of six or more identical lines that stands in more than
one place (comment and blank lines left out, trailing whitespace ignored).

    python benchmarks/config_duplication.py                 # the working tree's bundles/
    python benchmarks/config_duplication.py --rev 0a7e6e1   # bundles/ at a commit
    python benchmarks/config_duplication.py --list          # and where the copied runs are

Prints ``<copied> of <total> YAML lines``; with ``--json`` one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = 6


def yaml_lines(text: str) -> list[str]:
    """The lines that count: no blank lines, no comment-only lines, trailing whitespace dropped."""
    return [line.rstrip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def read_tree(rev: str | None, folder: str = "bundles") -> dict[str, list[str]]:
    """``{path: counted lines}`` of every ``*.yaml`` under ``folder``, in the working tree or at ``rev``."""
    if rev is None:
        return {str(p.relative_to(ROOT)): yaml_lines(p.read_text()) for p in sorted((ROOT / folder).rglob("*.yaml"))}
    names = subprocess.run(["git", "ls-tree", "-r", "--name-only", rev, folder], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout.split()
    return {n: yaml_lines(subprocess.run(["git", "show", f"{rev}:{n}"], cwd=ROOT, capture_output=True, text=True,
                                         check=True).stdout) for n in names if n.endswith(".yaml")}


def copied_lines(files: dict[str, list[str]], run: int = RUN) -> dict[str, set[int]]:
    """``{path: indices of lines inside a run of ``run`` identical lines found in more than one place}``."""
    places: dict[tuple[str, ...], list[tuple[str, int]]] = defaultdict(list)
    for path, lines in files.items():
        for i in range(len(lines) - run + 1):
            places[tuple(lines[i:i + run])].append((path, i))
    marked: dict[str, set[int]] = defaultdict(set)
    for where in places.values():
        if len(where) > 1:
            for path, i in where:
                marked[path].update(range(i, i + run))
    return marked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rev", help="a git revision (default: the working tree)")
    parser.add_argument("--list", action="store_true", help="print each file's copied line count")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    files = read_tree(args.rev)
    marked = copied_lines(files)
    total, copied = sum(map(len, files.values())), sum(map(len, marked.values()))
    if args.json:
        print(json.dumps({"rev": args.rev or "working tree", "yaml_lines": total, "copied_lines": copied,
                          "files": {p: len(m) for p, m in sorted(marked.items())}}))
        return 0
    print(f"{args.rev or 'working tree'}: {copied} of {total} YAML lines under bundles/ are copies "
          f"(in a run of {RUN}+ identical lines standing in more than one place)")
    if args.list:
        for path, m in sorted(marked.items()):
            print(f"  {len(m):5d}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
