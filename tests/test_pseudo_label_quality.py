"""The pseudo-label quality diagnostic: its scores, and that the reference labels it reads never reach a loss."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import TINY, run_bundle


def test_scores_match_a_hand_computation():
    from ssmis.handlers import PseudoLabelQuality, pseudo_label_scores

    ref = torch.zeros(2, 1, 4, 4, 2, dtype=torch.long)
    ref[0, 0, :2, :2] = 1  # 8 voxels of class 1 in the first item
    ref[1, 0, 0, 0, 0] = 2  # 1 voxel of class 2 in the second
    pseudo = ref.clone()
    pseudo[0, 0, 0, 0, :] = 0  # 2 of the 8 class-1 voxels missed
    pseudo[1, 0, 3, 3, 1] = 1  # 1 false class-1 voxel
    dice, wrong = pseudo_label_scores(pseudo, ref, num_classes=3)
    # class 1: |P| = 7, |R| = 8, |P & R| = 6 -> 12 / 15; class 2: exact -> 1
    assert dice == pytest.approx((12 / 15 + 1.0) / 2)
    assert wrong == pytest.approx(3 / 64)
    empty = torch.zeros_like(ref)  # class 2 absent from both counts 1; present in the pseudo-label alone, 0
    assert pseudo_label_scores(empty, empty, 3) == (1.0, 0.0)
    only_pseudo = empty.clone()
    only_pseudo[0, 0, 0, 0, 0] = 2
    assert pseudo_label_scores(only_pseudo, empty, 3)[0] == pytest.approx(0.5)

    class Strategy:  # the co-training kind: pseudo-labels on a crop of the unlabelled batch
        report_pseudo_labels = False

        def align_reference(self, reference):
            return reference[..., 1:3, 1:3, :]

    engine = SimpleNamespace(strategy=Strategy(), add_event_handler=lambda *a: None,
                             state=SimpleNamespace(unlabeled_reference=ref.float(), output={
                                 "loss": torch.tensor(1.0), "pseudo_label/fixed_sn1": pseudo[..., 1:3, 1:3, :]}))
    handler = PseudoLabelQuality(num_classes=3)
    handler.attach(engine)
    handler.ask_for_pseudo_labels(engine)  # what STARTED runs
    assert engine.strategy.report_pseudo_labels
    handler(engine)
    d, w = pseudo_label_scores(pseudo[..., 1:3, 1:3, :], ref[..., 1:3, 1:3, :], 3)
    assert float(engine.state.output["pseudo_quality/fixed_sn1/dice"]) == pytest.approx(d)
    assert float(engine.state.output["pseudo_quality/fixed_sn1/wrong"]) == pytest.approx(w)
    with pytest.raises(TypeError, match="semi-supervised strategy"):  # MONAI's SupervisedTrainer: named, not a crash
        handler.ask_for_pseudo_labels(SimpleNamespace())
    engine.state.unlabeled_reference = None  # records without a reference: nothing is added
    engine.state.output = {"pseudo_label/x": pseudo}
    handler(engine)
    assert list(engine.state.output) == ["pseudo_label/x"]


@pytest.mark.slow
@pytest.mark.parametrize("bundle, extra", [
    ("transmedseg_la", ["--graph_layer", "down_4", "--graph_channels", "16", "--pretrain_iterations", "2"]),
    ("fixed_dynamic_pl_la", ["--unlabeled_batch_size", "2"]),
])
def test_reference_labels_never_reach_the_loss(bundle, extra, tmp_path):
    """The same run with and without the diagnostic ends with identical weights, and the diagnostic logged its scores
    for every pseudo-label."""
    from ssmis.data.synthetic import make_synthetic_dataset

    from conftest import tb_scalars

    data = make_synthetic_dataset(tmp_path / "syn", dims=3, classes=2, cases=8, labeled=4, val=2, size=32)
    weights = {}
    for name, configs in (("plain", ["train"]), ("diagnosed", ["train", "pseudo_label_quality"])):
        out = tmp_path / name
        run_bundle(bundle, configs, "--dataset_dir", str(data), "--output_dir", str(out), "--num_iterations", "4",
                   "--val_interval", "4", *TINY, *extra)
        weights[name] = torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert weights["plain"].keys() == weights["diagnosed"].keys()
    for key in weights["plain"]:
        assert torch.equal(weights["plain"][key], weights["diagnosed"][key]), key
    names = ["teacher"] if bundle == "transmedseg_la" else ["fixed_sn1", "dynamic_sn1", "fixed_sn2", "dynamic_sn2"]
    for n in names:
        dice = [v for _, v in tb_scalars(tmp_path / "diagnosed" / "logs", f"pseudo_quality/{n}/dice")]
        assert dice and all(0.0 <= v <= 1.0 for v in dice), n
    assert not tb_scalars(tmp_path / "plain" / "logs", "pseudo_quality/teacher/dice")
