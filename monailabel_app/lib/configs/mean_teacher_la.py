"""Mean teacher on the left atrium: a student and its EMA teacher, consistent on noise-perturbed unlabelled images."""

from lib.configs.bundle_config import BundleTaskConfig


class MeanTeacherLA(BundleTaskConfig):
    bundle = "mean_teacher_la"
    uncertainty = "entropy"
    train_defaults = {"num_iterations": 1000}
