'use strict';
// Runs web/e2ee.js against the known answers of vectors.js (made with Python's
// `cryptography`) and checks what must be refused. Results: window.__results, then
// window.__done = true; each also listed on the page.
(async function () {
  const E = window.SecureChatE2EE, V = window.VECTORS;
  const results = [];
  async function check(name, body) {
    let ok = false, detail = '';
    try { ok = (await body()) === true; if (!ok) detail = 'returned false'; } catch (e) { detail = String(e && e.message || e); }
    results.push({ name: name, ok: ok, detail: detail });
    const li = document.createElement('li');
    li.textContent = (ok ? 'PASS ' : 'FAIL ') + name + (detail ? ' — ' + detail : '');
    document.getElementById('results').appendChild(li);
  }
  async function refuses(promise) {
    try { await promise; return false; } catch (e) { return true; }
  }
  const same = function (a, b) { return E.b64(a) === E.b64(b); };

  for (const s of V.steps) {
    await check('chain step ' + s.i + ' matches the vector', async function () {
      const r = await E.step(E.unb64(s.chain_key));
      return same(r.messageKey, E.unb64(s.message_key)) && same(r.next, E.unb64(s.next_chain_key));
    });
    await check('message key ' + s.i + ' gives the vector AES key and nonce', async function () {
      const k = await E.messageKeys(E.unb64(s.message_key));
      return same(k.key, E.unb64(s.aes_key)) && same(k.iv, E.unb64(s.iv));
    });
    await check('ciphertext ' + s.i + ' matches the vector and opens', async function () {
      const ct = await E.seal(E.unb64(s.message_key), V.sid, s.i, s.plaintext);
      return ct === s.ct && (await E.open(E.unb64(s.message_key), V.sid, s.i, s.ct)) === s.plaintext;
    });
  }
  await check('an Ed25519 signature made by Python verifies here', async function () {
    const key = await crypto.subtle.importKey('raw', E.unb64(V.ed25519_public), { name: 'Ed25519' }, false, ['verify']);
    return E.verify(key, V.ed25519_signature, E.signedBytes(V.sid, 0, V.steps[0].ct));
  });
  await check('an inbound session from a share reads the vector chain in order and out of order', async function () {
    const key = await crypto.subtle.importKey('raw', E.unb64(V.ed25519_public), { name: 'Ed25519' }, false, ['verify']);
    const session = new E.InboundSession({ sid: V.sid, ck: V.steps[0].chain_key, i: 0 }, key);
    // Only message 0 carries a vector signature: check the key schedule through open() for 2 then 1.
    const mk2 = await session.keyFor(2), mk1 = await session.keyFor(1);
    return (await E.open(mk2, V.sid, 2, V.steps[2].ct)) === V.steps[2].plaintext &&
           (await E.open(mk1, V.sid, 1, V.steps[1].ct)) === V.steps[1].plaintext;
  });

  const alice = await E.generateDeviceKeys(), mallory = await E.generateDeviceKeys();
  await check('device keys use X25519 and Ed25519 here, private halves not extractable', async function () {
    return alice.public.dh_alg === 'X25519' && alice.public.sig_alg === 'Ed25519' &&
           !alice.signing.privateKey.extractable && !alice.ecdh.privateKey.extractable &&
           (await refuses(crypto.subtle.exportKey('pkcs8', alice.signing.privateKey)));
  });
  const out = await E.OutboundSession.create();
  const share = out.share();
  const e0 = await out.encrypt('first secret', alice.signing.privateKey);
  const e1 = await out.encrypt('second secret', alice.signing.privateKey);
  await check('an envelope carries its version, session, index and no plaintext', async function () {
    const json = JSON.stringify(e0);
    return e0.v === 1 && e0.sid === share.sid && e0.i === 0 && e1.i === 1 && json.indexOf('secret') < 0;
  });
  await check('a member decrypts both, in order', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    return (await inbound.decrypt(e0)) === 'first secret' && (await inbound.decrypt(e1)) === 'second secret';
  });
  await check('tampered ciphertext is refused', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    const bytes = E.unb64(e0.ct);
    bytes[0] ^= 1;
    const ct = E.b64(bytes);
    // Re-signed by the sender, so only the AES-GCM tag can catch it.
    const forged = { v: 1, sid: e0.sid, i: 0, ct: ct, sig: await E.sign(alice.signing.privateKey, E.signedBytes(e0.sid, 0, ct)) };
    return refuses(inbound.decrypt(forged));
  });
  await check('a wrong signature is refused', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    const forged = Object.assign({}, e0, { sig: await E.sign(mallory.signing.privateKey, E.signedBytes(e0.sid, 0, e0.ct)) });
    return refuses(inbound.decrypt(forged));
  });
  await check('a replayed message is refused', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    await inbound.decrypt(e0);
    return refuses(inbound.decrypt(e0));
  });
  await check('a ciphertext moved to another index is refused', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    const moved = { v: 1, sid: e1.sid, i: 0, ct: e1.ct, sig: await E.sign(alice.signing.privateKey, E.signedBytes(e1.sid, 0, e1.ct)) };
    return refuses(inbound.decrypt(moved));
  });
  await check('a share from a later index cannot read what came before it', async function () {
    const late = new E.InboundSession(out.share(), alice.signing.publicKey);
    return refuses(late.decrypt(e0));
  });
  await check('an unknown envelope version is refused', async function () {
    const inbound = new E.InboundSession(share, alice.signing.publicKey);
    return refuses(inbound.decrypt(Object.assign({}, e0, { v: 2 })));
  });

  // ---- keys, sharing, verification, recovery (web/secure.js builds on these) ----
  const te = new TextEncoder();
  await check('the safety number matches the vector, the same from both sides, 60 digits in 12 groups', async function () {
    const S = V.safety;
    const ab = await E.safetyNumber(S.a, S.key_a, S.b, S.key_b), ba = await E.safetyNumber(S.b, S.key_b, S.a, S.key_a);
    return ab === S.number && ba === S.number && /^(\d{5} ){11}\d{5}$/.test(ab);
  });
  await check('another account key gives another safety number', async function () {
    const S = V.safety;
    return (await E.safetyNumber(S.a, S.key_b, S.b, S.key_b)) !== S.number;
  });
  await check('the pairwise key (X25519, HKDF) opens the vector share', async function () {
    const P = V.pairwise;
    const priv = await crypto.subtle.importKey('pkcs8', E.unb64(P.b_pkcs8), { name: 'X25519' }, false, ['deriveBits']);
    const k = await E.pairKey(priv, 'X25519', P.a_public, E.unb64(P.salt), P.info);
    const pt = await crypto.subtle.decrypt({ name: 'AES-GCM', iv: k.iv, additionalData: te.encode(P.info) }, k.key, E.unb64(P.ct));
    return new TextDecoder().decode(pt) === P.body;
  });
  const bobKeys = await E.generateDeviceKeys();
  const me = { user: 'alice', device: 'A1', dh: alice.ecdh.privateKey, sign: alice.signing.privateKey };
  const bobEnd = { user: 'bob', device: 'B1', dh: bobKeys.ecdh.privateKey };
  const aliceSeen = { user: 'alice', device: 'A1', dh_alg: alice.public.dh_alg, dh: alice.public.dh, sig_alg: alice.public.sig_alg, sig: alice.public.sig };
  const sealedShare = await E.pairSeal(me, { user: 'bob', device: 'B1', dh_alg: bobKeys.public.dh_alg, dh: bobKeys.public.dh }, { t: 'share', sid: 's', ck: 'k', i: 3 });
  await check('a share over the pairwise channel opens at its device, and carries no key in clear', async function () {
    const body = await E.pairOpen(bobEnd, aliceSeen, sealedShare);
    return body.t === 'share' && body.i === 3 && JSON.stringify(sealedShare).indexOf('"ck"') < 0 && sealedShare.v === 1;
  });
  await check('a share addressed to another device is refused', async function () {
    return refuses(E.pairOpen({ user: 'bob', device: 'B2', dh: bobKeys.ecdh.privateKey }, aliceSeen, sealedShare));
  });
  await check('a share with a flipped byte is refused', async function () {
    const bytes = E.unb64(sealedShare.ct);
    bytes[3] ^= 4;
    return refuses(E.pairOpen(bobEnd, aliceSeen, Object.assign({}, sealedShare, { ct: E.b64(bytes) })));
  });
  await check('a share signed by another device than its sender is refused', async function () {
    const asMallory = Object.assign({}, aliceSeen, { sig_alg: mallory.public.sig_alg, sig: mallory.public.sig });
    return refuses(E.pairOpen(bobEnd, asMallory, sealedShare));
  });
  await check('an account key signs a device; any field changed fails', async function () {
    const acct = await crypto.subtle.generateKey({ name: 'Ed25519' }, false, ['sign', 'verify']);
    const d = Object.assign({ id: 'D1', account_alg: 'Ed25519', account: 'acct' }, alice.public);
    const sig = await E.sign(acct.privateKey, E.deviceBytes('alice', d));
    const other = Object.assign({}, d, { dh: bobKeys.public.dh });
    return (await E.verify(acct.publicKey, sig, E.deviceBytes('alice', d))) &&
      !(await E.verify(acct.publicKey, sig, E.deviceBytes('alice', other))) &&
      !(await E.verify(acct.publicKey, sig, E.deviceBytes('mallory', d)));
  });
  await check('the recovery key reads back as written, lower case, spaced, with O for 0', async function () {
    const R = V.recovery;
    const messy = R.text.toLowerCase().replace(/-/g, ' ').replace(/0/g, 'o');
    return E.b64(E.parseRecoveryKey(R.text)) === R.bytes && E.b64(E.parseRecoveryKey(messy)) === R.bytes;
  });
  await check('a new recovery key has 8 groups of 4 and 160 bits; a mistyped one is refused', async function () {
    const k = E.newRecoveryKey();
    return /^([0-9A-HJKMNP-TV-Z]{4}-){7}[0-9A-HJKMNP-TV-Z]{4}$/.test(k) && E.parseRecoveryKey(k).length === 20 &&
      (await refuses(Promise.resolve().then(function () { return E.parseRecoveryKey(k.slice(0, -1)); }))) &&
      (await refuses(Promise.resolve().then(function () { return E.parseRecoveryKey(k.slice(0, -1) + 'U'); })));
  });
  await check('the backup key of the recovery key opens the vector backup; another key does not', async function () {
    const R = V.recovery;
    const key = await E.backupKey(E.unb64(R.bytes));
    const body = new TextDecoder().decode(await E.boxOpen(key, R.box, 'sc-sessions-v1'));
    const wrong = await E.backupKey(E.parseRecoveryKey(E.newRecoveryKey()));
    return body === 'backup body' && (await refuses(E.boxOpen(wrong, R.box, 'sc-sessions-v1'))) &&
      (await refuses(E.boxOpen(key, R.box, 'sc-account-v1')));
  });
  await check('a chain reader gives any message key of the vector chain, in any order, again', async function () {
    const reader = new E.ChainReader(E.unb64(V.steps[0].chain_key), 0);
    const order = [2, 0, 1, 2, 0];
    for (const i of order) if (!same(await reader.messageKey(i), E.unb64(V.steps[i].message_key))) return false;
    const late = new E.ChainReader(E.unb64(V.steps[1].chain_key), 1);
    return same(await late.messageKey(2), E.unb64(V.steps[2].message_key)) && (await refuses(late.messageKey(0)));
  });
  await check('rotation: none yet, 100 messages, a week, a member gone (fake clock)', async function () {
    const t = 1700000000000;
    const fresh = { created: t, count: 0, stale: false };
    return E.rotationReason(null, t) === 'none' && E.rotationReason(fresh, t + 1000) === null &&
      E.rotationReason(Object.assign({}, fresh, { count: 99 }), t) === null &&
      E.rotationReason(Object.assign({}, fresh, { count: 100 }), t) === 'messages' &&
      E.rotationReason(fresh, t + E.ROTATE_MS - 1) === null && E.rotationReason(fresh, t + E.ROTATE_MS) === 'age' &&
      E.rotationReason(Object.assign({}, fresh, { stale: true }), t) === 'member left';
  });
  await check('a file opens with its own key only, and a flipped byte is refused', async function () {
    const bytes = te.encode('file body '.repeat(100));
    const f = await E.encryptFile(bytes);
    const g = await E.encryptFile(bytes);
    const back = await E.decryptFile(f.ciphertext, f.key, f.iv);
    const bad = f.ciphertext.slice();
    bad[10] ^= 1;
    return same(back, bytes) && f.ciphertext.length === bytes.length + 16 && f.key !== g.key &&
      (await refuses(E.decryptFile(f.ciphertext, g.key, f.iv))) && (await refuses(E.decryptFile(bad, f.key, f.iv)));
  });

  window.__results = results;
  window.__done = true;
})();

// With ?bench: encrypt+sign and verify+decrypt per message (Benchmarks/browser_crypto.py reads it).
(async function () {
  if (location.search.indexOf('bench') < 0) return;
  while (!window.__done) await new Promise(function (r) { setTimeout(r, 20); });
  const E = window.SecureChatE2EE;
  const keys = await E.generateDeviceKeys();
  const n = Number((location.search.match(/n=(\d+)/) || [0, 500])[1]);
  const text = 'x'.repeat(200);
  const out = await E.OutboundSession.create();
  const inbound = new E.InboundSession(out.share(), keys.signing.publicKey);
  const envelopes = [];
  let t0 = performance.now();
  for (let i = 0; i < n; i++) envelopes.push(await out.encrypt(text, keys.signing.privateKey));
  const encryptMs = (performance.now() - t0) / n;
  t0 = performance.now();
  for (const e of envelopes) await inbound.decrypt(e);
  const decryptMs = (performance.now() - t0) / n;
  window.__bench = { messages: n, plaintext_bytes: text.length, encrypt_sign_ms: encryptMs, verify_decrypt_ms: decryptMs,
                     sig_alg: keys.public.sig_alg, dh_alg: keys.public.dh_alg };
})();
