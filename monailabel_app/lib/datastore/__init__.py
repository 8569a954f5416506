from .safe_local import SafeLocalDatastore

__all__ = ["SafeLocalDatastore"]
