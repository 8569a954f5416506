"""TransMedSeg (BCP + graph clustering + TSA) on the left atrium; uncertainty = prediction entropy."""

from lib.configs.bundle_config import BundleTaskConfig


class TransMedSegLA(BundleTaskConfig):
    bundle = "transmedseg_la"
    uncertainty = "entropy"
    # retraining continues from served weights, so the copy-paste pre-training stage is short by default
    train_defaults = {"num_iterations": 1000, "pretrain_iterations": 100}
