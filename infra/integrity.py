"""What the Lambda zip holds, byte for byte, checked against its manifest and its wheels' RECORDs.

The manifest (drugsync_artefact.json) records the sha256 of every entry; a zip whose entries are
not exactly those (a package deleted, a handler replaced) is refused whatever the manifest says.
Each installed distribution's files are also checked against the hashes its *.dist-info/RECORD
lists (https://packaging.python.org/en/latest/specifications/recording-installed-packages/).
"""

import base64
import csv
import hashlib
import io
import posixpath
import zipfile
from email.parser import Parser
from typing import Any

from packaging.utils import canonicalize_name

MANIFEST = "drugsync_artefact.json"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def entry_digests(archive: zipfile.ZipFile) -> dict[str, str]:
    """sha256 of every file entry of the zip, by name, the manifest itself excepted."""
    return {
        info.filename: sha256(archive.read(info))
        for info in archive.infolist()
        if not info.is_dir() and info.filename != MANIFEST
    }


def content_problems(archive: zipfile.ZipFile, manifest: dict[str, Any]) -> list[str]:
    """How the zip's entries differ from what its manifest recorded at build time (empty: none)."""
    recorded: dict[str, str] = manifest.get("files") or {}
    if not recorded:
        return [f"{MANIFEST} records no file digests: an artefact of an older build"]
    actual = entry_digests(archive)
    problems = [f"{name} is in the manifest but not in the zip" for name in sorted(recorded.keys() - actual)]
    problems += [f"{name} is in the zip but not in the manifest" for name in sorted(actual.keys() - recorded)]
    problems += [
        f"{name} in the zip differs from its digest in the manifest"
        for name in sorted(recorded.keys() & actual.keys())
        if recorded[name] != actual[name]
    ]
    problems += [
        f"source {name}: the manifest's two digests disagree"
        for name, digest in sorted(manifest.get("sources", {}).items())
        if recorded.get(name) != digest
    ]
    return problems + record_problems(archive) + distribution_problems(archive, manifest)


def record_problems(archive: zipfile.ZipFile) -> list[str]:
    """Files a wheel's RECORD lists with a hash that the zip lacks or holds with other bytes."""
    names = set(archive.namelist())
    problems = []
    for record in sorted(name for name in names if _is_dist_info(name, "RECORD")):
        for row in csv.reader(io.StringIO(archive.read(record).decode())):
            if len(row) < 2 or not row[1]:
                continue  # RECORD itself, and .pyc pip would have compiled, carry no hash
            name = _in_zip(row[0])
            if name not in names:
                problems.append(f"{record} lists {name}, missing from the zip")
            elif not _matches(row[1], archive.read(name)):
                problems.append(f"{name} differs from the hash in {record}")
    return problems


def distribution_problems(archive: zipfile.ZipFile, manifest: dict[str, Any]) -> list[str]:
    """The distributions installed in the zip are the manifest's, at the manifest's versions."""
    installed = installed_versions(archive)
    pinned: dict[str, str] = manifest.get("dependencies", {})
    return [
        f"dependency {name} {pinned[name]} in the manifest, {installed.get(name, 'none')} in the zip"
        for name in sorted(pinned)
        if installed.get(name) != pinned[name]
    ] + [f"{name} installed in the zip but not in the manifest" for name in sorted(installed.keys() - pinned)]


def installed_versions(archive: zipfile.ZipFile) -> dict[str, str]:
    """{name: version} from the METADATA of each top-level .dist-info folder of the zip."""
    found: dict[str, str] = {}
    for name in archive.namelist():
        if _is_dist_info(name, "METADATA"):
            headers = Parser().parsestr(archive.read(name).decode(), headersonly=True)
            found[canonicalize_name(headers["Name"])] = str(headers["Version"])
    return found


def _is_dist_info(name: str, file: str) -> bool:
    folder, _, leaf = name.partition("/")
    return folder.endswith(".dist-info") and leaf == file


def _in_zip(path: str) -> str:
    """A RECORD path as a zip entry name. `pip --target` installs into a staging prefix and moves its
    scripts folder to target/bin, so RECORD's `../../bin/x` (relative to site-packages) is `bin/x`."""
    if path.startswith("../"):
        return posixpath.normpath(posixpath.join("lib/site-packages", path))
    return path


def _matches(spec: str, data: bytes) -> bool:
    """RECORD's `algorithm=urlsafe-base64-digest-without-padding` against the bytes."""
    algorithm, _, expected = spec.partition("=")
    try:
        digest = hashlib.new(algorithm, data).digest()
    except ValueError:
        return False
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == expected
