"""Kept only until the code-vulnerability checker moves to text/."""
