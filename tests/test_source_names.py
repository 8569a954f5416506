"""Every name the project's Python imports or assigns is used, and every name it uses is defined (pyflakes): an
undefined name is a NameError waiting for the one path that reaches it. And every line fits the configured length."""

from __future__ import annotations

from conftest import ROOT


def test_no_undefined_or_unused_names():
    from pyflakes.api import checkRecursive
    from pyflakes.reporter import Reporter

    class Collect(Reporter):
        def __init__(self) -> None:
            self.messages: list[str] = []

        def flake(self, message) -> None:
            self.messages.append(str(message))

        def syntaxError(self, filename, msg, lineno, offset, text) -> None:
            self.messages.append(f"{filename}:{lineno}: {msg}")

        def unexpectedError(self, filename, message) -> None:
            self.messages.append(f"{filename}: {message}")

    reporter = Collect()
    folders = [str(ROOT / name) for name in ("src", "monailabel_app", "benchmarks", "tests")]
    checked = checkRecursive(folders, reporter)
    assert reporter.messages == [], "\n".join(reporter.messages)
    assert checked == 0  # checkRecursive returns the number of warnings


def test_no_line_longer_than_the_configured_limit():
    """Every line of the project's Python fits setup.cfg's ``max-line-length`` (counted in characters)."""
    import configparser
    import subprocess

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    limit = config.getint("flake8", "max-line-length")
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert files.split(), "git lists no Python files"
    long = [f"{name}:{number}: {len(line)} characters"
            for name in files.split()
            for number, line in enumerate((ROOT / name).read_text(encoding="utf-8").splitlines(), 1)
            if len(line) > limit]
    assert long == [], "\n".join(long)
