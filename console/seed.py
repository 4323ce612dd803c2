"""`drugsync seed`: create the drugs table and fill it with deterministic synthetic drugs."""

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from console.catalog_data import GENERICS, MANUFACTURERS, PACKAGES
from shared.models import TEXT_FIELDS, Drug
from shared.postgres import drug_from_row
from shared.settings import Settings

# The source table drugsync reads. Table, id and eligibility column names come from settings.
CREATE_DRUGS_TABLE = """
CREATE TABLE IF NOT EXISTS {table} (
    {id}            bigint PRIMARY KEY,
    ndc             text NOT NULL,
    name            text NOT NULL,
    generic_name    text,
    brand_name      text,
    strength        text,
    dosage_form     text,
    route           text,
    manufacturer    text,
    description     text,
    {eligible}      boolean NOT NULL DEFAULT true,
    updated_at      timestamptz NOT NULL DEFAULT now()
)
"""

INELIGIBLE_SHARE = 0.03
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


def synthetic_drugs(count: int, seed: int = 7) -> Iterator[tuple[Any, ...]]:
    """`count` rows (id, text fields..., eligible, updated_at); ids have gaps, ~3% are ineligible."""
    rng = random.Random(seed)
    drug_id = 0
    for _ in range(count):
        drug_id += rng.choice((1, 1, 1, 2, 3)) if rng.random() > 0.002 else rng.randint(50, 5000)
        yield (drug_id, *_drug_fields(rng, drug_id), rng.random() >= INELIGIBLE_SHARE,
               BASE_TIME + timedelta(minutes=drug_id))  # fmt: skip


def _drug_fields(rng: random.Random, drug_id: int) -> tuple[str, ...]:
    generic, brand, drug_class, use, presentations = rng.choice(GENERICS)
    strength, form, route = rng.choice(presentations)
    manufacturer = rng.choice(MANUFACTURERS)
    branded = rng.random() < 0.15
    label = brand if branded else generic.title()
    ndc = f"{rng.randint(10000, 99999)}-{drug_id % 10000:04d}-{rng.randint(1, 99):02d}"
    article = "an" if drug_class[0] in "aeiouAEIOU" else "a"
    description = (
        f"{generic.capitalize()} is {article} {drug_class} used to treat {use}. "
        f"Supplied as {strength} {form} for {route} use, {rng.choice(_packages_for(form))}."
    )
    return (ndc, f"{label} {strength} {form}", generic, brand, strength, form, route,
            manufacturer if not branded else f"{manufacturer} (for {brand})", description)  # fmt: skip


def _packages_for(form: str) -> tuple[str, ...]:
    for keyword, packages in PACKAGES.items():
        if keyword in form:
            return packages
    return PACKAGES["default"]


def seed_drugs(conn: psycopg.Connection[Any], settings: Settings, count: int) -> int:
    """Replace the table's rows with `count` synthetic drugs; returns how many are eligible."""
    names = {
        "table": sql.Identifier(*settings.table_parts),
        "id": sql.Identifier(settings.id_column),
        "eligible": sql.Identifier(settings.eligible_column),
    }
    columns = sql.SQL(", ").join(
        [
            names["id"],
            *(sql.Identifier(f) for f in TEXT_FIELDS),
            names["eligible"],
            sql.Identifier("updated_at"),
        ]
    )
    eligible = 0
    with conn.transaction():
        conn.execute(sql.SQL(CREATE_DRUGS_TABLE).format(**names))
        conn.execute(sql.SQL("TRUNCATE {table}").format(**names))
        copy_sql = sql.SQL("COPY {table} ({columns}) FROM STDIN").format(columns=columns, **names)
        with conn.cursor().copy(copy_sql) as copy:
            for row in synthetic_drugs(count):
                eligible += row[-2]
                copy.write_row(row)
    conn.execute(sql.SQL("ANALYZE {table}").format(**names))
    return eligible


def synthetic_sample(count: int) -> list[Drug]:
    """Synthetic drugs as models, for measuring when the table is still empty."""
    return [
        drug_from_row((drug_id, *texts, updated_at))
        for drug_id, *texts, _eligible, updated_at in synthetic_drugs(count)
    ]
