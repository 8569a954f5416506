"""Mean teacher on cardiac cine-MRI (ACDC), slice by slice; three structures."""

from lib.configs.bundle_config import BundleTaskConfig


class MeanTeacherACDC(BundleTaskConfig):
    bundle = "mean_teacher_acdc"
    task = "acdc"
    uncertainty = "entropy"
    train_defaults = {"num_iterations": 1000}
