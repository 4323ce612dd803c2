"""What the core reports as it works; the handler turns it into CloudWatch metrics (EMF)."""

from typing import Protocol

from shared.ports import RunProgress


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


class Announcer(Protocol):
    """Says that a run ended (a log line, a metric, a notification); may fail and be retried."""

    def announce(self, progress: RunProgress) -> None: ...


class NoAnnouncer:
    """For code paths and tests that announce nothing."""

    def announce(self, progress: RunProgress) -> None:
        pass
