"""Supervised training of the LA V-Net on the labelled images only: the baseline the annotation loop compares with."""

from lib.configs.bundle_config import BundleTaskConfig


class SupervisedLA(BundleTaskConfig):
    bundle = "supervised_la"
    uncertainty = "entropy"
    train_defaults = {"num_iterations": 1000}
