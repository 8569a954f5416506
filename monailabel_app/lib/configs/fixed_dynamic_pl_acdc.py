"""Fixed and dynamic pseudo-label co-training on cardiac cine-MRI (ACDC); uncertainty = the two networks'
disagreement."""

from lib.configs.bundle_config import BundleTaskConfig


class FixedDynamicPLACDC(BundleTaskConfig):
    bundle = "fixed_dynamic_pl_acdc"
    task = "acdc"
    uncertainty = "disagreement"
    train_defaults = {"num_iterations": 1000}
