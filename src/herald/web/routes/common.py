"""Small pieces the route modules share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path

from herald.web.runtime import Runtime, get_runtime

MAX_ID = 2**63 - 1
Id = Annotated[int, Path(ge=1, le=MAX_ID, description="a positive id")]
RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
