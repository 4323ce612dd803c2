"""Short, specific descriptions of errors for logs and DLQ reasons."""

from collections.abc import Callable, Collection

from pydantic import ValidationError


def validation_problems(
    error: ValidationError,
    skip: Collection[str] = (),
    empty: str = "body",
    rename: Callable[[str], str] = str,
) -> str:
    """Each wrong field named with pydantic's reason, on one line ("first_id: ...; last_id: ...").

    `skip` drops location parts that only name a union member; `rename` turns a field into what
    the reader sets (an environment variable, say); `empty` names a model-level problem.
    """
    problems = []
    for detail in error.errors():
        location = ".".join(str(part) for part in detail["loc"] if part not in skip) or empty
        problems.append(f"{rename(location)}: {detail['msg']}")
    return "; ".join(problems)


def describe_error(error: BaseException) -> str:
    """A one-line reason; validation errors name each wrong field instead of dumping the model."""
    if isinstance(error, ValidationError):
        return f"invalid {error.title}: " + validation_problems(error, empty=error.title)
    return str(error) or type(error).__name__
