"""TLS audit of the gateway with sslyze (PyPI): protocol versions, cipher suites, compression,
renegotiation and the classic TLS attacks. The full result is saved as
test-artifacts/tls/sslyze.json and summarised in test-artifacts/tls/report.txt (see docs/security.md)."""
import os

import pytest
from sslyze import (ScanCommand, ScanCommandAttemptStatusEnum, Scanner, ServerNetworkLocation, ServerScanRequest,
                    ServerScanResultAsJson, ServerScanStatusEnum)
from sslyze.__version__ import __version__ as SSLYZE_VERSION

from conftest import ROOT

COMMANDS = {
    ScanCommand.SSL_2_0_CIPHER_SUITES, ScanCommand.SSL_3_0_CIPHER_SUITES, ScanCommand.TLS_1_0_CIPHER_SUITES,
    ScanCommand.TLS_1_1_CIPHER_SUITES, ScanCommand.TLS_1_2_CIPHER_SUITES, ScanCommand.TLS_1_3_CIPHER_SUITES,
    ScanCommand.TLS_COMPRESSION, ScanCommand.SESSION_RENEGOTIATION, ScanCommand.HEARTBLEED,
    ScanCommand.OPENSSL_CCS_INJECTION, ScanCommand.TLS_FALLBACK_SCSV, ScanCommand.ROBOT,
    ScanCommand.ELLIPTIC_CURVES, ScanCommand.TLS_EXTENDED_MASTER_SECRET, ScanCommand.TLS_1_3_EARLY_DATA,
    ScanCommand.HTTP_HEADERS,
}


@pytest.fixture(scope="module")
def scan(shared_deployment):
    scanner = Scanner()
    scanner.queue_scans([ServerScanRequest(server_location=ServerNetworkLocation("localhost", shared_deployment.port),
                                           scan_commands=COMMANDS)])
    [result] = list(scanner.get_results())
    assert result.scan_status == ServerScanStatusEnum.COMPLETED, result.connectivity_error_trace
    out = os.path.join(ROOT, "test-artifacts", "tls")
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "sslyze.json"), "w") as f:
        f.write(ServerScanResultAsJson.model_validate(result).model_dump_json(indent=2))
    _write_report(result.scan_result)
    return result.scan_result


def attempt(scan, name):
    a = getattr(scan, name)
    assert a.status == ScanCommandAttemptStatusEnum.COMPLETED, (name, a.error_reason, a.error_trace)
    return a.result


def suites(scan, name):
    return [s.cipher_suite.name for s in attempt(scan, name).accepted_cipher_suites]


def test_only_tls12_and_tls13(scan):
    for old in ["ssl_2_0_cipher_suites", "ssl_3_0_cipher_suites", "tls_1_0_cipher_suites", "tls_1_1_cipher_suites"]:
        assert suites(scan, old) == [], old
    assert suites(scan, "tls_1_3_cipher_suites")
    assert suites(scan, "tls_1_2_cipher_suites")


def test_only_forward_secret_aead_suites(scan):
    tls12 = suites(scan, "tls_1_2_cipher_suites")
    for name in tls12:
        assert name.startswith("TLS_ECDHE_"), name
        assert "_GCM_" in name or "CHACHA20_POLY1305" in name, name
    for name in suites(scan, "tls_1_3_cipher_suites"):
        assert "_GCM_" in name or "CHACHA20_POLY1305" in name, name


def test_no_compression_and_secure_renegotiation(scan):
    assert attempt(scan, "tls_compression").supports_compression is False
    renegotiation = attempt(scan, "session_renegotiation")
    assert renegotiation.supports_secure_renegotiation is True
    assert renegotiation.is_vulnerable_to_client_renegotiation_dos is False


def test_not_vulnerable_to_known_tls_attacks(scan):
    assert attempt(scan, "heartbleed").is_vulnerable_to_heartbleed is False
    assert attempt(scan, "openssl_ccs_injection").is_vulnerable_to_ccs_injection is False
    assert attempt(scan, "tls_fallback_scsv").supports_fallback_scsv is True
    assert attempt(scan, "robot").robot_result.name in ("NOT_VULNERABLE_NO_ORACLE", "NOT_VULNERABLE_RSA_NOT_SUPPORTED")
    assert attempt(scan, "tls_1_3_early_data").supports_early_data is False
    assert attempt(scan, "tls_extended_master_secret").supports_ems_extension is True


def test_hsts_is_sent(scan):
    hsts = attempt(scan, "http_headers").strict_transport_security_header
    assert hsts is not None and hsts.max_age >= 15552000


def _write_report(scan):
    lines = ["sslyze %s against the gateway" % SSLYZE_VERSION]
    for name in ["ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1", "tls_1_2", "tls_1_3"]:
        accepted = suites(scan, name + "_cipher_suites")
        lines.append("%-8s %s" % (name, ", ".join(accepted) if accepted else "refused"))
    curves = attempt(scan, "elliptic_curves")
    lines.append("curves   %s" % ", ".join(c.name for c in curves.supported_curves or []))
    lines.append("compression %s; secure renegotiation %s; client renegotiation DoS %s" % (
        attempt(scan, "tls_compression").supports_compression,
        attempt(scan, "session_renegotiation").supports_secure_renegotiation,
        attempt(scan, "session_renegotiation").is_vulnerable_to_client_renegotiation_dos))
    lines.append("heartbleed %s; CCS injection %s; ROBOT %s; fallback SCSV %s; early data %s; EMS %s" % (
        attempt(scan, "heartbleed").is_vulnerable_to_heartbleed,
        attempt(scan, "openssl_ccs_injection").is_vulnerable_to_ccs_injection,
        attempt(scan, "robot").robot_result.name,
        attempt(scan, "tls_fallback_scsv").supports_fallback_scsv,
        attempt(scan, "tls_1_3_early_data").supports_early_data,
        attempt(scan, "tls_extended_master_secret").supports_ems_extension))
    with open(os.path.join(ROOT, "test-artifacts", "tls", "report.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
