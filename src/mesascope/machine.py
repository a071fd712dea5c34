"""The machine a results file was measured on: Python, platform and CPU count.

Its own module so that every results type (results.py, study/*results.py) can name it without
importing results.py, whose json_schemas() imports them in turn.
"""

from __future__ import annotations

import os
import platform

from pydantic import BaseModel, ConfigDict


class Machine(BaseModel):
    model_config = ConfigDict(extra="allow")

    python: str
    platform: str
    cpus: int | None = None


def machine() -> Machine:
    return Machine(python=platform.python_version(), platform=platform.platform(), cpus=os.cpu_count())
