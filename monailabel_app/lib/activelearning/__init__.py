from .random_sample import RandomSample
from .uncertainty import Uncertainty
from .uncertainty_scoring import ScoreCache, UncertaintyScoring

__all__ = ["RandomSample", "ScoreCache", "Uncertainty", "UncertaintyScoring"]
