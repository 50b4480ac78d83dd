'use strict';
// The cryptographic core of SecureChat's end-to-end encryption, in WebCrypto alone (no
// library). web/secure.js builds the keys, sharing and verification on it. What is here:
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

  // A member's read access to one sender chain, from its share: the key of any index at or
  // after the share's, computed forward from the nearest chain key already known (each kept,
  // at most MAX_SKIP), so history can be read in any order and read again after a reload.
  class ChainReader {
    constructor(ck, index) {
      this.start = index;
      this.keys = new Map([[index, ck]]);
      this.highest = index;
    }
    async messageKey(i) {
      if (!Number.isInteger(i) || i < this.start) throw new Error('no key for that message (before the share)');
      if (i - this.start > 10 * MAX_SKIP) throw new Error('too far ahead');
      let j = Math.min(i, this.highest);
      while (!this.keys.has(j)) j--;
      let ck = this.keys.get(j);
      while (j < i) {
        ck = (await step(ck)).next;
        j += 1;
        if (this.keys.size < MAX_SKIP) this.keys.set(j, ck);
        if (j > this.highest) this.highest = j;
      }
      return (await step(ck)).messageKey;
    }
  }

  // When a device must start a new sending chain in a room (the rule, without I/O): none yet,
  // 100 messages sent on it, a week old, or a member (or a member's device) gone since it began.
  const ROTATE_MESSAGES = 100;
  const ROTATE_MS = 7 * 24 * 3600 * 1000;
  function rotationReason(session, now) {
    if (!session) return 'none';
    if (session.stale) return 'member left';
    if (session.count >= ROTATE_MESSAGES) return 'messages';
    if (now - session.created >= ROTATE_MS) return 'age';
    return null;
  }

  // The bytes an account key signs for each of its devices.
  function deviceBytes(user, d) {
    return te.encode(['sc-device-v1', user, d.id, d.dh_alg, d.dh, d.sig_alg, d.sig, d.account_alg, d.account].join('\n'));
  }
  function importPublic(alg, b64key, usages) {
    const params = alg === 'ECDSA' ? { name: 'ECDSA', namedCurve: 'P-256' } : alg === 'ECDH' ? { name: 'ECDH', namedCurve: 'P-256' } : { name: alg };
    return subtle.importKey('raw', unb64(b64key), params, false, usages);
  }

  // The pairwise channel between two devices, for key shares: ECDH of the two devices' keys,
  // HKDF with a fresh salt per message and both devices named in the info, AES-256-GCM with
  // the same names as associated data, and the sender device's signature over it all.
  function pairInfo(fromUser, fromDevice, toUser, toDevice) {
    return 'SecureChat v1 pairwise\n' + fromUser + '/' + fromDevice + '\n' + toUser + '/' + toDevice;
  }
  async function pairKey(myDh, theirAlg, theirDh, salt, info) {
    const pub = await importPublic(theirAlg, theirDh, []);
    const shared = await subtle.deriveBits({ name: myDh.algorithm.name, public: pub }, myDh, 256);
    const base = await subtle.importKey('raw', shared, 'HKDF', false, ['deriveBits']);
    const bits = new Uint8Array(await subtle.deriveBits({ name: 'HKDF', hash: 'SHA-256', salt: salt, info: te.encode(info) }, base, 44 * 8));
    return { key: await subtle.importKey('raw', bits.slice(0, 32), 'AES-GCM', false, ['encrypt', 'decrypt']), iv: bits.slice(32, 44) };
  }
  async function pairSeal(me, them, object) {
    const salt = new Uint8Array(16);
    global.crypto.getRandomValues(salt);
    const info = pairInfo(me.user, me.device, them.user, them.device);
    const k = await pairKey(me.dh, them.dh_alg, them.dh, salt, info);
    const ct = b64(await subtle.encrypt({ name: 'AES-GCM', iv: k.iv, additionalData: te.encode(info) }, k.key, te.encode(JSON.stringify(object))));
    const s = b64(salt);
    return { v: VERSION, salt: s, ct: ct, sig: await sign(me.sign, te.encode(info + '\n' + s + '\n' + ct)) };
  }
  async function pairOpen(me, from, payload) {
    if (!payload || payload.v !== VERSION || typeof payload.ct !== 'string' || typeof payload.salt !== 'string') throw new Error('unknown payload version');
    const info = pairInfo(from.user, from.device, me.user, me.device);
    const sigKey = await importPublic(from.sig_alg, from.sig, ['verify']);
    if (!(await verify(sigKey, payload.sig, te.encode(info + '\n' + payload.salt + '\n' + payload.ct)))) throw new Error('bad signature');
    const k = await pairKey(me.dh, from.dh_alg, from.dh, unb64(payload.salt), info);
    const pt = await subtle.decrypt({ name: 'AES-GCM', iv: k.iv, additionalData: te.encode(info) }, k.key, unb64(payload.ct));
    return JSON.parse(td.decode(pt));
  }

  // Safety number of two users (the Signal shape): per user, SHA-512 iterated 5,200 times over
  // the account key and the name; 30 bytes of it as six 5-digit chunks; the two halves in the
  // order of the names, so both sides show the same 60 digits.
  async function fingerprint(user, accountKey) {
    const key = unb64(accountKey);
    let h = new Uint8Array(await subtle.digest('SHA-512', concat(concat(new Uint8Array([0, 0]), key), te.encode(user))));
    for (let n = 1; n < 5200; n++) h = new Uint8Array(await subtle.digest('SHA-512', concat(h, key)));
    let digits = '';
    for (let c = 0; c < 6; c++) {
      let v = 0;
      for (let b = 0; b < 5; b++) v = v * 256 + h[c * 5 + b];
      digits += String(v % 100000).padStart(5, '0');
    }
    return digits;
  }
  async function safetyNumber(userA, keyA, userB, keyB) {
    const a = await fingerprint(userA, keyA), b = await fingerprint(userB, keyB);
    const digits = userA < userB ? a + b : b + a;
    return digits.match(/.{5}/g).join(' ');
  }

  // Recovery key: 20 random bytes in Crockford's base32, 8 groups of 4 (no I, L, O or U, so it
  // reads aloud and types back without confusion).
  const B32 = '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
  function newRecoveryKey() {
    const bytes = new Uint8Array(20);
    global.crypto.getRandomValues(bytes);
    let bits = 0, value = 0, out = '';
    for (let i = 0; i < bytes.length; i++) {
      value = ((value << 8) | bytes[i]) & 0xffff;
      bits += 8;
      while (bits >= 5) { out += B32[(value >>> (bits - 5)) & 31]; bits -= 5; }
    }
    return out.match(/.{4}/g).join('-');
  }
  function parseRecoveryKey(text) {
    const s = String(text).toUpperCase().replace(/[\s-]/g, '').replace(/O/g, '0').replace(/[IL]/g, '1');
    if (s.length !== 32) throw new Error('a recovery key has 32 letters and digits');
    const out = new Uint8Array(20);
    let bits = 0, value = 0, n = 0;
    for (let i = 0; i < s.length; i++) {
      const v = B32.indexOf(s[i]);
      if (v < 0) throw new Error('not a recovery key: ' + s[i]);
      value = ((value << 5) | v) & 0xffff;
      bits += 5;
      if (bits >= 8) { out[n++] = (value >>> (bits - 8)) & 255; bits -= 8; }
    }
    return out;
  }
  // The key that encrypts the user's backup, from the recovery key (random, so HKDF suffices).
  async function backupKey(recoveryBytes) {
    const base = await subtle.importKey('raw', recoveryBytes, 'HKDF', false, ['deriveKey']);
    return subtle.deriveKey({ name: 'HKDF', hash: 'SHA-256', salt: new Uint8Array(32), info: te.encode('SecureChat v1 backup') },
      base, { name: 'AES-GCM', length: 256 }, false, ['encrypt', 'decrypt']);
  }
  async function boxSeal(key, bytes, label) {
    const iv = new Uint8Array(12);
    global.crypto.getRandomValues(iv);
    return { iv: b64(iv), ct: b64(await subtle.encrypt({ name: 'AES-GCM', iv: iv, additionalData: te.encode(label) }, key, bytes)) };
  }
  async function boxOpen(key, box, label) {
    return new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: unb64(box.iv), additionalData: te.encode(label) }, key, unb64(box.ct)));
  }

  // A file: a fresh AES-256-GCM key and nonce, both carried inside the encrypted message.
  async function encryptFile(bytes) {
    const key = await subtle.generateKey({ name: 'AES-GCM', length: 256 }, true, ['encrypt']);
    const iv = new Uint8Array(12);
    global.crypto.getRandomValues(iv);
    const ct = await subtle.encrypt({ name: 'AES-GCM', iv: iv }, key, bytes);
    return { ciphertext: new Uint8Array(ct), key: b64(await subtle.exportKey('raw', key)), iv: b64(iv) };
  }
  async function decryptFile(ciphertext, keyB64, ivB64) {
    const key = await subtle.importKey('raw', unb64(keyB64), 'AES-GCM', false, ['decrypt']);
    return new Uint8Array(await subtle.decrypt({ name: 'AES-GCM', iv: unb64(ivB64) }, key, ciphertext));
  }

  global.SecureChatE2EE = {
    ChainReader: ChainReader, rotationReason: rotationReason, ROTATE_MESSAGES: ROTATE_MESSAGES, ROTATE_MS: ROTATE_MS,
    deviceBytes: deviceBytes, importPublic: importPublic, pairKey: pairKey, pairSeal: pairSeal, pairOpen: pairOpen,
    fingerprint: fingerprint, safetyNumber: safetyNumber, newRecoveryKey: newRecoveryKey, parseRecoveryKey: parseRecoveryKey,
    backupKey: backupKey, boxSeal: boxSeal, boxOpen: boxOpen, encryptFile: encryptFile, decryptFile: decryptFile,
    VERSION: VERSION, b64: b64, unb64: unb64, concat: concat, hmac: hmac, step: step, messageKeys: messageKeys,
    seal: seal, open: open, sign: sign, verify: verify, signedBytes: signedBytes, aad: aad,
    generateDeviceKeys: generateDeviceKeys, signingAlgorithm: signingAlgorithm, ecdhAlgorithm: ecdhAlgorithm,
    OutboundSession: OutboundSession, InboundSession: InboundSession,
  };
})(window);
