from .safe_local import SafeLocalDatastore
from .storage_limits import StorageLimits, folder_bytes

__all__ = ["SafeLocalDatastore", "StorageLimits", "folder_bytes"]
