"""Fixtures the integration tests share: a connection to the test's own database."""

import psycopg
import pytest

from shared.postgres import Database
from tests.conftest import Isolated


@pytest.fixture
def db(test_env: Isolated):
    """The test's database, through drugsync's own connection handling; closed after the test."""
    database = Database(test_env.env["DATABASE_URL"])
    yield database
    database.close()


@pytest.fixture
def conn(db: Database) -> psycopg.Connection:
    return db.connection()
