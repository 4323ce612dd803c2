"""What the core reports as it works; the handler turns it into CloudWatch metrics (EMF)."""

from typing import Protocol


class Telemetry(Protocol):
    """Counts and durations, named in CamelCase as CloudWatch metrics are."""

    def count(self, name: str, value: float = 1) -> None: ...

    def milliseconds(self, name: str, value: float) -> None: ...


class NoTelemetry:
    """For code paths and tests that report nothing."""

    def count(self, name: str, value: float = 1) -> None:
        pass

    def milliseconds(self, name: str, value: float) -> None:
        pass


class Notifier(Protocol):
    """Tells people a run ended (an SNS topic, say)."""

    def notify(self, subject: str, message: str) -> None: ...
