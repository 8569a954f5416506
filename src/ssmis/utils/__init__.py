from .atomic import atomic_output_dir, atomic_torch_save, atomic_write_text

__all__ = ["atomic_output_dir", "atomic_torch_save", "atomic_write_text"]
