"""The RDS CA bundle the artefact ships verifies Aurora: Amazon RDS authorities, all loadable."""

import ssl
from typing import Any

from infra.ca_bundle import rds_ca_bundle


def _subjects(cert: dict[str, Any]) -> set[str]:
    return {
        value for rdn in cert["subject"] for key, value in rdn if key in ("commonName", "organizationName")
    }


def test_the_bundle_holds_the_amazon_rds_authorities_of_every_region() -> None:
    context = ssl.create_default_context(cadata=rds_ca_bundle())
    names = [" ".join(sorted(_subjects(cert))) for cert in context.get_ca_certs()]
    assert len(names) >= 100  # one root per region and key type
    assert any("Amazon RDS us-east-1 Root CA RSA2048 G1" in name for name in names)
    assert any("Amazon RDS eu-west-1 Root CA ECC384 G1" in name for name in names)
