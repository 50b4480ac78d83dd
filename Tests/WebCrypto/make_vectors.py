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

    # Safety number: per user SHA-512 iterated 5,200 times over (0x0000 || key || name), then
    # (h || key); six 5-byte chunks mod 100,000; the halves in name order.
    def fingerprint(user, key):
        h = hashlib.sha512(b"\x00\x00" + key + user.encode()).digest()
        for _ in range(5199):
            h = hashlib.sha512(h + key).digest()
        return "".join("%05d" % (int.from_bytes(h[c * 5:c * 5 + 5], "big") % 100000) for c in range(6))
    key_a, key_b = bytes(range(100, 132)), bytes(range(140, 172))
    digits = fingerprint("alice", key_a) + fingerprint("bob", key_b)
    vectors["safety"] = {"a": "alice", "key_a": b64(key_a), "b": "bob", "key_b": b64(key_b),
                         "number": " ".join(digits[k:k + 5] for k in range(0, 60, 5))}

    # The pairwise channel: X25519 of two known keys, HKDF with salt and info, AES-GCM with the info as AAD.
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    a_priv = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    b_priv = X25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
    raw = lambda k: k.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    salt = bytes(range(16))
    info = "SecureChat v1 pairwise\nalice/devA\nbob/devB"
    shared = a_priv.exchange(b_priv.public_key())
    bits = HKDF(algorithm=hashes.SHA256(), length=44, salt=salt, info=info.encode()).derive(shared)
    body = json.dumps({"t": "share", "sid": sid, "ck": b64(bytes(32)), "i": 7}, separators=(",", ":"))
    pair_ct = AESGCM(bits[:32]).encrypt(bits[32:], body.encode(), info.encode())
    b_pkcs8 = b_priv.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    vectors["pairwise"] = {"a_public": b64(raw(a_priv)), "b_pkcs8": b64(b_pkcs8), "salt": b64(salt), "info": info,
                           "body": body, "ct": b64(pair_ct)}

    # Recovery key -> backup key: HKDF-SHA256(20 bytes, 32 zero bytes, "SecureChat v1 backup").
    recovery = bytes(range(200, 220))
    bkey = HKDF(algorithm=hashes.SHA256(), length=32, salt=bytes(32), info=b"SecureChat v1 backup").derive(recovery)
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    n = int.from_bytes(recovery, "big")
    text = "".join(alphabet[(n >> (155 - 5 * k)) & 31] for k in range(32))
    iv = bytes(12)
    vectors["recovery"] = {"text": "-".join(text[k:k + 4] for k in range(0, 32, 4)), "bytes": b64(recovery),
                           "box": {"iv": b64(iv), "ct": b64(AESGCM(bkey).encrypt(iv, b"backup body", b"sc-sessions-v1"))}}
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "vectors.js"), "w") as f:
        f.write("// Written by make_vectors.py; do not edit.\nwindow.VECTORS = " + json.dumps(vectors, indent=1) + ";\n")


if __name__ == "__main__":
    main()
