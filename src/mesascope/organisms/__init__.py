from .build import build_organism
from .organism import Organism

__all__ = ["Organism", "build_organism"]
