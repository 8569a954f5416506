"""The model zoo's checks (``ssmis.bundle.zoo``) pass on every bundle's export, offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import BUNDLES, ROOT

SCHEMA = ROOT.parent / "shared" / "zoo" / "meta_schema_20240725.json"
NAMES = sorted(p.name for p in BUNDLES.iterdir() if (p / "configs" / "metadata.json").is_file())


@pytest.fixture(scope="session")  # session: a worker running another module in between keeps it
def exported(tmp_path_factory) -> Path:
    from ssmis.bundle.export import export_bundle

    out = tmp_path_factory.mktemp("dist")
    for name in NAMES:
        export_bundle(BUNDLES / name, out)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_exported_bundle_passes_the_zoo_checks(exported, name):
    from ssmis.bundle.zoo import CHECKS, run_checks

    # the schema check needs the offline copy of the zoo's schema beside the repository; the others run anyway
    checks = tuple(c for c in CHECKS if SCHEMA.is_file() or c != "schema")
    results = run_checks(exported / name, schema=SCHEMA, only=checks)
    assert set(results) == set(checks)
    # a bundle without trained (models/) or shipped (weights/) weights fails that check alone
    has_weights = any((BUNDLES / name / folder / "model.pt").is_file() for folder in ("models", "weights"))
    expected_fail = set() if has_weights else {"weights"}
    failed = {check: why for check, why in results.items() if why != "pass"}
    assert set(failed) == expected_fail, failed
    if "weights" in failed:
        assert "no models/model.pt" in failed["weights"]
    # the README's License section points at LICENSE: every export has it (bundles/common/LICENSE)
    assert (exported / name / "LICENSE").read_text().startswith((BUNDLES / "common" / "LICENSE").read_text()[:200])


def test_a_broken_bundle_fails_the_checks_that_matter(exported, tmp_path):
    """The checks can fail: an integer validation interval, a string metric, no data licence."""
    import json
    import shutil

    import yaml

    from ssmis.bundle.zoo import run_checks

    bundle = tmp_path / "supervised_la"
    shutil.copytree(exported / "supervised_la", bundle)
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    meta["eval_metrics"]["mean_dice"] = "see the docs"
    (bundle / "configs" / "metadata.json").write_text(json.dumps(meta))
    train = yaml.safe_load((bundle / "configs" / "train.yaml").read_text())
    train["train"]["handlers"][1]["interval"] = 1
    (bundle / "configs" / "train.yaml").write_text(yaml.safe_dump(train, sort_keys=False))
    (bundle / "docs" / "data_license.txt").unlink()
    results = run_checks(bundle, schema=SCHEMA, only=("metadata values", "train properties", "data licence"))
    assert "eval_metrics.mean_dice is str" in results["metadata values"]
    assert results["train properties"].startswith("FAIL") and results["data licence"].startswith("FAIL")


def test_overlays_that_nest_are_refused_by_the_export(tmp_path):
    """A dict update cannot merge ``a`` and ``a#b`` (or two ``+key``) as MONAI would: the export says so."""
    import shutil

    from ssmis.bundle.export import merged_config

    shutil.copytree(BUNDLES / "common", tmp_path / "common")
    shutil.copytree(BUNDLES / "supervised_la", tmp_path / "supervised_la")
    (tmp_path / "supervised_la" / "configs" / "evaluate.yaml").write_text("validate#dataset: {}\n")
    with pytest.raises(ValueError, match="overlaps"):
        merged_config(tmp_path / "supervised_la", "evaluate")
    assert "validate#handlers" in merged_config(BUNDLES / "supervised_la", "evaluate")
