from .semi_supervised_bundle import SemiSupervisedBundleTrain
from .train_limits import TrainLimits

__all__ = ["SemiSupervisedBundleTrain", "TrainLimits"]
