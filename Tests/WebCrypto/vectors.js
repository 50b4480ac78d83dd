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
 "ed25519_signature": "Fxk4NIbNNkCEJlTxJ18g/D1drZNAEznzI+pxFD0exSi//V0RyKRpod7UAr0XM8CKvtHr+2/VxbhemvO/tbpTAA=="
};
