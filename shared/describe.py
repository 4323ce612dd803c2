"""Short, specific descriptions of errors for logs and DLQ reasons."""

from pydantic import ValidationError


def describe_error(error: BaseException) -> str:
    """A one-line reason; validation errors name each wrong field instead of dumping the model."""
    if isinstance(error, ValidationError):
        problems = []
        for detail in error.errors():
            location = ".".join(str(part) for part in detail["loc"]) or error.title
            problems.append(f"{location}: {detail['msg']}")
        return f"invalid {error.title}: " + "; ".join(problems)
    return str(error) or type(error).__name__
