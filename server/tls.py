"""TLS from the first start: a local CA, and a leaf certificate it signs.

The CA is made once and kept, so a phone that trusts it (``GET /ca.pem``)
keeps trusting the server. The leaf names every address the machine answers
on and is made anew when those addresses change.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
from pathlib import Path

import psutil
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_CERT, CA_KEY = "ca.pem", "ca.key"
LEAF_CERT, LEAF_KEY, LEAF_NAMES = "server.pem", "server.key", "server.names.json"
_LEAF_DAYS = 397  # the longest validity Apple platforms accept for a leaf


def machine_names() -> tuple[list[str], list[str]]:
    """DNS names and IP addresses this machine answers on, loopback and LAN."""
    dns = sorted({"localhost", socket.gethostname()})
    ips = {"127.0.0.1", "::1"}
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(address.address.split("%")[0])
                if not ip.is_link_local:
                    ips.add(str(ip))
    return dns, sorted(ips)


def ensure_certificates(certs_dir: Path) -> tuple[Path, Path]:
    """The (certificate chain, key) paths, made or remade as needed."""
    certs_dir.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _ensure_ca(certs_dir)
    dns, ips = machine_names()
    names_path = certs_dir / LEAF_NAMES
    wanted = {"dns": dns, "ips": ips, "ca": ca_cert.serial_number}
    current = json.loads(names_path.read_text()) if names_path.exists() else None
    if current != wanted or not (certs_dir / LEAF_CERT).exists() or _expiring(certs_dir / LEAF_CERT):
        _write_leaf(certs_dir, ca_cert, ca_key, dns, ips)
        names_path.write_text(json.dumps(wanted))
    return certs_dir / LEAF_CERT, certs_dir / LEAF_KEY


def _ensure_ca(certs_dir: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = certs_dir / CA_CERT, certs_dir / CA_KEY
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"MineStream local CA ({socket.gethostname()})")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_private(key_path, key)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert, key


def _write_leaf(certs_dir: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, dns: list[str], ips: list[str]) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=_LEAF_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    _write_private(certs_dir / LEAF_KEY, key)
    chain = cert.public_bytes(serialization.Encoding.PEM) + ca_cert.public_bytes(serialization.Encoding.PEM)
    (certs_dir / LEAF_CERT).write_bytes(chain)


def _expiring(path: Path) -> bool:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc) < datetime.timedelta(days=30)


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.touch(mode=0o600, exist_ok=True)
    path.write_bytes(pem)
