"""Inspect's entry point (`[project.entry-points.inspect_ai]` in pyproject.toml) imports this
module: importing it registers the `mesascope` model provider and the `mesascope/*` tasks."""

from inspect_ai.model import modelapi

from .tasks import backdoor, mwe  # noqa: F401  (registered by @task on import)


@modelapi(name="mesascope")
def mesascope():
    # Imported when a mesascope model is asked for: the provider loads torch and transformers.
    from .provider import MesascopeAPI

    return MesascopeAPI
