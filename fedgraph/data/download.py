"""Fetching raw data files into the data root, with checksums and an offline fallback."""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def default_root() -> Path:
    """Where raw data files live: ``$FEDGRAPH_DATA``, else the repository's ``datasets/``
    folder (for a source checkout), else ``~/.cache/fedgraph``."""
    if os.environ.get('FEDGRAPH_DATA'):
        return Path(os.environ['FEDGRAPH_DATA'])
    in_checkout = _PACKAGE_ROOT / 'datasets'
    if (in_checkout / 'README.md').exists():
        return in_checkout
    return Path.home() / '.cache' / 'fedgraph'


def content_digest(*columns: np.ndarray) -> str:
    """SHA-256 of integer columns (as little-endian ``int64``): a checksum of a data set's
    content that does not depend on how its file is laid out."""
    digest = hashlib.sha256()
    for column in columns:
        digest.update(np.ascontiguousarray(column, dtype='<i8').tobytes())
    return digest.hexdigest()


def download_and_extract(url: str, members: dict, target: Path, timeout: float = 30.0) -> None:
    """Downloads the zip at ``url`` and writes ``members`` (``{name in zip: file name}``)
    into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / 'download.zip'
        log.info('downloading %s', url)
        with urllib.request.urlopen(url, timeout=timeout) as response, open(archive, 'wb') as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zipped:
            for member, name in members.items():
                with zipped.open(member) as source, open(target / name, 'wb') as out:
                    shutil.copyfileobj(source, out)


def fetch_wheel_member(requirement: str, member: str, destination: Path,
                       timeout: float = 300.0) -> Optional[Path]:
    """Copies ``member`` out of the wheel of ``requirement`` (e.g. ``'recbole==1.2.1'``) on
    the package index, downloaded with pip and never installed. Returns ``None`` on failure.
    """
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
                   '--quiet', '--dest', tmp, requirement]
        log.info('fetching %s from the package index', requirement)
        try:
            subprocess.run(command, check=True, timeout=timeout, capture_output=True)
        except (subprocess.SubprocessError, OSError) as error:
            log.warning('pip download %s failed: %s', requirement, error)
            return None
        wheels = list(Path(tmp).glob('*.whl'))
        if not wheels:
            return None
        with zipfile.ZipFile(wheels[0]) as zipped:
            if member not in zipped.namelist():
                return None
            destination.parent.mkdir(parents=True, exist_ok=True)
            with zipped.open(member) as source, open(destination, 'wb') as out:
                shutil.copyfileobj(source, out)
    return destination
