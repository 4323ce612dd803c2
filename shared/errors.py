"""The project's own errors: adapters translate infrastructure failures into these."""

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt


class DrugSyncError(Exception):
    """Base of every error drugsync raises on purpose."""

    retryable = False


class ConfigError(DrugSyncError):
    """A setting is missing or wrong; the message names it."""


class RunActive(DrugSyncError):
    """Another run holds the one-writer claim: the message names it and the way out."""


class InvalidMessage(DrugSyncError):
    """A queue message that can never be processed: malformed, unknown version, bad fields."""


class EnqueueFailed(DrugSyncError):
    """A run was recorded but not all of its messages reached the queue; it can be resumed."""


class RowError(DrugSyncError):
    """A source row that cannot be synced, named by its id."""

    def __init__(self, drug_id: int, reason: str) -> None:
        super().__init__(f"drug id {drug_id}: {reason}")
        self.drug_id = drug_id


class CaptureBusy(DrugSyncError):
    """Change capture could not lock the source table in time: a long transaction holds it."""

    retryable = True


class UnavailableError(DrugSyncError):
    """An outside system (database, Redis, queue, embedding API) failed in a way worth retrying."""

    retryable = True


class ThrottledError(UnavailableError):
    """The provider asked us to slow down (throttling); counted apart from other transient errors."""


class QuotaWaitTooLong(UnavailableError):
    """The shared embedding quota has no slot for this request within what the caller may wait.

    Not retried in place (waiting is what the caller cannot afford): the consumer hands the rest of
    its range on, and anything else that meets it treats it as the embedding API being unavailable.
    """

    retryable = False

    def __init__(self, wait_seconds: float, quota: str) -> None:
        super().__init__(f"the embedding quota {quota} has its next slot in {wait_seconds:.1f} s")
        self.wait_seconds = wait_seconds


class EmbeddingError(DrugSyncError):
    """The embedding provider rejected a request for a reason that retrying will not fix."""


class RejectedTexts(EmbeddingError):
    """Some texts of a call were refused one by one; the others' vectors are in hand, by position.

    Raised by providers that embed one text per request, so the caller isolates exactly the refused
    texts without sending the accepted ones again.
    """

    def __init__(
        self, vectors: Mapping[int, npt.NDArray[np.float32]], errors: Mapping[int, EmbeddingError]
    ) -> None:
        first = errors[min(errors)]
        super().__init__(f"{len(errors)} of {len(vectors) + len(errors)} texts refused, e.g. {first}")
        self.vectors = dict(vectors)
        self.errors = dict(errors)


class ProviderError(DrugSyncError):
    """The embedding provider refuses the account or the model (access, model id, quota, subscription).

    No text is at fault and retrying at once will not help: the consumer defers the rest of the range
    (like UnavailableError, without the in-invocation retries) and never isolates rows for it.
    """


class GenerationMoved(DrugSyncError):
    """The alias moved to another generation between reading the registry and searching: read again."""

    retryable = True


class SwitchRefused(DrugSyncError):
    """A generation failed its verification: the alias stays where it is; the message says why."""


class GenerationInUse(DrugSyncError):
    """The generation is current (readers use it): it is never retired."""


@contextmanager
def unavailable_on(transient: tuple[type[BaseException], ...], system: str, action: str) -> Iterator[None]:
    """Re-raise an adapter's transient failures (connection loss, timeouts) as UnavailableError."""
    try:
        yield
    except transient as error:
        raise UnavailableError(f"{system} failed while {action}: {error}") from error
