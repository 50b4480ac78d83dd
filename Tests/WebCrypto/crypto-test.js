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
