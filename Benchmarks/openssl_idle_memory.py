"""Resident memory of one idle server-side TLS connection with Debian's OpenSSL 3 (libssl.so.3
through Python's ssl module, memory BIOs, buffers released while idle), as a floor to compare the
gateway's per-connection memory with (docs/benchmarks.md).

    python3 Benchmarks/openssl_idle_memory.py [connections]

Each connection does a TLS handshake with an ECDSA P-256 certificate and receives a 420-byte
request, like a WebSocket upgrade; the client side is then dropped."""
import os
import shutil
import ssl
import subprocess
import sys
import tempfile


def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    d = tempfile.mkdtemp()
    try:
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost"], check=True, capture_output=True)
        server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(d)
    server.minimum_version = ssl.TLSVersion.TLSv1_2
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE

    def connection():
        s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
        s = server.wrap_bio(s_in, s_out, server_side=True)
        c = client.wrap_bio(c_in, c_out)
        for _ in range(10):
            for side in (c, s):
                try:
                    side.do_handshake()
                except ssl.SSLWantReadError:
                    pass
            s_in.write(c_out.read())
            c_in.write(s_out.read())
        c.write(b"GET /ws HTTP/1.1\r\n" + b"x" * 400 + b"\r\n\r\n")
        s_in.write(c_out.read())
        s.read(4096)
        return s, s_in, s_out

    held = [connection() for _ in range(200)]  # warm up the allocator
    before = rss_kib()
    held += [connection() for _ in range(n)]
    print("%s: %.2f KiB resident per idle server-side TLS connection (%d connections)" %
          (ssl.OPENSSL_VERSION, (rss_kib() - before) / n, n))


if __name__ == "__main__":
    main()
