// Written by make_vectors.py; do not edit.
window.VECTORS = {
 "sid": "c2lkLWZvci12ZWN0b3JzIQ==",
 "steps": [
  {
   "i": 0,
   "chain_key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
   "message_key": "m0yBIKSCOpX0fN4XokT0UHJE7m45V9H6ufoptE04Kbc=",
   "next_chain_key": "QwTCLISlN1WrCOrY2XqNQpvl76SAaC160don9z4fvh0=",
   "aes_key": "/S+iCLYbLg93WPWEpP9F6S2tZAsXUJ9t5S5flk0mMqM=",
   "iv": "GJfZbSu3p38Ylchg",
   "plaintext": "message 0: caf\u00e9 \ud83d\ude00",
   "ct": "CZoaTASGoAOHBAJzLDjSUTygAm2C9neex0iqB1kfg5b4UCtMGQ=="
  },
  {
   "i": 1,
   "chain_key": "QwTCLISlN1WrCOrY2XqNQpvl76SAaC160don9z4fvh0=",
   "message_key": "93A8Od6p/rMMtjaTBK17hHuayljBFSrzF6p4qRvt3aE=",
   "next_chain_key": "JvyGubEwPqLmb1PtDx3nU0B+VCjK9eRA5rUcSNS9SUk=",
   "aes_key": "Sflfn0YYOhbFYPdnNq2SDy1LvA3un00fFvhVvCIfYCw=",
   "iv": "1cTVK0gnn6JA4E9K",
   "plaintext": "message 1: caf\u00e9 \ud83d\ude00",
   "ct": "FLseptuDgGkAk4anNXra8Ny7nIsomte2ImBiAXi0JQgAfmUFOA=="
  },
  {
   "i": 2,
   "chain_key": "JvyGubEwPqLmb1PtDx3nU0B+VCjK9eRA5rUcSNS9SUk=",
   "message_key": "XSBCv0xgPPOqcZRzntCLwcaYp+x/uOd9PqJYjG/njOE=",
   "next_chain_key": "BEKLgTZ1A2wHIz7dC+E7fEImEKjD1uzHyPvYVnHkehM=",
   "aes_key": "3oDPCSaDC9sdGT6dY1dcI33WiwT2Yrs01OWF0oCNLHE=",
   "iv": "sPh8OENaqmfMiqt/",
   "plaintext": "message 2: caf\u00e9 \ud83d\ude00",
   "ct": "+nCTQhN2wqv5bzEwZEjNdpIhJnn6dAfWusXTuXyGIUBZz2vWng=="
  }
 ],
 "ed25519_public": "Kay64UG8yvCyLhqU000LxzYeUm0L/hLIl5S8kyKWbdc=",
 "ed25519_signature": "Fxk4NIbNNkCEJlTxJ18g/D1drZNAEznzI+pxFD0exSi//V0RyKRpod7UAr0XM8CKvtHr+2/VxbhemvO/tbpTAA==",
 "safety": {
  "a": "alice",
  "key_a": "ZGVmZ2hpamtsbW5vcHFyc3R1dnd4eXp7fH1+f4CBgoM=",
  "b": "bob",
  "key_b": "jI2Oj5CRkpOUlZaXmJmam5ydnp+goaKjpKWmp6ipqqs=",
  "number": "53684 05177 24698 78501 38455 20211 96131 34052 42304 61596 11241 19486"
 },
 "pairwise": {
  "a_public": "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw=",
  "b_pkcs8": "MC4CAQAwBQYDK2VuBCIEICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj9A",
  "salt": "AAECAwQFBgcICQoLDA0ODw==",
  "info": "SecureChat v1 pairwise\nalice/devA\nbob/devB",
  "body": "{\"t\":\"share\",\"sid\":\"c2lkLWZvci12ZWN0b3JzIQ==\",\"ck\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\",\"i\":7}",
  "ct": "FpruBPldu9T7/jiAv3V+phINm44FC2oTw5JJJfv9+RSVCdFJXm6bKjr/widK99bfl0Ab0WEHl7ahUaNR5eNz8oteqbejpsXVYpMb1Y/yNY8s9/qLd80/JAVhmJ9Q/dp+et970F2eJqjCg7aNGxdkqOl/swHDtRlu"
 },
 "recovery": {
  "text": "S34W-NJYC-SQ7C-ZM6H-TB9X-9NEP-TZCD-KPPV",
  "bytes": "yMnKy8zNzs/Q0dLT1NXW19jZ2ts=",
  "box": {
   "iv": "AAAAAAAAAAAAAAAA",
   "ct": "66GtuX8g5nWlbwvl24jjjAAvKoxA91qoazP0"
  }
 }
};
