"""mesascope: a laboratory for model organisms of inner misalignment."""

__version__ = "0.1.0"  # pyproject reads it; run-store directory names hash it
