"""The cluster's own certificate authority: mutual TLS on the link between nodes.

Every node of a cluster holds the same CA (it comes with the join file) and mints its
own link certificate from it at each start, naming every address it may be dialled
on, so a peer verifies both the chain and the host name it dialled. Nothing outside
the cluster signs anything here: a certificate from any other CA is refused.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_YEARS = 20
LINK_CERT_DAYS = 825


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def new_ca(cluster_name: str) -> tuple[bytes, bytes]:
    """A fresh CA for one cluster: (certificate PEM, key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callrec"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"callrec cluster CA {cluster_name}"),
    ])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def link_certificate(
    ca_cert_pem: bytes, ca_key_pem: bytes, node_id: str, names: Iterable[str]
) -> tuple[bytes, bytes]:
    """A certificate for this node's end of the cluster link, signed by the cluster CA.

    Used both ways (routes dial and accept), so it carries server and client usage."""
    ca_cert = x509.load_pem_x509_certificate(ca_cert_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the cluster CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in [node_id, *names]:
        if not name or name in seen:
            continue
        seen.add(name)
        try:
            alt_names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alt_names.append(x509.DNSName(name))
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "callrec"),
            x509.NameAttribute(NameOID.COMMON_NAME, node_id),
        ]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=LINK_CERT_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                   ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


def local_names(*extra: str | None) -> list[str]:
    """Every name and address this host may be dialled on: host names, each
    interface's addresses, and whatever the operator configured (bind, advertise)."""
    names: list[str] = [name for name in extra if name and name not in ("0.0.0.0", "::")]
    host = socket.gethostname()
    names += [host, socket.getfqdn(), "localhost", "127.0.0.1", "::1"]
    try:
        import ifaddr  # shipped with aiortc

        for adapter in ifaddr.get_adapters():
            for ip in adapter.ips:
                address = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
                names.append(address.split("%")[0])
    except Exception:  # an exotic host: the configured names still go in
        pass
    unique: list[str] = []
    for name in names:
        if name not in unique:
            unique.append(name)
    return unique
