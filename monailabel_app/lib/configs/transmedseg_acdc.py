"""TransMedSeg on cardiac cine-MRI (ACDC): a 2D network run slice by slice on volumes; three structures."""

from lib.configs.bundle_config import BundleTaskConfig


class TransMedSegACDC(BundleTaskConfig):
    bundle = "transmedseg_acdc"
    task = "acdc"
    uncertainty = "entropy"
    # retraining continues from served weights, so the copy-paste pre-training stage is short by default
    train_defaults = {"num_iterations": 1000, "pretrain_iterations": 100}
