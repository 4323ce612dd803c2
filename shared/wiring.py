"""Build each adapter from settings; handlers and the console call these once per process."""

from functools import partial
from urllib.parse import urlsplit

import boto3
import redis

from shared.capture import ChangeCapture
from shared.embedders.base import BatchingEmbedder
from shared.errors import ConfigError
from shared.layout import StorageLayout
from shared.ledger import PostgresLedger
from shared.postgres import Database, PostgresCatalog
from shared.queue import SqsQueue
from shared.ratelimit import RedisRequestLimiter
from shared.redis_store import RedisDocumentStore, connect_redis
from shared.secrets import database_url_from_secret, redis_url_from_secret
from shared.settings import Settings


def database_url(settings: Settings) -> str:
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    if settings.database_secret_arn:
        return database_url_from_secret(
            boto3.client("secretsmanager"), settings.database_secret_arn, settings.database_ca_bundle
        )
    raise ConfigError("no database: set DATABASE_URL or DRUGSYNC_DATABASE_SECRET_ARN")


def open_database(settings: Settings) -> Database:
    """A lazily connecting Database; nothing is opened until the first query.

    A URL from Secrets Manager is read again at every (re)connect: a rotated password is picked up.
    """
    if settings.database_url is None and settings.database_secret_arn:
        return Database(partial(database_url, settings))
    return Database(database_url(settings))


def build_catalog(settings: Settings, db: Database) -> PostgresCatalog:
    return PostgresCatalog(db, settings.table_parts, settings.id_column, settings.eligible_column)


def build_capture(settings: Settings, db: Database) -> ChangeCapture:
    return ChangeCapture(db, settings.table_parts, settings.id_column, settings.eligible_column)


def build_ledger(db: Database) -> PostgresLedger:
    return PostgresLedger(db)


def redis_url(settings: Settings) -> str:
    """REDIS_URL when set (the local stack, tests), else the URL in the Redis secret (deployed)."""
    if settings.redis_url is not None:
        return settings.redis_url.get_secret_value()
    if settings.redis_secret_arn:
        return redis_url_from_secret(boto3.client("secretsmanager"), settings.redis_secret_arn)
    raise ConfigError("no Redis: set REDIS_URL (redis:// or rediss:// for TLS) or DRUGSYNC_REDIS_SECRET_ARN")


def storage_layout(settings: Settings) -> StorageLayout:
    return StorageLayout(
        settings.storage, settings.vector_type, settings.vector_algorithm, settings.hnsw_m,
        settings.hnsw_ef_construction, settings.hnsw_ef_runtime,
    )  # fmt: skip


def build_store(settings: Settings) -> RedisDocumentStore:
    return RedisDocumentStore(
        connect_redis(redis_url(settings)),
        key_prefix=settings.key_prefix,
        index_name=settings.index_name,
        write_batch_size=settings.write_batch_size,
        allow_eviction=settings.allow_eviction,
        layout=storage_layout(settings),
    )


def build_queue(queue_url: str | None, setting_name: str) -> SqsQueue:
    if not queue_url:
        raise ConfigError(f"no queue: set {setting_name}")
    return SqsQueue(lambda: boto3.client("sqs"), queue_url)


def quota_key(settings: Settings) -> str:
    """The Redis key of the embedding quota: Bedrock's quotas are per account, region and model, and
    one Redis server serves one account, so the key names the region and the model (not the
    dimension, index or key prefix): every deployment calling that model there waits in one line."""
    if settings.embedder == "openai":
        # An OpenAI-compatible API's quota is per endpoint (its account) and model, whatever the region.
        # Host and port only: a user:password@ in the URL never reaches the key (`status` prints it).
        url = urlsplit(settings.openai_base_url or "")
        host = f"{url.hostname}:{url.port}" if url.port else url.hostname or "no-endpoint"
        return f"drugsync:quota:openai:{host}:{settings.openai_model}"
    region = boto3.session.Session().region_name or "no-region"
    model = settings.bedrock_model_id if settings.embedder == "bedrock" else settings.embedder
    return f"drugsync:quota:{region}:{model}"


def build_limiter(
    settings: Settings, embedder: BatchingEmbedder, client: redis.Redis
) -> RedisRequestLimiter | None:
    """The shared limiter for an API embedder with a quota configured; None without a quota, and for a
    local embedder (it sends no requests to limit)."""
    rpm, tpm = settings.embedding_quota_rpm, settings.embedding_quota_tpm
    if (rpm is None and tpm is None) or embedder.texts_per_request is None:
        return None
    return RedisRequestLimiter(client, quota_key(settings), rpm, tpm)
