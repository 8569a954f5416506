"""Supervised training of the ACDC 2D U-Net on the labelled slices only: the baseline for the cardiac models."""

from lib.configs.bundle_config import BundleTaskConfig


class SupervisedACDC(BundleTaskConfig):
    bundle = "supervised_acdc"
    task = "acdc"
    uncertainty = "entropy"
    train_defaults = {"num_iterations": 1000}
