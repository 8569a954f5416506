from .semi_supervised_bundle import SemiSupervisedBundleTrain

__all__ = ["SemiSupervisedBundleTrain"]
