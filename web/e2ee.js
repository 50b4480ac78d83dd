'use strict';
// The cryptographic core of SecureChat's end-to-end encryption, in WebCrypto alone (no
// library). Not wired into the chat page yet: keys, sharing and verification come next
// (issue 12). What is here:
//
// - device keys: ECDH (X25519 where the browser has it, else P-256) and signing (Ed25519
//   where available, else ECDSA P-256 with SHA-256), private halves non-extractable;
// - the sender chain (the Megolm shape): from a 32-byte chain key, message key i is
//   HMAC-SHA256(ck_i, 0x01) and ck_{i+1} = HMAC-SHA256(ck_i, 0x02), so a key leaked for
//   message i opens neither earlier messages nor (without ck) later ones;
// - per message: AES-256-GCM key and nonce from HKDF-SHA256(mk, salt 32 zero bytes,
//   info "SecureChat v1 message", 44 bytes), with the session id and index as
//   associated data, so a ciphertext cannot be moved to another index or session;
// - the envelope {v: 1, sid, i, ct, sig}: `sig` signs "sc-e2ee-v1\n" + sid + "\n" + i +
//   "\n" + ct with the sender device's signing key; a receiver checks it before decrypting,
//   refuses an index it has used (replay), and keeps at most 2,000 skipped message keys.
(function (global) {
  const subtle = global.crypto && global.crypto.subtle;
  const te = new TextEncoder();
  const td = new TextDecoder();
  const VERSION = 1;
  const MAX_SKIP = 2000;

  function b64(bytes) {
    let s = '';
    const a = new Uint8Array(bytes);
    for (let i = 0; i < a.length; i++) s += String.fromCharCode(a[i]);
    return btoa(s);
  }
  function unb64(text) {
    const s = atob(text);
    const out = new Uint8Array(s.length);
    for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
    return out;
  }
  function concat(a, b) {
    const out = new Uint8Array(a.length + b.length);
    out.set(a, 0);
    out.set(b, a.length);
    return out;
  }

  async function hmac(keyBytes, data) {
    const key = await subtle.importKey('raw', keyBytes, { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
    return new Uint8Array(await subtle.sign('HMAC', key, data));
  }

  // One step of the sender chain: this message's key and the next chain key.
  async function step(chainKey) {
    return { messageKey: await hmac(chainKey, new Uint8Array([1])), next: await hmac(chainKey, new Uint8Array([2])) };
  }

  // AES-GCM key and nonce of one message key.
  async function messageKeys(messageKey) {
    const base = await subtle.importKey('raw', messageKey, 'HKDF', false, ['deriveBits']);
    const bits = new Uint8Array(await subtle.deriveBits(
      { name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info: te.encode('SecureChat v1 message') }, base, 44 * 8));
    return { key: bits.slice(0, 32), iv: bits.slice(32, 44) };
  }

  function aad(sid, index) { return te.encode('sc-e2ee-v1\n' + sid + '\n' + index); }
  function signedBytes(sid, index, ct) { return te.encode('sc-e2ee-v1\n' + sid + '\n' + index + '\n' + ct); }

  async function seal(messageKey, sid, index, plaintext) {
    const k = await messageKeys(messageKey);
    const key = await subtle.importKey('raw', k.key, 'AES-GCM', false, ['encrypt']);
    const ct = await subtle.encrypt({ name: 'AES-GCM', iv: k.iv, additionalData: aad(sid, index) }, key, te.encode(plaintext));
    return b64(ct);
  }

  async function open(messageKey, sid, index, ct) {
    const k = await messageKeys(messageKey);
    const key = await subtle.importKey('raw', k.key, 'AES-GCM', false, ['decrypt']);
    const pt = await subtle.decrypt({ name: 'AES-GCM', iv: k.iv, additionalData: aad(sid, index) }, key, unb64(ct));
    return td.decode(pt);
  }

  // Signing: Ed25519 where the browser has it, else ECDSA P-256.
  async function signingAlgorithm() {
    try {
      await subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
      return { name: 'Ed25519' };
    } catch (e) {
      return { name: 'ECDSA', namedCurve: 'P-256', hash: 'SHA-256' };
    }
  }
  async function ecdhAlgorithm() {
    try {
      await subtle.generateKey({ name: 'X25519' }, false, ['deriveBits']);
      return { name: 'X25519' };
    } catch (e) {
      return { name: 'ECDH', namedCurve: 'P-256' };
    }
  }

  async function generateDeviceKeys() {
    const sigAlg = await signingAlgorithm(), dhAlg = await ecdhAlgorithm();
    const signing = await subtle.generateKey(sigAlg, false, ['sign', 'verify']);
    const ecdh = await subtle.generateKey(dhAlg, false, ['deriveBits']);
    return {
      signing: signing, ecdh: ecdh,
      public: {
        sig_alg: sigAlg.name, sig: b64(await subtle.exportKey('raw', signing.publicKey)),
        dh_alg: dhAlg.name, dh: b64(await subtle.exportKey('raw', ecdh.publicKey)),
      },
    };
  }

  function verifyParams(key) {
    return key.algorithm.name === 'ECDSA' ? { name: 'ECDSA', hash: 'SHA-256' } : { name: key.algorithm.name };
  }
  async function sign(privateKey, bytes) { return b64(await subtle.sign(verifyParams(privateKey), privateKey, bytes)); }
  async function verify(publicKey, signature, bytes) {
    try { return await subtle.verify(verifyParams(publicKey), publicKey, unb64(signature), bytes); } catch (e) { return false; }
  }

  // A device's sending chain in one room.
  class OutboundSession {
    constructor(sid, chainKey, index) {
      this.sid = sid;
      this.chainKey = chainKey;
      this.index = index || 0;
    }
    static async create() {
      const id = new Uint8Array(16);
      global.crypto.getRandomValues(id);
      const ck = new Uint8Array(32);
      global.crypto.getRandomValues(ck);
      return new OutboundSession(b64(id), ck, 0);
    }
    // What a member needs to read from now on (sent to each member device over its pairwise channel).
    share() { return { sid: this.sid, ck: b64(this.chainKey), i: this.index }; }
    async encrypt(plaintext, signingKey) {
      const s = await step(this.chainKey);
      const i = this.index;
      const ct = await seal(s.messageKey, this.sid, i, plaintext);
      this.chainKey = s.next;
      this.index = i + 1;
      return { v: VERSION, sid: this.sid, i: i, ct: ct, sig: await sign(signingKey, signedBytes(this.sid, i, ct)) };
    }
  }

  // A member's copy of someone's chain, from a share.
  class InboundSession {
    constructor(share, senderKey) {
      this.sid = share.sid;
      this.chainKey = unb64(share.ck);
      this.index = share.i;      // the next index the chain key is at
      this.senderKey = senderKey;
      this.skipped = new Map();  // index -> message key, for messages that arrive late
      this.used = new Set();
    }
    async keyFor(i) {
      if (i < this.index) {
        const mk = this.skipped.get(i);
        if (!mk) throw new Error('no key for that message (before the share, or already read)');
        this.skipped.delete(i);
        return mk;
      }
      if (i - this.index > MAX_SKIP) throw new Error('too far ahead');
      while (this.index < i) {
        const s = await step(this.chainKey);
        this.skipped.set(this.index, s.messageKey);
        if (this.skipped.size > MAX_SKIP) this.skipped.delete(this.skipped.keys().next().value);
        this.chainKey = s.next;
        this.index += 1;
      }
      const s = await step(this.chainKey);
      this.chainKey = s.next;
      this.index += 1;
      return s.messageKey;
    }
    async decrypt(env) {
      if (!env || env.v !== VERSION) throw new Error('unknown envelope version');
      if (env.sid !== this.sid || !Number.isInteger(env.i) || env.i < 0) throw new Error('not of this session');
      if (this.used.has(env.i)) throw new Error('replayed message');
      if (!(await verify(this.senderKey, env.sig, signedBytes(env.sid, env.i, env.ct)))) throw new Error('bad signature');
      const mk = await this.keyFor(env.i);
      const text = await open(mk, env.sid, env.i, env.ct);
      this.used.add(env.i);
      return text;
    }
  }

  global.SecureChatE2EE = {
    VERSION: VERSION, b64: b64, unb64: unb64, concat: concat, hmac: hmac, step: step, messageKeys: messageKeys,
    seal: seal, open: open, sign: sign, verify: verify, signedBytes: signedBytes, aad: aad,
    generateDeviceKeys: generateDeviceKeys, signingAlgorithm: signingAlgorithm, ecdhAlgorithm: ecdhAlgorithm,
    OutboundSession: OutboundSession, InboundSession: InboundSession,
  };
})(window);
