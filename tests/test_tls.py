"""Certificates: a kept CA, a leaf naming the machine, the user's own files."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

from cryptography import x509

from server.tls import LEAF_NAMES, ensure_certificates, machine_names


def leaf(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_leaf_is_signed_by_the_ca_and_names_the_machine(tmp_path: Path) -> None:
    chain, key = ensure_certificates(tmp_path)
    cert = leaf(chain)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca.pem").read_bytes())
    cert.verify_directly_issued_by(ca)
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert x509.oid.ExtendedKeyUsageOID.SERVER_AUTH in cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    dns, ips = machine_names()
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    assert {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")} <= set(san.get_values_for_type(x509.IPAddress))
    assert {ipaddress.ip_address(ip) for ip in ips} == set(san.get_values_for_type(x509.IPAddress))
    assert key.stat().st_mode & 0o077 == 0


def test_ca_is_kept_and_leaf_remade_when_addresses_change(tmp_path: Path) -> None:
    ensure_certificates(tmp_path)
    ca_before = (tmp_path / "ca.pem").read_bytes()
    leaf_before = leaf(tmp_path / "server.pem").serial_number
    ensure_certificates(tmp_path)
    assert leaf(tmp_path / "server.pem").serial_number == leaf_before
    names = json.loads((tmp_path / LEAF_NAMES).read_text())
    names["ips"] = ["10.99.99.99"]  # as if the machine had moved networks
    (tmp_path / LEAF_NAMES).write_text(json.dumps(names))
    ensure_certificates(tmp_path)
    assert leaf(tmp_path / "server.pem").serial_number != leaf_before
    assert (tmp_path / "ca.pem").read_bytes() == ca_before


def test_ca_is_served_for_phones(server: Any) -> None:
    with server.http() as http:
        response = http.get("/ca.pem")
    assert response.status_code == 200
    assert x509.load_pem_x509_certificate(response.content).extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_own_certificate_files(server_factory: Any, tmp_path: Path, certs_dir: Path) -> None:
    own = tmp_path / "own"
    chain, key = ensure_certificates(own)
    (own / "ca.key").unlink()  # the server must not need, nor make, a CA of its own
    live = server_factory("--cert", str(chain), "--key", str(key), certs=own)
    assert not (own / "ca.key").exists()
    with live.http() as http:
        assert http.get("/healthz").status_code == 200
