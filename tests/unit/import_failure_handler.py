"""A handler module whose dependency is missing, as in an artefact built without it."""

from typing import Any

import no_such_dependency  # noqa: F401


def lambda_handler(event: dict[str, Any], context: Any) -> None:
    """Never reached: the import above fails first."""
