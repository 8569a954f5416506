from .atomic import atomic_torch_save, atomic_write_text
from .distributed import get_rank, get_world_size
from .precision import autocast_to, bfloat16_is_fast

__all__ = ["atomic_torch_save", "atomic_write_text", "autocast_to", "bfloat16_is_fast", "get_rank", "get_world_size"]
