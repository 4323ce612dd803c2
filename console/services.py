"""The console's view of the outside systems, built from settings on first use."""

from functools import cached_property
from typing import Any

import boto3
import psycopg

from producer.handler import Producer
from shared.capture import ChangeCapture
from shared.embedders import BatchingEmbedder, build_embedder, build_embedder_for
from shared.generations import LEGACY, RedisGenerations
from shared.ledger import PostgresLedger
from shared.postgres import Database, PostgresCatalog
from shared.queue import SqsQueue
from shared.redis_store import RedisDocumentStore
from shared.settings import Settings
from shared.wiring import (
    build_capture,
    build_catalog,
    build_ledger,
    build_queue,
    build_store,
    open_database,
)


class Services:
    """Adapters for one console command; each is created only if the command needs it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    @cached_property
    def db(self) -> Database:
        return open_database(self.settings)

    @property
    def conn(self) -> psycopg.Connection[Any]:
        return self.db.connection()

    @cached_property
    def catalog(self) -> PostgresCatalog:
        return build_catalog(self.settings, self.db)

    @cached_property
    def ledger(self) -> PostgresLedger:
        return build_ledger(self.db)

    @cached_property
    def store(self) -> RedisDocumentStore:
        return build_store(self.settings)

    @cached_property
    def generations(self) -> RedisGenerations:
        return RedisGenerations(self.store)

    @cached_property
    def current_store(self) -> RedisDocumentStore:
        """The store of the generation readers use now (the alias's target); the base store if none."""
        return self.read_current_store()

    def read_current_store(self) -> RedisDocumentStore:
        """The current generation's store, read from the registry again at each call."""
        live = self.generations.read().live
        return self.store if live is None else self.generations.store(live.number, live)

    @cached_property
    def current_embedder(self) -> BatchingEmbedder:
        """The embedder that made the current generation's documents (the settings' if none is recorded)."""
        live = self.generations.read().live
        if live is None or live.number == LEGACY:
            return self.embedder
        return build_embedder_for(self.settings, live.embedder, live.dimension)

    @cached_property
    def queue(self) -> SqsQueue:
        return build_queue(self.settings.queue_url, "QUEUE_URL")

    @cached_property
    def dead_letter(self) -> SqsQueue | None:
        return build_queue(self.settings.dlq_url, "DLQ_URL") if self.settings.dlq_url else None

    @cached_property
    def embedder(self) -> BatchingEmbedder:
        return build_embedder(self.settings)

    @cached_property
    def producer(self) -> Producer:
        return Producer(self.settings, self.catalog, self.ledger, self.queue, self.store, self.capture)

    @cached_property
    def capture(self) -> ChangeCapture:
        return build_capture(self.settings, self.db)

    def sqs_client(self) -> Any:
        return boto3.client("sqs")

    def close(self) -> None:
        """Close the database connection if this command opened one."""
        if "db" in self.__dict__:
            self.db.close()

    def __enter__(self) -> "Services":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
