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
  const BACKUP_SESSIONS = 120;      // a backup holds at most the newest 120 chains,
  const BACKUP_BYTES = 47000;       // fewer if need be to fit the server's 48 KiB

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
    const inbound = new Map(); // user + '\n' + sid -> {rec, reader, sigKey}
    const outbound = new Map();// room -> session record
    const contacts = new Map();// user -> {account, verified, changed: new account key or null, past: [earlier pinned keys]}
    const directory = new Map(); // user -> Promise<[signed devices under the pinned key]>
    const members = new Map(); // room -> Promise<[user names]>
    const seen = new Map();    // user:sid:i -> message id (a second id for the same index is a replay); also in IndexedDB
    let toDeviceChain = Promise.resolve();
    let backupTimer = null;
    const timings = [];

    const api = { state: 'loading', timings: timings, backup: 'saved', unseenRecovery: null };

    // Tabs of one browser share the device and its chains: a sending step, and making or
    // restoring keys, run under a Web Lock and re-read what another tab may have written.
    function locked(name, body) {
      if (global.navigator && navigator.locks && navigator.locks.request) {
        return navigator.locks.request('securechat-e2ee:' + user + ':' + name, body);
      }
      return body();
    }

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

    function inKey(name, sid) { return name + '\n' + sid; }
    function addInbound(rec) {
      inbound.set(inKey(rec.user, rec.sid), { rec: rec, reader: new E.ChainReader(E.unb64(rec.ck), rec.i), sigKey: null });
    }
    async function storeInbound(rec) {
      addInbound(rec);
      await db.put('in:' + rec.user + ':' + rec.sid, rec);
    }

    // ---- identity -----------------------------------------------------------------------

    // The server's view of this user: every device listed (signed or not) and whether a
    // backup exists. A failed request throws: nothing is decided on an answer not had.
    async function serverIdentity() {
      const reply = await request({ type: 'keys', users: [user] });
      if (!reply || reply.type !== 'keys') throw new Error('could not fetch your devices (' + (reply && reply.code) + ')');
      const backup = await request({ type: 'backup_get' });
      if (!backup || backup.type !== 'backup') throw new Error('could not fetch your key backup (' + (backup && backup.code) + ')');
      return { devices: (reply.devices && reply.devices[user]) || [], backup: backup.backup || null };
    }

    // 'ready'; 'new' (nothing anywhere: an identity was made just now); 'recover' (the server
    // has this user's identity and this browser does not hold it); 'replaced' (this browser's
    // keys were made again elsewhere). Throws when the server could not be asked.
    api.start = function () {
      return locked('identity', async function () {
        await load();
        const server = await serverIdentity();
        const accounts = server.devices.map(function (d) { return d && d.account; });
        if (account && device) {
          api.state = accounts.length && accounts.indexOf(account.pub) < 0 ? 'replaced' : 'ready';
          return api.state;
        }
        if (accounts.length || server.backup) { api.state = 'recover'; return api.state; }
        await makeIdentity();   // state 'ready'
        return 'new';
      });
    };

    // A new identity when the user asked for one over the old (its devices are removed).
    api.createIdentity = function () {
      return locked('identity', async function () {
        const server = await serverIdentity();
        for (const d of server.devices) {
          const r = await request({ type: 'device_remove', id: d.id });
          if (!r || r.type !== 'ok') throw new Error('could not remove an old device (' + (r && r.code) + ')');
        }
        for (const room of outbound.keys()) await db.del('out:' + room);
        outbound.clear();
        directory.delete(user);
        await makeIdentity();
      });
    };

    function accountLabel(alg, pub) { return 'sc-account-v1\n' + alg + '\n' + pub; }
    function sessionsLabel(pub) { return 'sc-sessions-v1\n' + pub; }

    // Account key, device and recovery key; the recovery key kept until shown once (a reload
    // before that must not lose it).
    async function makeIdentity() {
      const sigAlg = await E.signingAlgorithm();
      const pair = await crypto.subtle.generateKey(sigAlg, true, ['sign', 'verify']);
      const pub = E.b64(await crypto.subtle.exportKey('raw', pair.publicKey));
      const pkcs8 = new Uint8Array(await crypto.subtle.exportKey('pkcs8', pair.privateKey));
      const recovery = E.newRecoveryKey();
      backupKey = await E.backupKey(E.parseRecoveryKey(recovery));
      const wrapped = await E.boxSeal(backupKey, pkcs8, accountLabel(sigAlg.name, pub));
      const priv = await crypto.subtle.importKey('pkcs8', pkcs8, sigParams(sigAlg.name), false, ['sign']);
      pkcs8.fill(0);
      account = { alg: sigAlg.name, pub: pub, key: priv, wrapped: wrapped };
      await db.put('backupKey', backupKey);
      await db.put('account', account);
      await makeDevice();
      api.unseenRecovery = recovery;
      await db.put('recoveryUnseen', recovery);
      api.state = 'ready';
      const reply = await writeBackup(false);
      if (!reply || reply.type !== 'ok') backupSoon();
      await persist();
    }
    async function persist() {
      try { if (navigator.storage && navigator.storage.persist) api.persisted = await navigator.storage.persist(); } catch (e) { /* not offered */ }
    }

    // Another browser of the same user: the recovery key opens the backup, which holds the
    // account key, the chains this user could read and the contacts' pinned keys.
    api.restore = function (recoveryText) {
      return locked('identity', async function () {
        const key = await E.backupKey(E.parseRecoveryKey(recoveryText));
        const reply = await request({ type: 'backup_get' });
        if (!reply || reply.type !== 'backup') throw new Error('Could not fetch your backup; try again.');
        const backup = reply.backup;
        if (!backup || backup.v !== 1) throw new Error('There is no backup of your keys on the server.');
        let pkcs8;
        try { pkcs8 = await E.boxOpen(key, backup.account, accountLabel(backup.alg, backup.pub)); } catch (e) { throw new Error('That recovery key does not open your backup.'); }
        const priv = await crypto.subtle.importKey('pkcs8', pkcs8, sigParams(backup.alg), false, ['sign']);
        pkcs8.fill(0);
        const content = JSON.parse(td.decode(await E.boxOpen(key, backup.sessions, sessionsLabel(backup.pub))));
        backupKey = key;
        account = { alg: backup.alg, pub: backup.pub, key: priv, wrapped: backup.account };
        for (const rec of content.sessions || []) if (!inbound.has(inKey(rec.user, rec.sid))) await storeInbound(rec);
        for (const c of content.contacts || []) if (!contacts.has(c.user)) { contacts.set(c.user, c); await db.put('contact:' + c.user, c); }
        await db.put('backupKey', backupKey);
        await db.put('account', account);
        await makeDevice();
        await persist();
        api.state = 'ready';
        emit({ type: 'keys' });
        return (content.sessions || []).length;
      });
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
      return request({ type: 'device', device: device.public }).then(function (reply) {
        retryHeld();
        return reply;
      });
    };

    api.recoverySeen = async function () {
      api.unseenRecovery = null;
      await db.del('recoveryUnseen');
    };

    // ---- the backup ---------------------------------------------------------------------

    // The user's chains (each from its earliest index) and contacts, merged with what the
    // user's other browsers put there, newest first, cut to fit the server's 48 KiB.
    async function writeBackup(merge) {
      if (merge !== false) {
        const reply = await request({ type: 'backup_get' });
        if (!reply || reply.type !== 'backup') throw new Error('backup_get: ' + (reply && reply.code));
        const b = reply.backup;
        if (b && b.v === 1 && b.pub === account.pub) {
          try {
            const theirs = JSON.parse(td.decode(await E.boxOpen(backupKey, b.sessions, sessionsLabel(b.pub))));
            for (const rec of theirs.sessions || []) if (!inbound.has(inKey(rec.user, rec.sid))) await storeInbound(rec);
            for (const c of theirs.contacts || []) if (!contacts.has(c.user)) { contacts.set(c.user, c); await db.put('contact:' + c.user, c); }
          } catch (e) { /* not ours to merge: replaced below */ }
        }
      }
      const recs = Array.from(inbound.values()).map(function (x) { return x.rec; })
        .sort(function (a, b) { return (b.t || 0) - (a.t || 0); }).slice(0, BACKUP_SESSIONS);
      const people = Array.from(contacts.values());
      let n = recs.length;
      for (;;) {
        const sessions = await E.boxSeal(backupKey, te.encode(JSON.stringify({ sessions: recs.slice(0, n), contacts: people })), sessionsLabel(account.pub));
        const backup = { v: 1, alg: account.alg, pub: account.pub, account: account.wrapped, sessions: sessions };
        if (JSON.stringify(backup).length <= BACKUP_BYTES || n === 0) return request({ type: 'backup_put', backup: backup });
        n = Math.floor(n * 0.8);
      }
    }
    // Soon after a chain is added (a burst of shares makes one write): 'pending' until the
    // server has it, then 'saved'; failures retried, backing off to a minute.
    let backupGeneration = 0;
    let backupDelay = 500;
    function backupSoon() {
      clearTimeout(backupTimer);
      api.backup = 'pending';
      const generation = ++backupGeneration;
      backupTimer = setTimeout(function () {
        if (api.state !== 'ready') return;
        writeBackup().then(function (reply) {
          if (reply && reply.type === 'ok') {
            backupDelay = 500;
            if (generation === backupGeneration) api.backup = 'saved';
          } else throw new Error('backup_put: ' + (reply && reply.code));
        }).catch(function () {
          if (generation !== backupGeneration) return;
          backupDelay = Math.min(60000, backupDelay * 2);
          backupSoon();
        });
      }, backupDelay);
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
      p.catch(function () { if (directory.get(name) === p) directory.delete(name); });
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
      if (name === user) return account ? good.filter(function (d) { return d.account === account.pub; }) : [];
      if (!good.length) return [];
      // One account key per user: the pinned one if any device carries it, else the newest.
      let accountKey = good[good.length - 1].account;
      const c = contacts.get(name);
      if (!c) await pin(name, accountKey, false);
      else if (good.some(function (d) { return d.account === c.account; })) accountKey = c.account;
      else if (c.verified) {
        if (c.changed !== accountKey) { c.changed = accountKey; await db.put('contact:' + name, c); emit({ type: 'warning', user: name }); }
        return [];
      } else {
        await pin(name, accountKey, false);
        emit({ type: 'changed', user: name });
      }
      return good.filter(function (d) { return d.account === accountKey; });
    }
    async function pin(name, accountKey, verified) {
      const old = contacts.get(name);
      const past = old ? (old.past || []).concat(old.account === accountKey ? [] : [old.account]).slice(-10) : [];
      const c = { user: name, account: accountKey, verified: verified, changed: null, past: past };
      contacts.set(name, c);
      await db.put('contact:' + name, c);
      backupSoon();
    }

    api.contact = function (name) { return contacts.get(name) || null; };
    api.changedContacts = function () {
      return Array.from(contacts.values()).filter(function (c) { return c.verified && c.changed; }).map(function (c) { return c.user; }).sort();
    };
    api.accountKey = function () { return account && account.pub; };
    api.deviceId = function () { return device && device.id; };

    // The safety number with `name`, and the account key it was computed from: marking as
    // verified (or accepting a change) names that key, and is refused if it is no longer the
    // one in question (the server sent another meanwhile).
    api.safetyNumber = async function (name) {
      await fetchDevices(name, true);
      const c = contacts.get(name);
      if (!c || !account) return null;
      const theirs = c.changed || c.account;
      return { number: await E.safetyNumber(user, account.pub, name, theirs), account: theirs };
    };
    api.setVerified = async function (name, verified, accountKey) {
      const c = contacts.get(name);
      if (!c) return false;
      if (verified && (c.changed || c.account !== accountKey)) return false;
      c.verified = verified;
      await db.put('contact:' + name, c);
      backupSoon();
      emit({ type: 'verified', user: name });
      return true;
    };
    // The user accepts a verified contact's new keys, compared: pinned and verified again,
    // their held shares read, every chain started again before its next message.
    api.acceptChange = async function (name, accountKey) {
      const c = contacts.get(name);
      if (!c || !c.changed || c.changed !== accountKey) return false;
      await pin(name, accountKey, true);
      directory.delete(name);
      for (const room of Array.from(outbound.keys())) await api.onMember(room, name, false);
      emit({ type: 'verified', user: name });
      retryHeld();
      return true;
    };

    // A user's devices changed: fetched again (a device gone makes chains rotate: current()).
    api.onDevices = async function (name) {
      directory.delete(name);
      if (api.state !== 'ready') return;
      if (name === user) {
        // This browser's device removed from another: its keys no longer serve this account.
        const reply = await request({ type: 'keys', users: [user] });
        if (reply && reply.type === 'keys' && !((reply.devices && reply.devices[user]) || []).some(function (d) { return d.id === device.id; })) {
          api.state = 'removed';
          emit({ type: 'removed' });
          return;
        }
      }
      await fetchDevices(name, true);
      retryHeld();
    };

    // This user's devices as the server lists them, this one marked; and removing one (a lost
    // or old browser): every chain it was given rotates before its next message.
    api.myDevices = async function () {
      const reply = await request({ type: 'keys', users: [user] });
      if (!reply || reply.type !== 'keys') throw new Error('could not list your devices (' + (reply && reply.code) + ')');
      const checked = await fetchDevices(user, true);
      return ((reply.devices && reply.devices[user]) || []).map(function (d) {
        return { id: d.id, current: !!device && d.id === device.id, signed: checked.some(function (c) { return c.id === d.id; }) };
      });
    };
    api.removeDevice = async function (id) {
      if (device && id === device.id) throw new Error('this browser cannot remove itself here');
      const r = await request({ type: 'device_remove', id: id });
      if (!r || r.type !== 'ok') throw new Error('could not remove it (' + (r && r.code) + ')');
      directory.delete(user);
      for (const room of Array.from(outbound.keys())) await api.onMember(room, user, false);
    };

    // Membership: a member gone makes the room's chain stale (a removed member must not read
    // what follows).
    api.onMember = function (room, name, joined) {
      members.delete(room);
      if (joined) return Promise.resolve();
      return locked('send:' + room, async function () {
        members.delete(room);
        const s = await db.get('out:' + room);
        if (s) { s.stale = true; await db.put('out:' + room, s); outbound.set(room, s); }
      });
    };
    api.forgetRoom = async function (room) {
      members.delete(room);
      if (outbound.has(room)) { outbound.delete(room); await db.del('out:' + room); }
    };

    // A room's members as the server lists them; a dm's are the two people its id names,
    // whatever the server says.
    function roomMembers(room) {
      if (members.has(room)) return members.get(room);
      const p = request({ type: 'members', room: room }).then(function (reply) {
        if (!reply || reply.type !== 'members') {
          const e = new Error('members: ' + (reply && reply.code));
          e.code = reply && reply.code;
          throw e;
        }
        let names = reply.members.map(function (m) { return m.user; });
        if (room.startsWith('dm:')) {
          const pair = room.split(':').slice(1);
          names = names.filter(function (n) { return pair.indexOf(n) >= 0; });
        }
        return names;
      });
      members.set(room, p);
      p.catch(function () { if (members.get(room) === p) members.delete(room); });
      return p;
    }

    // ---- sending ----------------------------------------------------------------------

    async function newOutbound(room) {
      const o = await E.OutboundSession.create();
      const s = { room: room, sid: o.sid, ck: E.b64(o.chainKey), i: 0, count: 0, created: now(), shared: [], sent: [], stale: false };
      // This device reads its own messages (history, other tabs) from the same chain.
      await storeInbound({ sid: s.sid, room: room, user: user, device: device.id, sig_alg: device.public.sig_alg, sig: device.public.sig,
                           account: account.pub, ck: s.ck, i: 0, t: now() });
      backupSoon();
      return s;
    }

    // Every signed device of the room's members (this user's other devices too), as
    // {user, d, key: "user/device"}; key lists are fetched 100 users at a time.
    async function memberDevices(room) {
      const names = await roomMembers(room);
      const lists = new Map();
      for (let k = 0; k < names.length; k += 100) {
        const batch = names.slice(k, k + 100);
        const missing = batch.filter(function (n) { return !directory.has(n); });
        if (missing.length) {
          const reply = await request({ type: 'keys', users: missing });
          if (!reply || reply.type !== 'keys') throw new Error('keys: ' + (reply && reply.code));
          missing.forEach(function (n) {
            const p = checkDevices(n, (reply.devices && reply.devices[n]) || []);
            directory.set(n, p);
            p.catch(function () { if (directory.get(n) === p) directory.delete(n); });
          });
        }
        for (const n of batch) lists.set(n, directory.get(n) || fetchDevices(n, false));
      }
      const out = [];
      for (const n of names) {
        for (const d of await lists.get(n)) {
          if (n === user && d.id === device.id) continue;
          out.push({ user: n, d: d, key: n + '/' + d.id });
        }
      }
      return out;
    }

    // Shares the room's chain, from its current index, with each of `targets` that does not
    // have it yet, over the pairwise channel. A device is written down as possibly holding
    // the chain (`sent`) before the frame goes, so a lost answer cannot hide it from rotation.
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
      const sent = new Set(s.sent);
      out.forEach(function (m) { sent.add(m.key); });
      s.sent = Array.from(sent);
      await db.put('out:' + s.room, s);
      for (let k = 0; k < out.length; k += 100) {
        const chunk = out.slice(k, k + 100);
        const reply = await request({ type: 'to_device', messages: chunk.map(function (m) { return { user: m.user, device: m.device, payload: m.payload }; }) });
        if (!reply || reply.type !== 'ok') throw new Error('to_device: ' + (reply && reply.code));
        chunk.forEach(function (m) { s.shared.push(m.key); });
      }
      await db.put('out:' + s.room, s);
      return out.length;
    }

    // The chain to send on now (read again: another tab may have moved it on): a new one when
    // the rule says so, or when a device it may have reached is no longer a member's (a member
    // left or was removed, even unheard of while offline; a device removed), so no one gone
    // reads what follows.
    async function current(room) {
      const stored = await db.get('out:' + room);
      if (stored) outbound.set(room, stored); else outbound.delete(room);
      const targets = await memberDevices(room);
      let s = outbound.get(room);
      let reason = E.rotationReason(s, now());
      if (!reason) {
        const now_ = new Set(targets.map(function (t) { return t.key; }));
        if ((s.sent || s.shared).some(function (k) { return !now_.has(k); })) reason = 'member left';
      }
      if (reason) { s = await newOutbound(room); outbound.set(room, s); await db.put('out:' + room, s); }
      return { s: s, reason: reason, shared: await share(s, targets) };
    }

    // The `e2ee` object of a message or an edit. `content` is {kind: 'message'|'edit', text,
    // file?, reply_to?, edit_of?}: what it is and what it refers to travel inside, so the
    // server can neither replay it as something else nor move it to another message.
    api.encrypt = function (room, content) {
      return locked('send:' + room, async function () {
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
    };

    // A member joined: every chain of the room is shared with them now, so they read from
    // their join on (not before).
    api.shareNow = function (room) {
      return locked('send:' + room, async function () {
        members.delete(room);
        if (api.state !== 'ready' || !(await db.get('out:' + room))) return 0;
        const started = performance.now();
        const c = await current(room);
        timings.push({ room: room, rotated: c.reason, shared: c.shared, ms: performance.now() - started, join: true });
        return c.shared;
      });
    };

    // ---- receiving shares ---------------------------------------------------------------

    // to_device frames, one at a time in order, each acknowledged once handled. One that
    // cannot be handled yet (the sender's keys could not be fetched, or changed and wait for
    // the user's decision) is kept aside in IndexedDB and tried again later.
    api.onToDevice = function (frame) {
      toDeviceChain = toDeviceChain.then(async function () {
        let outcome;
        try { outcome = await receiveShare(frame); } catch (e) { outcome = 'retry'; }
        if (outcome === 'retry' || outcome === 'held') await db.put('held:' + frame.id, { frame: frame, tries: 0, t: now() });
        await request({ type: 'to_device_ack', upto: frame.id });
      }).catch(function () {});
      return toDeviceChain;
    };
    let retrying = false;
    async function retryHeld() {
      if (retrying || api.state !== 'ready') return;
      retrying = true;
      try {
        for (const h of await db.prefixed('held:')) {
          let outcome;
          try { outcome = await receiveShare(h.frame); } catch (e) { outcome = 'retry'; }
          if (outcome === 'retry' && h.tries < 20 && now() - h.t < 30 * 24 * 3600 * 1000) {
            h.tries += 1;
            await db.put('held:' + h.frame.id, h);
          } else if (outcome !== 'held') await db.del('held:' + h.frame.id);
        }
      } finally { retrying = false; }
    }

    // 'done' (kept, or refused for good), 'held' (keys not accepted yet) or 'retry'.
    async function receiveShare(frame) {
      if (api.state !== 'ready') return 'retry';
      const devices = await fetchDevices(frame.from, true);
      const c = contacts.get(frame.from);
      if (frame.from !== user && c && c.verified && c.changed) return 'held';
      const from = devices.find(function (d) { return d.id === frame.from_device; });
      if (!from) return 'done';  // not a device its account signed
      const me = { user: user, device: device.id, dh: device.ecdh.privateKey };
      let body;
      try {
        body = await E.pairOpen(me, { user: frame.from, device: from.id, dh_alg: from.dh_alg, dh: from.dh, sig_alg: from.sig_alg, sig: from.sig }, frame.payload);
      } catch (e) { return 'done'; }
      if (!body || body.t !== 'share' || typeof body.sid !== 'string' || typeof body.ck !== 'string' ||
          !Number.isInteger(body.i) || body.i < 0 || typeof body.room !== 'string') return 'done';
      // Only a member of the room may give keys for it (this device must be one too).
      let names;
      try { names = await roomMembers(body.room); } catch (e) { return e.code === 'not_found' || e.code === 'bad_request' ? 'done' : 'retry'; }
      if (names.indexOf(frame.from) < 0) return 'done';
      const old = inbound.get(inKey(frame.from, body.sid));
      if (old && (old.rec.device !== from.id || old.rec.room !== body.room || old.rec.i <= body.i)) return 'done';  // the earliest index is kept
      await storeInbound({ sid: body.sid, room: body.room, user: frame.from, device: from.id, sig_alg: from.sig_alg, sig: from.sig,
                           account: from.account, ck: body.ck, i: body.i, t: now() });
      backupSoon();
      emit({ type: 'key', sid: body.sid, room: body.room });
      return 'done';
    }

    // ---- reading messages ---------------------------------------------------------------

    // The content of a message or edit: {kind, text, file?, ...}, or an error whose `code`
    // says why not: 'no_key' (sent before this device could read the room), 'untrusted'
    // (keys changed and not accepted), 'bad' (fails verification: forged, moved, replayed).
    // `expect` is what the server says it is: {kind, reply_to} or {kind: 'edit', edit_of}.
    function fail(code, message) { const e = new Error(message); e.code = code; return e; }
    api.decrypt = async function (room, from, id, env, expect) {
      if (!env || env.v !== E.VERSION) throw fail('bad', 'unknown envelope version');
      if (typeof env.sid !== 'string' || !Number.isInteger(env.i) || typeof env.ct !== 'string' || typeof env.sig !== 'string') throw fail('bad', 'malformed');
      let s = inbound.get(inKey(from, env.sid));
      if (!s) {
        // Another tab may have been given it.
        const rec = await db.get('in:' + from + ':' + env.sid);
        if (rec) { addInbound(rec); s = inbound.get(inKey(from, env.sid)); }
      }
      if (!s || env.i < s.rec.i) throw fail('no_key', 'no key for this message');
      if (s.rec.room !== room) throw fail('bad', 'not of this room');
      if (from !== user && !contacts.has(from)) await fetchDevices(from, false).catch(function () {});
      const c = contacts.get(from);
      const trusted = from === user ? account && s.rec.account === account.pub
        : !!c && (s.rec.account === c.account || (c.past || []).indexOf(s.rec.account) >= 0);
      if (!trusted) throw fail('untrusted', 'sent with keys you have not accepted');
      // One chain's messages are read one at a time, in the order asked (the page asks in id
      // order), so of two messages with the same index the earlier id is the one kept.
      const turn = (s.queue || Promise.resolve()).catch(function () {}).then(function () { return readOne(s, from, id, env, expect); });
      s.queue = turn;
      return turn;
    };
    async function readOne(s, from, id, env, expect) {
      const seenKey = from + ':' + env.sid + ':' + env.i;
      if (!seen.has(seenKey)) { const was = await db.get('seen:' + seenKey); if (was) seen.set(seenKey, was); }
      if (seen.has(seenKey) && seen.get(seenKey) !== id) throw fail('bad', 'replayed message');
      if (!s.sigKey) s.sigKey = await E.importPublic(s.rec.sig_alg, s.rec.sig, ['verify']);
      if (!(await E.verify(s.sigKey, env.sig, E.signedBytes(env.sid, env.i, env.ct)))) throw fail('bad', 'bad signature');
      let text;
      try { text = await E.open(await s.reader.messageKey(env.i), env.sid, env.i, env.ct); } catch (e) { throw fail('bad', 'does not decrypt'); }
      let content;
      try { content = JSON.parse(text); } catch (e) { throw fail('bad', 'not a message'); }
      if (!content || typeof content !== 'object') throw fail('bad', 'not a message');
      if (expect) {
        if (content.kind !== expect.kind) throw fail('bad', 'not what the server says it is');
        if (expect.kind === 'edit' && content.edit_of !== expect.edit_of) throw fail('bad', 'an edit of another message');
        if (expect.kind === 'message' && (content.reply_to || null) !== (expect.reply_to || null)) throw fail('bad', 'a reply to another message');
      }
      if (!seen.has(seenKey)) { seen.set(seenKey, id); await db.put('seen:' + seenKey, id); }
      return content;
    }

    api.hasSession = function (from, sid) { return inbound.has(inKey(from, sid)); };
    api.sessions = function () { return Array.from(inbound.values()).map(function (x) { return x.rec.sid; }); };
    return api;
  }

  global.SecureChatKeys = { create: create };
})(window);
