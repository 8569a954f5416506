"""Fixed and dynamic pseudo-label co-training on the left atrium; uncertainty = the two networks' disagreement."""

from lib.configs.bundle_config import BundleTaskConfig


class FixedDynamicPLLA(BundleTaskConfig):
    bundle = "fixed_dynamic_pl_la"
    uncertainty = "disagreement"
    train_defaults = {"num_iterations": 1000}
