"""Writes vectors.js: known answers for web/e2ee.js, computed here with Python's
`cryptography` (an implementation independent of the browser's). Run it again after
changing the scheme; the browser test (test_browser_crypto.py) checks the page against it."""
import base64
import hashlib
import hmac
import json
import os

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


def b64(b):
    return base64.b64encode(b).decode()


def main():
    ck = bytes(range(32))
    sid = b64(b"sid-for-vectors!")
    steps = []
    for i in range(3):
        mk = hmac.new(ck, b"\x01", hashlib.sha256).digest()
        nxt = hmac.new(ck, b"\x02", hashlib.sha256).digest()
        bits = HKDF(algorithm=hashes.SHA256(), length=44, salt=bytes(32), info=b"SecureChat v1 message").derive(mk)
        key, iv = bits[:32], bits[32:]
        text = "message %d: caf\u00e9 \U0001F600" % i
        aad = ("sc-e2ee-v1\n%s\n%d" % (sid, i)).encode()
        ct = AESGCM(key).encrypt(iv, text.encode(), aad)
        steps.append({"i": i, "chain_key": b64(ck), "message_key": b64(mk), "next_chain_key": b64(nxt),
                      "aes_key": b64(key), "iv": b64(iv), "plaintext": text, "ct": b64(ct)})
        ck = nxt
    signer = Ed25519PrivateKey.from_private_bytes(bytes(range(32, 64)))
    public = signer.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    signed = ("sc-e2ee-v1\n%s\n0\n%s" % (sid, steps[0]["ct"])).encode()
    vectors = {"sid": sid, "steps": steps, "ed25519_public": b64(public), "ed25519_signature": b64(signer.sign(signed))}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.js"), "w") as f:
        f.write("// Written by make_vectors.py; do not edit.\nwindow.VECTORS = " + json.dumps(vectors, indent=1) + ";\n")


if __name__ == "__main__":
    main()
