from .uncertainty import Uncertainty
from .uncertainty_scoring import ScoreCache, UncertaintyScoring

__all__ = ["ScoreCache", "Uncertainty", "UncertaintyScoring"]
