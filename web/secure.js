'use strict';
// End-to-end encryption for the chat page, on the crypto core of web/e2ee.js. No DOM here: the
// page gives a `request(frame) -> Promise<reply>` and listens to `onEvent`. What it keeps, in
// IndexedDB (one database per user, CryptoKeys stored as they are, private ones non-extractable):
//
// - the account key (Ed25519, else ECDSA P-256): it signs each of the user's devices, so a
//   contact verifies a person once. Its private half is also kept encrypted under the backup
//   key, to go into the backup;
// - this browser's device: ECDH and signing keys, published with `device`;
// - per encrypted room, this device's sending chain ("outbound": the Megolm shape) and the
//   devices it was shared with;
// - every chain shared with this device ("inbound", from the share's index on), and the same
//   in the backup, encrypted with the recovery key, so another browser can read history;
// - per contact, the account key first seen (pinned) and whether the user verified it.
//
// Nothing is sent to a device that its user's account key did not sign, nor to a verified
// contact whose account key changed until the user accepts the change.
(function (global) {
  const E = global.SecureChatE2EE;
  const te = new TextEncoder();
  const td = new TextDecoder();
  const BACKUP_SESSIONS = 120;      // a backup holds the newest 120 chains (it must fit 48 KiB)

  // ---- IndexedDB: one key-value store ------------------------------------------------------
  function openDB(name) {
    return new Promise(function (resolve, reject) {
      const req = global.indexedDB.open(name, 1);
      req.onupgradeneeded = function () { req.result.createObjectStore('kv'); };
      req.onsuccess = function () { resolve(req.result); };
      req.onerror = function () { reject(req.error); };
    });
  }
  function tx(db, mode, body) {
    return new Promise(function (resolve, reject) {
      const t = db.transaction('kv', mode);
      const out = body(t.objectStore('kv'));
      t.oncomplete = function () { resolve(out && 'result' in out ? out.result : undefined); };
      t.onerror = function () { reject(t.error); };
      t.onabort = function () { reject(t.error); };
    });
  }
  function kv(db) {
    return {
      get: function (k) { return tx(db, 'readonly', function (s) { return s.get(k); }); },
      put: function (k, v) { return tx(db, 'readwrite', function (s) { s.put(v, k); }); },
      del: function (k) { return tx(db, 'readwrite', function (s) { s.delete(k); }); },
      prefixed: function (p) {
        return tx(db, 'readonly', function (s) { return s.getAll(IDBKeyRange.bound(p, p + '\uffff')); });
      },
    };
  }

  function randomId() {
    const b = new Uint8Array(16);
    global.crypto.getRandomValues(b);
    return E.b64(b).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }
  function sigParams(alg) { return alg === 'ECDSA' ? { name: 'ECDSA', namedCurve: 'P-256' } : { name: alg }; }

  function create(options) {
    const user = options.user;
    const request = options.request;
    const emit = options.onEvent || function () {};
    const now = options.now || function () { return Date.now(); };
    let db = null;
    let account = null;        // {alg, pub, key (private CryptoKey), wrapped}
    let device = null;         // {id, ecdh, signing, public (the published object)}
    let backupKey = null;
    const inbound = new Map(); // sid -> {rec, reader}
    const outbound = new Map();// room -> session record
    const contacts = new Map();// user -> {account, verified, changed: new account key or null}
    const directory = new Map(); // user -> Promise<[device objects, checked]>
    const members = new Map(); // room -> Promise<[user names]>
    const seen = new Map();    // sid + ':' + i -> message id (a second id for the same index is a replay)
    let toDeviceChain = Promise.resolve();
    let backupTimer = null;
    const sendLocks = new Map(); // room -> Promise (one encrypt at a time per room)
    const timings = [];

    const api = { state: 'loading', timings: timings };

    async function load() {
      db = kv(await openDB('securechat-e2ee-' + user));
      account = await db.get('account');
      device = await db.get('device');
      backupKey = await db.get('backupKey');
      api.unseenRecovery = (await db.get('recoveryUnseen')) || null;
      (await db.prefixed('in:')).forEach(function (rec) { addInbound(rec); });
      (await db.prefixed('out:')).forEach(function (s) { outbound.set(s.room, s); });
      (await db.prefixed('contact:')).forEach(function (c) { contacts.set(c.user, c); });
    }

    function addInbound(rec) {
      inbound.set(rec.sid, { rec: rec, reader: new E.ChainReader(E.unb64(rec.ck), rec.i), sigKey: null });
    }

    // ---- identity -----------------------------------------------------------------------

    // 'ready', 'new' (nothing anywhere: make an identity), or 'recover' (the server has this
    // user's identity and this browser does not hold it).
    api.start = async function () {
      await load();
      const mine = await fetchDevices(user, true);
      const serverAccount = mine.length ? mine[0].account : null;
      if (account && device) {
        if (serverAccount && serverAccount !== account.pub) { api.state = 'replaced'; return api.state; }
        api.state = 'ready';
        return api.state;
      }
      if (serverAccount) { api.state = 'recover'; return api.state; }
      const backup = await request({ type: 'backup_get' });
      api.state = backup && backup.backup ? 'recover' : 'new';
      return api.state;
    };

    // A new identity: account key, device, recovery key (returned once, to be shown once).
    // Over an old one only when the user asked for it (`replace`): its devices are removed.
    api.createIdentity = async function (replace) {
      if (replace) {
        // Every device of the old identity goes: none of them can be signed for again.
        const reply = await request({ type: 'keys', users: [user] });
        const old = (reply && reply.devices && reply.devices[user]) || [];
        for (const d of old) {
          const r = await request({ type: 'device_remove', id: d.id });
          if (!r || r.type !== 'ok') throw new Error('could not remove an old device (' + (r && r.code) + ')');
        }
        for (const s of outbound.keys()) await db.del('out:' + s);
        outbound.clear();
        directory.delete(user);
      }
      const sigAlg = await E.signingAlgorithm();
      const pair = await crypto.subtle.generateKey(sigAlg, true, ['sign', 'verify']);
      const pkcs8 = new Uint8Array(await crypto.subtle.exportKey('pkcs8', pair.privateKey));
      const recovery = E.newRecoveryKey();
      backupKey = await E.backupKey(E.parseRecoveryKey(recovery));
      const wrapped = await E.boxSeal(backupKey, pkcs8, 'sc-account-v1');
      pkcs8.fill(0);
      const priv = await crypto.subtle.importKey('pkcs8', await E.boxOpen(backupKey, wrapped, 'sc-account-v1'), sigParams(sigAlg.name), false, ['sign']);
      account = { alg: sigAlg.name, pub: E.b64(await crypto.subtle.exportKey('raw', pair.publicKey)), key: priv, wrapped: wrapped };
      await db.put('backupKey', backupKey);
      await db.put('account', account);
      await makeDevice();
      await writeBackup();
      try { if (navigator.storage && navigator.storage.persist) api.persisted = await navigator.storage.persist(); } catch (e) { /* not offered */ }
      // Kept until the user has seen it once (a reload before that must not lose it).
      api.unseenRecovery = recovery;
      await db.put('recoveryUnseen', recovery);
      api.state = 'ready';
      return recovery;
    };

    // Another browser of the same user: the recovery key opens the backup, which holds the
    // account key and the chains this user could read.
    api.restore = async function (recoveryText) {
      const key = await E.backupKey(E.parseRecoveryKey(recoveryText));
      const reply = await request({ type: 'backup_get' });
      const backup = reply && reply.backup;
      if (!backup || backup.v !== 1) throw new Error('There is no backup of your keys on the server.');
      let pkcs8;
      try { pkcs8 = await E.boxOpen(key, backup.account, 'sc-account-v1'); } catch (e) { throw new Error('That recovery key does not open your backup.'); }
      const priv = await crypto.subtle.importKey('pkcs8', pkcs8, sigParams(backup.alg), false, ['sign']);
      pkcs8.fill(0);
      backupKey = key;
      account = { alg: backup.alg, pub: backup.pub, key: priv, wrapped: backup.account };
      const sessions = JSON.parse(td.decode(await E.boxOpen(key, backup.sessions, 'sc-sessions-v1')));
      for (const rec of sessions) { if (!inbound.has(rec.sid)) { addInbound(rec); await db.put('in:' + rec.sid, rec); } }
      await db.put('backupKey', backupKey);
      await db.put('account', account);
      await makeDevice();
      try { if (navigator.storage && navigator.storage.persist) api.persisted = await navigator.storage.persist(); } catch (e) { /* not offered */ }
      api.state = 'ready';
      emit({ type: 'keys' });
      return sessions.length;
    };

    async function makeDevice() {
      const keys = await E.generateDeviceKeys();
      const pub = Object.assign({ id: randomId(), account_alg: account.alg, account: account.pub }, keys.public);
      pub.asig = await E.sign(account.key, E.deviceBytes(user, pub));
      device = { id: pub.id, ecdh: keys.ecdh, signing: keys.signing, public: pub };
      await db.put('device', device);
      directory.delete(user);
    }

    // Sent on every connection: binds it to this device (then its pending shares arrive).
    api.publish = function () {
      // A new connection: what was cached may have changed unheard (members, devices).
      members.clear();
      directory.clear();
      if (api.state !== 'ready') return Promise.resolve(null);
      return request({ type: 'device', device: device.public });
    };

    async function writeBackup() {
      const recs = Array.from(inbound.values()).map(function (s) { return s.rec; })
        .sort(function (a, b) { return (b.t || 0) - (a.t || 0); }).slice(0, BACKUP_SESSIONS);
      const sessions = await E.boxSeal(backupKey, te.encode(JSON.stringify(recs)), 'sc-sessions-v1');
      return request({ type: 'backup_put', backup: { v: 1, alg: account.alg, pub: account.pub, account: account.wrapped, sessions: sessions } });
    }
    // Soon after a chain is added (several shares in a burst make one write): 'pending' until
    // the server has it, then 'saved'.
    api.backup = 'saved';
    let backupGeneration = 0;
    function backupSoon() {
      clearTimeout(backupTimer);
      api.backup = 'pending';
      const generation = ++backupGeneration;
      backupTimer = setTimeout(function () {
        if (api.state !== 'ready') return;
        writeBackup().then(function (reply) {
          if (reply && reply.type === 'ok' && generation === backupGeneration) api.backup = 'saved';
          else if (!reply || reply.type !== 'ok') backupSoon();
        }, function () { backupSoon(); });
      }, 500);
    }

    // ---- the key directory ------------------------------------------------------------

    // A user's devices that their account key signed; the account key checked against the one
    // pinned for them (first seen; a verified one that changes is held until accepted).
    function fetchDevices(name, fresh) {
      if (!fresh && directory.has(name)) return directory.get(name);
      const p = request({ type: 'keys', users: [name] }).then(function (reply) {
        if (!reply || reply.type !== 'keys') throw new Error('keys: ' + (reply && reply.code));
        return checkDevices(name, (reply.devices && reply.devices[name]) || []);
      });
      directory.set(name, p);
      p.catch(function () { directory.delete(name); });
      return p;
    }
    async function checkDevices(name, list) {
      const good = [];
      for (const d of list) {
        if (!d || typeof d.account !== 'string' || typeof d.asig !== 'string') continue;
        try {
          const key = await E.importPublic(d.account_alg, d.account, ['verify']);
          if (await E.verify(key, d.asig, E.deviceBytes(name, d))) good.push(d);
        } catch (e) { /* malformed: not a device of theirs */ }
      }
      if (!good.length) return [];
      // One account key per user: the pinned one if any device carries it, else the newest.
      let accountKey = good[good.length - 1].account;
      if (name === user && account) accountKey = account.pub;
      const c = contacts.get(name);
      if (name !== user) {
        if (!c) await pin(name, accountKey, false);
        else if (good.some(function (d) { return d.account === c.account; })) accountKey = c.account;
        else if (c.verified) {
          if (c.changed !== accountKey) { c.changed = accountKey; await db.put('contact:' + name, c); emit({ type: 'warning', user: name }); }
          return [];
        } else {
          await pin(name, accountKey, false);
          emit({ type: 'changed', user: name });
        }
      }
      return good.filter(function (d) { return d.account === accountKey; });
    }
    async function pin(name, accountKey, verified) {
      const c = { user: name, account: accountKey, verified: verified, changed: null };
      contacts.set(name, c);
      await db.put('contact:' + name, c);
    }

    api.recoverySeen = async function () {
      api.unseenRecovery = null;
      await db.del('recoveryUnseen');
    };
    api.contact = function (name) { return contacts.get(name) || null; };
    api.changedContacts = function () {
      return Array.from(contacts.values()).filter(function (c) { return c.verified && c.changed; }).map(function (c) { return c.user; }).sort();
    };
    api.accountKey = function () { return account && account.pub; };
    api.deviceId = function () { return device && device.id; };
    api.setVerified = async function (name, verified) {
      const c = contacts.get(name);
      if (!c) return;
      c.verified = verified;
      await db.put('contact:' + name, c);
      emit({ type: 'verified', user: name });
    };
    // The user accepts a verified contact's new keys: pinned, unverified, shared with again.
    api.acceptChange = async function (name) {
      const c = contacts.get(name);
      if (!c || !c.changed) return;
      await pin(name, c.changed, false);
      directory.delete(name);
      outbound.forEach(function (s) { s.stale = true; });
      emit({ type: 'verified', user: name });
    };
    api.safetyNumber = async function (name) {
      await fetchDevices(name, true);
      const c = contacts.get(name);
      if (!c || !account) return null;
      return E.safetyNumber(user, account.pub, name, c.changed || c.account);
    };

    // A user's devices changed: fetched again; a room whose chain reached a device now gone
    // starts a new chain before its next message.
    api.onDevices = async function (name) {
      directory.delete(name);
      if (api.state !== 'ready') return;
      const now_ = await fetchDevices(name, true);
      const ids = new Set(now_.map(function (d) { return name + '/' + d.id; }));
      for (const s of outbound.values()) {
        if (s.shared.some(function (k) { return k.startsWith(name + '/') && !ids.has(k); })) { s.stale = true; await db.put('out:' + s.room, s); }
      }
    };

    // Membership: a member gone makes the room's chain stale (a removed member must not read
    // what follows); a new member is shared the chain from where it is now.
    api.onMember = async function (room, name, joined) {
      members.delete(room);
      const s = outbound.get(room);
      if (!s) return;
      if (!joined) { s.stale = true; await db.put('out:' + room, s); }
    };
    api.forgetRoom = async function (room) {
      members.delete(room);
      if (outbound.has(room)) { outbound.delete(room); await db.del('out:' + room); }
    };

    function roomMembers(room) {
      if (members.has(room)) return members.get(room);
      const p = request({ type: 'members', room: room }).then(function (reply) {
        if (!reply || reply.type !== 'members') throw new Error('members: ' + (reply && reply.code));
        return reply.members.map(function (m) { return m.user; });
      });
      members.set(room, p);
      p.catch(function () { members.delete(room); });
      return p;
    }

    // ---- sending ----------------------------------------------------------------------

    async function newOutbound(room) {
      const o = await E.OutboundSession.create();
      const s = { room: room, sid: o.sid, ck: E.b64(o.chainKey), i: 0, count: 0, created: now(), shared: [], stale: false };
      // This device reads its own messages (history, other tabs) from the same chain.
      const rec = { sid: s.sid, room: room, user: user, device: device.id, sig_alg: device.public.sig_alg, sig: device.public.sig,
                    account: account.pub, ck: s.ck, i: 0, t: now() };
      addInbound(rec);
      await db.put('in:' + rec.sid, rec);
      backupSoon();
      return s;
    }

    // Every signed device of the room's members (this user's other devices too), as
    // {user, d, key: "user/device"}; key lists are fetched 100 users at a time.
    async function memberDevices(room) {
      const names = await roomMembers(room);
      const out = [];
      for (let k = 0; k < names.length; k += 100) {
        const batch = names.slice(k, k + 100);
        const missing = batch.filter(function (n) { return !directory.has(n); });
        if (missing.length) {
          const reply = await request({ type: 'keys', users: missing });
          if (!reply || reply.type !== 'keys') throw new Error('keys: ' + (reply && reply.code));
          missing.forEach(function (n) {
            const p = checkDevices(n, (reply.devices && reply.devices[n]) || []);
            directory.set(n, p);
            p.catch(function () { directory.delete(n); });
          });
        }
        for (const n of batch) {
          for (const d of await directory.get(n)) {
            if (n === user && d.id === device.id) continue;
            out.push({ user: n, d: d, key: n + '/' + d.id });
          }
        }
      }
      return out;
    }

    // Shares the room's chain, from its current index, with each of `targets` that does not
    // have it yet, over the pairwise channel. Returns how many it sent.
    async function share(s, targets) {
      const have = new Set(s.shared);
      const todo = targets.filter(function (t) { return !have.has(t.key) && t.d.dh_alg === device.public.dh_alg; });
      if (!todo.length) return 0;
      const body = { t: 'share', room: s.room, sid: s.sid, ck: s.ck, i: s.i };
      const me = { user: user, device: device.id, dh: device.ecdh.privateKey, sign: device.signing.privateKey };
      const out = [];
      for (const x of todo) {
        out.push({ user: x.user, device: x.d.id, payload: await E.pairSeal(me, { user: x.user, device: x.d.id, dh_alg: x.d.dh_alg, dh: x.d.dh }, body), key: x.key });
      }
      for (let k = 0; k < out.length; k += 100) {
        const chunk = out.slice(k, k + 100);
        const reply = await request({ type: 'to_device', messages: chunk.map(function (m) { return { user: m.user, device: m.device, payload: m.payload }; }) });
        if (!reply || reply.type !== 'ok') throw new Error('to_device: ' + (reply && reply.code));
        chunk.forEach(function (m) { s.shared.push(m.key); });
      }
      await db.put('out:' + s.room, s);
      return out.length;
    }

    // The chain to send on now: a new one when the rule says so, or when a device it was
    // shared with is no longer a member's (a member left or was removed, even unheard of while
    // offline; a device removed), so no one gone reads what follows.
    async function current(room) {
      const targets = await memberDevices(room);
      let s = outbound.get(room);
      let reason = E.rotationReason(s, now());
      if (!reason) {
        const now_ = new Set(targets.map(function (t) { return t.key; }));
        if (s.shared.some(function (k) { return !now_.has(k); })) reason = 'member left';
      }
      if (reason) { s = await newOutbound(room); outbound.set(room, s); }
      return { s: s, reason: reason, shared: await share(s, targets) };
    }

    // The `e2ee` object of a message (or an edit) in an encrypted room.
    api.encrypt = function (room, content) {
      const prev = sendLocks.get(room) || Promise.resolve();
      const run = prev.catch(function () {}).then(async function () {
        if (api.state !== 'ready') throw new Error('This browser has no keys yet.');
        const started = performance.now();
        const c = await current(room);
        const s = c.s;
        const o = new E.OutboundSession(s.sid, E.unb64(s.ck), s.i);
        const env = await o.encrypt(JSON.stringify(content), device.signing.privateKey);
        s.ck = E.b64(o.chainKey);
        s.i = o.index;
        s.count += 1;
        await db.put('out:' + room, s);
        timings.push({ room: room, rotated: c.reason, shared: c.shared, ms: performance.now() - started });
        if (timings.length > 100) timings.shift();
        return env;
      });
      sendLocks.set(room, run);
      return run;
    };

    // A member joined: shared the chain now, so they read from their join (not before).
    api.shareNow = function (room) {
      const prev = sendLocks.get(room) || Promise.resolve();
      const run = prev.catch(function () {}).then(async function () {
        members.delete(room);
        if (!outbound.has(room) || api.state !== 'ready') return 0;
        const started = performance.now();
        const c = await current(room);
        timings.push({ room: room, rotated: c.reason, shared: c.shared, ms: performance.now() - started, join: true });
        return c.shared;
      });
      sendLocks.set(room, run);
      return run;
    };

    // ---- receiving --------------------------------------------------------------------

    // to_device frames, one at a time in order, each acknowledged once handled (kept or not).
    api.onToDevice = function (frame) {
      toDeviceChain = toDeviceChain.then(function () { return receiveShare(frame); }).catch(function () {})
        .then(function () { return request({ type: 'to_device_ack', upto: frame.id }); }).catch(function () {});
      return toDeviceChain;
    };
    async function receiveShare(frame) {
      if (api.state !== 'ready') return;
      const devices = await fetchDevices(frame.from, true);
      const from = devices.find(function (d) { return d.id === frame.from_device; });
      if (!from) return;  // not a device its account signed (or a changed key not accepted)
      const me = { user: user, device: device.id, dh: device.ecdh.privateKey };
      const body = await E.pairOpen(me, { user: frame.from, device: from.id, dh_alg: from.dh_alg, dh: from.dh, sig_alg: from.sig_alg, sig: from.sig }, frame.payload);
      if (!body || body.t !== 'share' || typeof body.sid !== 'string' || typeof body.ck !== 'string' || !Number.isInteger(body.i)) return;
      const old = inbound.get(body.sid);
      if (old && (old.rec.user !== frame.from || old.rec.i <= body.i)) return;  // keep the earliest index
      const rec = { sid: body.sid, room: body.room, user: frame.from, device: from.id, sig_alg: from.sig_alg, sig: from.sig,
                    account: from.account, ck: body.ck, i: body.i, t: now() };
      addInbound(rec);
      await db.put('in:' + rec.sid, rec);
      backupSoon();
      emit({ type: 'key', sid: rec.sid, room: rec.room });
    }

    // The content of a message: {text, file?}, or an error whose `code` says why not:
    // 'no_key' (sent before this device could read the room), 'untrusted' (keys changed and
    // not accepted), 'bad' (fails verification: forged, moved, replayed).
    function fail(code, message) { const e = new Error(message); e.code = code; return e; }
    api.decrypt = async function (room, from, id, env) {
      if (!env || env.v !== E.VERSION) throw fail('bad', 'unknown envelope version');
      if (typeof env.sid !== 'string' || !Number.isInteger(env.i) || typeof env.ct !== 'string' || typeof env.sig !== 'string') throw fail('bad', 'malformed');
      const s = inbound.get(env.sid);
      if (!s || env.i < s.rec.i) throw fail('no_key', 'no key for this message');
      if (s.rec.room !== room || s.rec.user !== from) throw fail('bad', 'not from this room or this sender');
      if (from !== user && !contacts.has(from)) await fetchDevices(from, false).catch(function () {});
      const pinned = from === user ? account && account.pub : (contacts.get(from) || {}).account;
      if (s.rec.account !== pinned) throw fail('untrusted', 'sent with keys you have not accepted');
      const seenKey = env.sid + ':' + env.i;
      if (seen.has(seenKey) && seen.get(seenKey) !== id) throw fail('bad', 'replayed message');
      if (!s.sigKey) s.sigKey = await E.importPublic(s.rec.sig_alg, s.rec.sig, ['verify']);
      if (!(await E.verify(s.sigKey, env.sig, E.signedBytes(env.sid, env.i, env.ct)))) throw fail('bad', 'bad signature');
      let text;
      try { text = await E.open(await s.reader.messageKey(env.i), env.sid, env.i, env.ct); } catch (e) { throw fail('bad', 'does not decrypt'); }
      seen.set(seenKey, id);
      let content;
      try { content = JSON.parse(text); } catch (e) { throw fail('bad', 'not a message'); }
      if (!content || typeof content !== 'object') throw fail('bad', 'not a message');
      return content;
    };

    api.hasSession = function (sid) { return inbound.has(sid); };
    api.sessions = function () { return Array.from(inbound.keys()); };
    return api;
  }

  global.SecureChatKeys = { create: create };
})(window);
