from .atomic import atomic_torch_save, atomic_write_text
from .distributed import get_rank, get_world_size

__all__ = ["atomic_torch_save", "atomic_write_text", "get_rank", "get_world_size"]
