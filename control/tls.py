"""TLS for the control API: a given certificate, or a self-signed one made once.

A join token minted while TLS is on carries the certificate's sha256 fingerprint
(`<secret>#sha256:<hex>`), so a joining node can pin the certificate it is shown
before sending anything: the same idea as k3s's `K10<hash>::` tokens.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path

from control.errors import FoundryError


@dataclass(frozen=True)
class TLS:
    cert: Path
    key: Path

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.cert.read_text())


def fingerprint(pem: str) -> str:
    """'sha256:<hex>' of a PEM certificate's DER bytes."""
    return "sha256:" + hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()


def self_signed(directory: Path, names: list[str]) -> TLS:
    """The certificate kept in `directory`, made on first use for `names` (hosts or IPs)."""
    tls = TLS(directory / "cert.pem", directory / "key.pem")
    if tls.cert.exists() and tls.key.exists():
        return tls
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    sans = ",".join(f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in dict.fromkeys(names))
    result = subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=foundry-control",
            "-keyout",
            str(tls.key),
            "-out",
            str(tls.cert),
            "-addext",
            f"subjectAltName={sans}",
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise FoundryError(f"could not make a certificate: {result.stderr.strip()}")
    tls.key.chmod(0o600)
    return tls


def default_names(host: str) -> list[str]:
    names = ["localhost", "127.0.0.1", socket.gethostname()]
    if host not in ("0.0.0.0", "", "::"):
        names.insert(0, host)
    return names


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True
