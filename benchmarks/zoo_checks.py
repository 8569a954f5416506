"""The MONAI model zoo's bundle checks, run offline on every bundle's export, as a table of checks × bundles.

    python benchmarks/zoo_checks.py                       # all bundles; table to docs/results/zoo_checks.md
    python benchmarks/zoo_checks.py --bundles supervised_la --label after

The checks (schema, metadata values, train and infer properties, network in/out, TorchScript export, weights,
LOCAL_RANK, literal bundle_root, data licence, README sections) live in ``ssmis.bundle.zoo``, which says what each
asks; the test suite asserts them too.

Each bundle is first exported (``python -m ssmis.bundle export``, into a temporary folder): that is what the zoo
receives. A cell is ``pass`` or ``FAIL: <why>``. Results go to ``docs/results/zoo_checks.json`` under ``--label`` (so a
"before" and an "after" sit side by side) and the table to ``docs/results/zoo_checks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT.parent / "shared" / "zoo" / "meta_schema_20240725.json"

sys.path.insert(0, str(ROOT / "src"))
from ssmis.bundle.zoo import CHECKS, run_checks  # noqa: E402


def table(results: dict[str, dict[str, dict[str, str]]]) -> str:
    lines = []
    for label, per_bundle in results.items():
        bundles = sorted(per_bundle)
        lines += [f"**{label}**", "", "| check | " + " | ".join(bundles) + " |",
                  "|---|" + "---|" * len(bundles)]
        for check in CHECKS:
            cells = []
            for b in bundles:
                cell = per_bundle[b].get(check, "not run")
                cells.append("pass" if cell == "pass" else cell.replace("|", "/"))
            lines.append(f"| {check} | " + " | ".join(cells) + " |")
        passed = sum(v == "pass" for b in bundles for v in per_bundle[b].values())
        lines += ["", f"{passed} of {len(bundles) * len(CHECKS)} checks pass.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundles", nargs="+", default=None, help="bundle names (default: every bundle)")
    parser.add_argument("--bundles-dir", type=Path, default=ROOT / "bundles", help="folder of the bundles")
    parser.add_argument("--label", default="current", help="name of this run in the results (e.g. before, after)")
    parser.add_argument("--results-dir", type=Path, default=ROOT / "docs" / "results")
    parser.add_argument("--schema", type=Path, default=SCHEMA, help=f"the zoo's metadata schema (default {SCHEMA})")
    args = parser.parse_args(argv)
    names = args.bundles or sorted(p.name for p in args.bundles_dir.iterdir()
                                   if (p / "configs" / "metadata.json").is_file())
    for name in names:
        if not (args.bundles_dir / name / "configs" / "metadata.json").is_file():
            parser.error(f"--bundles: {args.bundles_dir / name} is not a bundle (no configs/metadata.json)")
    results_file = args.results_dir / "zoo_checks.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    current = results.setdefault(args.label, {})
    from ssmis.bundle.export import export_bundle

    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            export_bundle(args.bundles_dir / name, tmp)
            current[name] = run_checks(Path(tmp) / name, schema=args.schema)
        print(f"{name}: {sum(v == 'pass' for v in current[name].values())}/{len(CHECKS)} pass", flush=True)
    from ssmis.utils import atomic_write_text

    args.results_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(json.dumps(results, indent=2), results_file)
    atomic_write_text(table(results), args.results_dir / "zoo_checks.md")
    print(table({args.label: current}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
