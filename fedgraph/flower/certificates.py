"""The credentials of a Flower deployment: a certificate authority, the SuperLink's TLS
certificate signed by it, and one key pair per SuperNode for node authentication.

The SuperLink serves TLS with its certificate; SuperNodes and ``flwr`` verify it against the
authority's certificate (``--root-certificates``); with node authentication the SuperLink
only serves SuperNodes whose public key was registered (``flwr supernode register``) and who
sign their requests with the matching private key. Keys are elliptic-curve (NIST P-384:
Flower accepts NIST curves for node keys), files are PEM (OpenSSH for node keys, the format
``flower-supernode`` and ``flwr supernode register`` read), private keys readable by their
owner only.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the certificates of a local deployment are valid.
VALIDITY = datetime.timedelta(days=30)


@dataclass
class Credentials:
    """Paths of a deployment's credential files."""
    ca_certificate: Path
    superlink_certificate: Path
    superlink_key: Path
    node_keys: List[Path]

    def node_public_key(self, node: int) -> Path:
        """SuperNode ``node``'s public key (beside its private key)."""
        return self.node_keys[node].with_suffix('.pub')


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP384R1())


def _write_private(path: Path, data: bytes) -> None:
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, 'wb') as handle:
        handle.write(data)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def write_credentials(folder: Path, hosts: Sequence[str] = ('127.0.0.1', 'localhost'),
                      num_nodes: int = 0) -> Credentials:
    """Writes into ``folder`` a certificate authority (``ca.crt``; its key is used once and
    not kept), the SuperLink's certificate for ``hosts`` (IP addresses or DNS names) and key
    (``superlink.crt``, ``superlink.key``), and ``num_nodes`` SuperNode key pairs
    (``node-<i>.key``, ``node-<i>.pub``)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = _key()
    ca = (x509.CertificateBuilder()
          .subject_name(_name('fedgraph local certificate authority'))
          .issuer_name(_name('fedgraph local certificate authority'))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now).not_valid_after(now + VALIDITY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                       key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, key_cert_sign=True, crl_sign=True,
                                       encipher_only=False, decipher_only=False),
                         critical=True)
          .sign(ca_key, hashes.SHA384()))
    names = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    link_key = _key()
    link = (x509.CertificateBuilder()
            .subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(link_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + VALIDITY)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA384()))
    pem = serialization.Encoding.PEM
    credentials = Credentials(folder / 'ca.crt', folder / 'superlink.crt',
                              folder / 'superlink.key', [])
    credentials.ca_certificate.write_bytes(ca.public_bytes(pem))
    credentials.superlink_certificate.write_bytes(link.public_bytes(pem))
    _write_private(credentials.superlink_key, link_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    for node in range(num_nodes):
        key = _key()
        path = folder / f'node-{node}.key'
        _write_private(path, key.private_bytes(pem, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()))
        path.with_suffix('.pub').write_bytes(key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))
        credentials.node_keys.append(path)
    return credentials
