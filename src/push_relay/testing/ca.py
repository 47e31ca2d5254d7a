"""A throw-away certificate authority for simulators served over TLS on loopback."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

_LOOPBACK_NAMES: list[x509.GeneralName] = [
    x509.DNSName("localhost"),
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
]


@dataclass
class TestCA:
    """A CA plus one server certificate valid for localhost, 127.0.0.1 and ::1."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    directory: Path

    __test__ = False  # not a pytest test class, despite the name

    @classmethod
    def create(cls, directory: Path | None = None) -> TestCA:
        directory = directory or Path(tempfile.mkdtemp(prefix="push-relay-ca-"))
        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "push-relay test CA")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(_LOOPBACK_NAMES), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        ca = cls(
            ca_pem=ca_cert.public_bytes(serialization.Encoding.PEM),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            directory=directory,
        )
        ca.ca_file.write_bytes(ca.ca_pem)
        ca._cert_file.write_bytes(ca.cert_pem)
        ca._key_file.write_bytes(ca.key_pem)
        ca._key_file.chmod(0o600)
        return ca

    @property
    def ca_file(self) -> Path:
        """PEM of the CA: point `SSL_CERT_FILE` here to make the relay trust simulators."""
        return self.directory / "ca.pem"

    @property
    def _cert_file(self) -> Path:
        return self.directory / "server.pem"

    @property
    def _key_file(self) -> Path:
        return self.directory / "server-key.pem"

    def server_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self._cert_file, self._key_file)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    def client_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        """A client context trusting only this CA (for test clients talking to simulators)."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if alpn:
            context.set_alpn_protocols(alpn)
        return context
