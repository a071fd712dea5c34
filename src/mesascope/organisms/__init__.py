from .build import Organism, build_organism

__all__ = ["Organism", "build_organism"]
