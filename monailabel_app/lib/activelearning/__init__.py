from .random_sample import RandomSample
from .score_cache import ScoreCache
from .uncertainty import Uncertainty
from .uncertainty_scoring import UncertaintyScoring

__all__ = ["RandomSample", "ScoreCache", "Uncertainty", "UncertaintyScoring"]
