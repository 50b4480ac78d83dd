'use strict';
// Chat page: rooms and direct messages over one WebSocket. Reconnects with backoff and
// jitter and `sync`s every room it has shown from the last id it saw, so nothing
// acknowledged is missed. Every name and text is rendered inert (textContent only,
// never HTML). No library.
(function () {
  const $ = function (id) { return document.getElementById(id); };
  const list = $('messages');
  const onlineList = $('online');
  const onlineCount = $('online-count');
  const membersList = $('members');
  const memberCount = $('member-count');
  const connection = $('connection');
  const form = $('send-form');
  const input = $('message-input');
  const sendError = $('send-error');
  const me = $('me');
  const typingLine = $('typing');

  const LOBBY = 'lobby';
  const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
  const store = {
    get: function (k) { try { return window.localStorage.getItem(k); } catch (e) { return null; } },
    set: function (k, v) { try { window.localStorage.setItem(k, v); } catch (e) { /* private mode */ } },
    sget: function (k) { try { return window.sessionStorage.getItem(k); } catch (e) { return null; } },
    sset: function (k, v) { try { window.sessionStorage.setItem(k, v); } catch (e) { /* private mode */ } },
  };

  let socket = null;
  let attempt = 0;
  let user = null;
  let online = new Set();
  let welcomed = false;
  let current = store.get('sc.room') || LOBBY;
  const rooms = new Map();     // id -> room state (below)
  const pending = new Map();   // ref -> {room, text, replyTo} until acknowledged
  const waiting = new Map();   // ref -> callback for request replies
  let nextRef = 0;
  let replyTo = null;          // {id, from, text} while replying
  let lastTyping = 0;
  const typingTimers = new Map();  // user -> timer (current room only)
  let keys = null;             // end-to-end encryption (web/secure.js), once signed in
  const MAX_E2EE = 16000;      // an `e2ee` object must stay under the server's 16 KiB

  // Room state: the server's room object, plus what this page holds of its history.
  function roomState(obj) {
    let r = rooms.get(obj.id);
    if (!r) {
      r = { id: obj.id, obj: obj, events: new Map(), order: [], lastId: null, oldestId: null, loaded: false,
            more: true, syncing: false, buffered: [], pendingTargets: new Map(), members: null, notices: [] };
      rooms.set(obj.id, r);
    } else {
      r.obj = Object.assign({}, r.obj, obj);
    }
    return r;
  }

  function parseId(id) {
    const parts = String(id).split('-');
    return [BigInt(parts[0] || '0'), BigInt(parts[1] || '0')];
  }
  function newer(a, b) {  // is id a after id b?
    if (b === null || b === undefined) return true;
    const x = parseId(a), y = parseId(b);
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }
  function byId(a, b) { return a.id === b.id ? 0 : (newer(a.id, b.id) ? 1 : -1); }

  function request(frame, callback) {
    const ref = 'q' + (++nextRef) + '-' + Date.now();
    frame.ref = ref;
    if (callback) waiting.set(ref, callback);
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
    else if (callback) { waiting.delete(ref); callback({ type: 'error', code: 'offline' }); }
    return ref;
  }

  function ask(frame) { return new Promise(function (resolve) { request(frame, resolve); }); }

  function setState(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  function displayName(r) {
    const o = r.obj;
    if (o.kind === 'dm') {
      const parts = o.id.split(':');
      return parts[1] === user ? parts[2] : parts[1];
    }
    return o.title || o.id;
  }
  // Once a room is seen encrypted it stays so here, whatever a later frame says (a server
  // that could turn the flag off would get plain text); every dm is encrypted.
  const encryptedRooms = new Set((function () { try { return JSON.parse(store.get('sc.encrypted') || '[]'); } catch (e) { return []; } })());
  function isEncrypted(r) {
    if (!r) return false;
    if ((r.obj.encrypted || r.obj.kind === 'dm' || r.id.startsWith('dm:')) && !encryptedRooms.has(r.id)) {
      encryptedRooms.add(r.id);
      store.set('sc.encrypted', JSON.stringify(Array.from(encryptedRooms).slice(-5000)));
    }
    return encryptedRooms.has(r.id);
  }

  // ---- sidebar ----------------------------------------------------------

  function renderSidebar() {
    const roomItems = [], dmItems = [];
    Array.from(rooms.values()).sort(function (a, b) {
      if (a.id === LOBBY) return -1;
      if (b.id === LOBBY) return 1;
      return displayName(a).localeCompare(displayName(b));
    }).forEach(function (r) {
      const li = document.createElement('li');
      const button = document.createElement('button');
      button.type = 'button';
      button.className = 'room-link';
      button.dataset.room = r.id;
      if (r.id === current) { button.setAttribute('aria-current', 'page'); li.className = 'current'; }
      const name = document.createElement('span');
      name.className = 'room-name';
      name.dir = 'auto';
      name.textContent = (r.obj.kind === 'dm' ? '@' : '#') + displayName(r);
      button.appendChild(name);
      const unread = Math.min(100, r.obj.unread || 0);
      let label = (r.obj.kind === 'dm' ? 'Direct message with ' : 'Room ') + displayName(r);
      if (unread > 0) {
        const badge = document.createElement('span');
        badge.className = 'badge';
        badge.textContent = unread >= 100 ? '99+' : String(unread);
        button.appendChild(badge);
        label += ', ' + (unread >= 100 ? 'more than 99' : unread) + ' unread';
      }
      button.setAttribute('aria-label', label);
      li.appendChild(button);
      (r.obj.kind === 'dm' ? dmItems : roomItems).push(li);
    });
    $('room-list').replaceChildren.apply($('room-list'), roomItems);
    $('dm-list').replaceChildren.apply($('dm-list'), dmItems);
    let total = 0;
    rooms.forEach(function (r) { total += Math.min(100, r.obj.unread || 0); });
    document.title = (total > 0 ? '(' + (total >= 100 ? '99+' : total) + ') ' : '') + 'SecureChat';
  }

  $('room-list').addEventListener('click', pickRoom);
  $('dm-list').addEventListener('click', pickRoom);
  function pickRoom(event) {
    const button = event.target.closest('button[data-room]');
    if (button) {
      const wasDrawer = $('sidebar').classList.contains('open');
      openRoom(button.dataset.room);
      closeDrawers();
      // Keyboard users land where they will type (or read, in a room they cannot write to yet).
      if (wasDrawer) (input.disabled ? list : input).focus();
    }
  }

  // ---- the open room ------------------------------------------------------

  function openRoom(id) {
    if (!rooms.has(id)) id = LOBBY;
    saveScroll();
    current = id;
    store.set('sc.room', id);
    cancelReply();
    typingTimers.forEach(function (t) { clearTimeout(t); });
    typingTimers.clear();
    typingLine.textContent = '';
    const r = rooms.get(id);
    $('room-title').textContent = (r.obj.kind === 'dm' ? '@' : '#') + displayName(r);
    $('room-topic').textContent = r.obj.topic || '';
    $('leave').hidden = id === LOBBY || r.obj.kind === 'dm';
    $('invite').hidden = id === LOBBY || r.obj.kind === 'dm';
    renderE2EE();
    renderSidebar();
    renderMessages(true);
    if (!r.loaded) loadOlder(r, true);
    loadMembers(r);
    markRead();
  }

  // What an encrypted room says about itself, and whether this browser can write in it.
  function renderE2EE() {
    const r = rooms.get(current);
    const encrypted = isEncrypted(r);
    const ready = !!(keys && keys.state === 'ready');
    $('recovery-reminder').hidden = !(keys && keys.unseenRecovery);
    $('devices-button').hidden = !ready;
    $('e2ee-note').hidden = !encrypted;
    $('e2ee-setup').hidden = !encrypted || ready;
    const blocked = encrypted && !ready;
    input.disabled = blocked;
    $('send-button').disabled = blocked;
    $('attach-button').disabled = blocked;
    input.placeholder = blocked ? 'This browser has no keys yet: enter your recovery key' : 'Write a message';
    const dm = r && r.obj.kind === 'dm';
    $('verify').hidden = !dm || !ready;
    const other = dm ? displayName(r) : null;
    const c = other && keys ? keys.contact(other) : null;
    $('verified-mark').hidden = !(c && c.verified && !c.changed);
  }

  // The room whose history the list shows (after its first page): only its position is saved,
  // never that of a list still empty or of the room being left.
  let shown = null;
  function saveScroll() {
    const r = rooms.get(current);
    if (!r || !r.loaded || shown !== current) return;
    store.sset('sc.scroll.' + current, String(list.scrollHeight - list.scrollTop - list.clientHeight));
  }
  function restoreScroll() {
    const saved = Number(store.sget('sc.scroll.' + current) || '0');
    list.scrollTop = list.scrollHeight - list.clientHeight - saved;
  }
  function atBottom() { return list.scrollHeight - list.scrollTop - list.clientHeight < 40; }

  function loadOlder(r, first) {
    if (r.loadingOlder || (!first && !r.more)) return;
    r.loadingOlder = true;
    const frame = { type: 'history', room: r.id, limit: 50 };
    if (!first && r.oldestId) frame.before = r.oldestId;
    request(frame, function (reply) {
      r.loadingOlder = false;
      if (reply.type !== 'history') return;
      r.more = reply.more;
      const before = list.scrollHeight - list.scrollTop;
      reply.messages.forEach(function (m) { apply(r, m, true); });
      if (!r.loaded) {
        r.loaded = true;
        const newest = reply.messages.length ? reply.messages[reply.messages.length - 1].id : null;
        if (newest && newer(newest, r.lastId)) r.lastId = newest;
      }
      if (r.id === current) {
        renderMessages(false);
        if (first) restoreScroll(); else list.scrollTop = list.scrollHeight - before;
        markRead();
      }
    });
  }

  list.addEventListener('scroll', function () {
    const r = rooms.get(current);
    if (r && r.loaded && list.scrollTop < 60) loadOlder(r, false);
    if (atBottom()) markRead();
    saveScroll();
  });

  // A history event into the room's model. `old`: from a history page (may be older than what is shown).
  // `count`: a live event the server has not counted in `unread` yet (not a replay).
  function apply(r, m, old, count) {
    if (count === undefined) count = !old;
    if (r.events.has(m.id)) return false;
    if (!old) {
      if (!newer(m.id, r.lastId)) return false;
      r.lastId = m.id;
    }
    if (!r.oldestId || newer(r.oldestId, m.id)) r.oldestId = m.id;
    const kind = m.kind || 'text';
    if (kind === 'text') {
      const e = { id: m.id, from: m.from, ts: m.ts, text: m.text, e2ee: m.e2ee, replyTo: m.reply_to, edited: false,
                  deleted: false, reactions: new Map() };
      r.events.set(m.id, e);
      insertOrdered(r, m.id);
      (r.pendingTargets.get(m.id) || []).forEach(function (x) { modify(r, e, x); });
      r.pendingTargets.delete(m.id);
    } else {
      r.events.set(m.id, { id: m.id, kind: kind });
      const target = r.events.get(m.target);
      if (target && target.reactions) modify(r, target, m);
      else {
        const list_ = r.pendingTargets.get(m.target) || [];
        list_.push(m);
        r.pendingTargets.set(m.target, list_);
      }
    }
    if (kind === 'text' && m.from !== user && count && !(r.id === current && document.hasFocus() && atBottom())) {
      r.obj.unread = (r.obj.unread || 0) + 1;
    }
    r.obj.last_id = newer(m.id, r.obj.last_id) ? m.id : r.obj.last_id;
    return true;
  }

  function insertOrdered(r, id) {
    let i = r.order.length;
    while (i > 0 && newer(r.order[i - 1], id)) i--;
    r.order.splice(i, 0, id);
  }

  // Changes may arrive in any order (a live edit before the history page holding an older one):
  // the newest edit wins, and per emoji and user the newest reaction event.
  function modify(r, e, m) {
    if (m.kind === 'edit') {
      if (m.from !== e.from) return;   // only its author edits a message
      if (e.editId && !newer(m.id, e.editId)) return;
      e.editId = m.id;
      e.text = m.text; e.e2ee = m.e2ee; e.edited = true;
    } else if (m.kind === 'delete') { e.deleted = true; e.text = ''; e.e2ee = null; }
    else if (m.kind === 'reaction') {
      e.reactionIds = e.reactionIds || new Map();
      const key = m.emoji + '\n' + m.from;
      if (e.reactionIds.has(key) && !newer(m.id, e.reactionIds.get(key))) return;
      e.reactionIds.set(key, m.id);
      const who = e.reactions.get(m.emoji) || new Set();
      if (m.on) who.add(m.from); else who.delete(m.from);
      if (who.size) e.reactions.set(m.emoji, who); else e.reactions.delete(m.emoji);
    }
  }

  function renderMessages(restore) {
    const r = rooms.get(current);
    const items = [];
    // In id order (never by time: ids order a room); a notice goes after the message shown last when it came.
    const after = new Map();
    (r.id === LOBBY ? r.notices : []).forEach(function (n) {
      const k = n.afterId || '';
      if (!after.has(k)) after.set(k, []);
      after.get(k).push(n.li);
    });
    (after.get('') || []).forEach(function (li) { items.push(li); });
    r.order.forEach(function (id) {
      const e = r.events.get(id);
      if (e && e.reactions) items.push(messageItem(r, e));
      (after.get(id) || []).forEach(function (li) { items.push(li); });
    });
    if (r.loaded && r.order.length === 0) {
      const li = document.createElement('li');
      li.className = 'notice empty';
      li.textContent = r.obj.kind === 'dm' ? 'This is the start of your direct messages.' : 'No messages yet.';
      items.unshift(li);
    }
    const wasBottom = atBottom();
    list.replaceChildren.apply(list, items);
    shown = r.loaded ? r.id : null;
    if (restore) restoreScroll(); else if (wasBottom) list.scrollTop = list.scrollHeight;
  }

  // A live event on the open room: the newest message is appended and a changed one replaced,
  // so the rest of the list stays as it is (focus, selection, scroll).
  function showInPlace(r, m) {
    const kind = m.kind || 'text';
    const wasBottom = atBottom();
    if (kind === 'text' && r.order[r.order.length - 1] === m.id) {
      const empty = list.querySelector('li.notice.empty');
      if (empty) empty.remove();
      list.appendChild(messageItem(r, r.events.get(m.id)));
    } else if (kind !== 'text' && r.events.get(m.target) && r.events.get(m.target).reactions) {
      const old = list.querySelector('li.message[data-id="' + CSS.escape(m.target) + '"]');
      if (old) old.replaceWith(messageItem(r, r.events.get(m.target)));
      // A reply quoting it shows the change too.
      list.querySelectorAll('li.message').forEach(function (li) {
        const e = r.events.get(li.dataset.id);
        if (e && e.replyTo === m.target) li.replaceWith(messageItem(r, e));
      });
    } else if (kind === 'text') {
      renderMessages(false);
    }
    if (wasBottom) list.scrollTop = list.scrollHeight;
  }

  // ---- encrypted content ----------------------------------------------------------

  // What a message says: {text, file?, state}, or a `notice` in its place while (or why) it
  // cannot be read. Decrypted once per envelope (an edit brings a new one), then redrawn.
  const E2EE_NOTICES = {
    pending: '🔒 Decrypting…',
    no_keys: '🔒 Encrypted. This browser has no keys yet: enter your recovery key to read it.',
    no_key: '🔒 This device has no key for this message: it was sent before you joined (or before this browser had your keys), and nobody shared it.',
    untrusted: '⚠ Sent with new keys of its author that you have not accepted (see the warning at the top).',
    bad: '⚠ This message failed its integrity check and is not shown.',
    unencrypted: '⚠ This message came without encryption into an encrypted room, so it cannot be from a member, and is not shown.',
  };
  function contentOf(r, e) {
    // Plain text in an encrypted room came from no member's device (the server, or a bug): not shown as theirs.
    if (!e.e2ee && isEncrypted(r)) return { notice: E2EE_NOTICES.unencrypted, state: 'unencrypted' };
    if (!e.e2ee) return { text: e.text, state: 'plain', file: fileRef(e.text) };
    if (!e.dec || e.dec.env !== e.e2ee) decrypt(r, e);
    const d = e.dec;
    if (d.state === 'ok') return d;
    return { notice: E2EE_NOTICES[d.state] || E2EE_NOTICES.bad, state: d.state };
  }
  function decrypt(r, e) {
    const env = e.e2ee;
    if (!keys || keys.state !== 'ready') { e.dec = { env: env, state: 'no_keys' }; return; }
    e.dec = { env: env, state: 'pending' };
    const expect = e.editId ? { kind: 'edit', edit_of: e.id } : { kind: 'message', reply_to: e.replyTo || null };
    keys.decrypt(r.id, e.from, e.editId || e.id, env, expect).then(function (c) {
      const file = c.file && typeof c.file === 'object' && typeof c.file.id === 'string' ? c.file : null;
      return { env: env, state: 'ok', text: typeof c.text === 'string' ? c.text : '', file: file };
    }, function (err) {
      return { env: env, state: err && err.code ? err.code : 'bad' };
    }).then(function (d) {
      if (e.e2ee !== env) return;
      e.dec = d;
      redraw(r, e.id);
    });
  }
  // Messages that could not be read yet, tried again (a key arrived, keys restored or accepted).
  function retryDecrypts(roomId) {
    rooms.forEach(function (r) {
      if (roomId && r.id !== roomId) return;
      r.events.forEach(function (e) {
        if (e.dec && (e.dec.state === 'no_key' || e.dec.state === 'no_keys' || e.dec.state === 'untrusted')) e.dec = null;
      });
      if (r.id === current) renderMessages(false);
    });
  }
  function redraw(r, id) {
    if (r.id !== current) return;
    const e = r.events.get(id);
    const old = list.querySelector('li.message[data-id="' + CSS.escape(id) + '"]');
    if (old && e) old.replaceWith(messageItem(r, e));
    list.querySelectorAll('li.message').forEach(function (li) {
      const x = r.events.get(li.dataset.id);
      if (x && x.replyTo === id) li.replaceWith(messageItem(r, x));
    });
  }
  // One encrypt at a time per room, through web/secure.js (which shares keys first if needed).
  function sealed(room, content) {
    if (!keys || keys.state !== 'ready') return Promise.reject(new Error('This browser has no keys yet: enter your recovery key.'));
    return keys.encrypt(room, content).then(function (env) {
      if (JSON.stringify(env).length > MAX_E2EE) throw new Error(errorTexts.too_long);
      return env;
    });
  }

  // ---- files ----------------------------------------------------------------------

  // A plain room's file message: "📎 name (type, size) /api/files/<id>".
  function fileRef(text) {
    const m = /^📎 (.{1,200}) \(([\w.+-]+\/[\w.+-]+), (\d+) bytes\) \/api\/files\/([0-9a-f]{32})$/.exec(text || '');
    return m ? { name: m[1], type: m[2], size: Number(m[3]), id: m[4] } : null;
  }
  function fileItem(r, e, f) {
    const box = document.createElement('span');
    box.className = 'file';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'link-button';
    b.textContent = '⬇ ' + String(f.name || 'file') + ' (' + Math.ceil((Number(f.size) || 0) / 1024) + ' KiB)';
    b.setAttribute('aria-label', 'Download ' + String(f.name || 'file'));
    b.addEventListener('click', function () {
      fileBlob(f).then(function (blob) {
        const a = document.createElement('a');
        a.href = URL.createObjectURL(blob);
        a.download = String(f.name || 'file');
        a.click();
        setTimeout(function () { URL.revokeObjectURL(a.href); }, 60000);
      }, function (err) { showSendError('Could not download the file: ' + err.message); });
    });
    box.appendChild(b);
    if (/^image\/(png|jpeg|gif|webp)$/.test(String(f.type)) && Number(f.size) <= 10 * 1024 * 1024) {
      const img = document.createElement('img');
      img.className = 'preview';
      img.alt = 'Preview of ' + String(f.name || 'image');
      if (e.previewUrl && e.previewFor === f.id) img.src = e.previewUrl;
      else fileBlob(f).then(function (blob) {
        e.previewFor = f.id;
        e.previewUrl = URL.createObjectURL(blob);
        img.src = e.previewUrl;
      }, function () { img.alt = 'The preview could not be loaded'; });
      box.appendChild(img);
    }
    return box;
  }
  // The file's bytes: fetched (members only), decrypted here when the message carried a key.
  const blobs = new Map();   // file id -> Promise<Blob>
  function fileBlob(f) {
    if (blobs.has(f.id)) return blobs.get(f.id);
    const p = fetch('/api/files/' + encodeURIComponent(f.id), { credentials: 'same-origin' }).then(function (res) {
      if (!res.ok) throw new Error(res.status === 404 ? 'not found, or not in this room' : 'HTTP ' + res.status);
      return res.arrayBuffer();
    }).then(function (buf) {
      if (!f.key) return new Uint8Array(buf);
      return window.SecureChatE2EE.decryptFile(new Uint8Array(buf), f.key, f.iv);
    }).then(function (bytes) {
      // Typed only as the images previewed; anything else downloads as bytes.
      const type = /^image\/(png|jpeg|gif|webp)$/.test(String(f.type)) ? String(f.type) : 'application/octet-stream';
      return new Blob([bytes], { type: type });
    });
    blobs.set(f.id, p);
    p.catch(function () { blobs.delete(f.id); });
    return p;
  }
  $('attach-button').addEventListener('click', function () { $('file-input').click(); });
  $('file-input').addEventListener('change', function () {
    const file = $('file-input').files[0];
    $('file-input').value = '';
    if (file) sendFile(current, file);
  });
  async function sendFile(roomId, file) {
    const r = rooms.get(roomId);
    if (!r) return;
    if (file.size > 10 * 1024 * 1024) { showSendError('Files can be at most 10 MiB.'); return; }
    const type = /^[\w.+-]+\/[\w.+-]+$/.test(file.type) ? file.type : 'application/octet-stream';
    const name = file.name.replace(/[\u0000-\u001f\u007f]/g, '').slice(0, 200) || 'file';
    try {
      let bytes = new Uint8Array(await file.arrayBuffer());
      let secret = null;
      if (isEncrypted(r)) {
        secret = await window.SecureChatE2EE.encryptFile(bytes);
        bytes = secret.ciphertext;
      }
      const res = await fetch('/api/files?room=' + encodeURIComponent(roomId), {
        method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/octet-stream' }, body: bytes });
      const answer = await res.json().catch(function () { return {}; });
      if (res.status !== 201) {
        const why = { 404: 'you are not in this room', 413: 'it is over the size limit', 429: 'too many uploads, try again shortly', 507: 'the server is out of file space' }[res.status];
        throw new Error(why || 'HTTP ' + res.status);
      }
      const ref = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
      const frame = { type: 'send', ref: ref, room: roomId };
      if (secret) frame.e2ee = await sealed(roomId, { kind: 'message', text: '', reply_to: null, file: { id: answer.id, key: secret.key, iv: secret.iv, name: name, type: type, size: file.size } });
      else frame.text = '📎 ' + name.slice(0, 200) + ' (' + type + ', ' + file.size + ' bytes) /api/files/' + answer.id;
      pending.set(ref, { room: roomId, text: frame.text, e2ee: frame.e2ee, sentOn: socket });
      if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify(frame));
    } catch (err) {
      showSendError('Could not send the file: ' + err.message);
    }
  }

  function messageItem(r, e) {
    const li = document.createElement('li');
    li.className = 'message' + (e.deleted ? ' deleted' : '');
    li.dataset.id = e.id;
    li.dataset.ts = String(e.ts);
    const time = document.createElement('time');
    time.className = 'time';
    const date = new Date(Number(e.ts));
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const author = document.createElement('button');
    author.type = 'button';
    author.className = 'author link-button';
    author.textContent = e.from;
    author.dataset.user = e.from;
    author.setAttribute('aria-label', e.from + (e.from === user ? '' : ', open a direct message'));
    const text = document.createElement('span');
    text.className = 'text';
    // Its own direction, isolated (style.css): bidi controls in a text cannot reorder the
    // time or the author, nor run into the next message.
    text.dir = 'auto';
    const c = contentOf(r, e);
    if (e.deleted) text.textContent = 'This message was deleted.';
    else if (c.notice) { text.textContent = c.notice; text.classList.add('e2ee-state'); }
    else text.textContent = c.text;
    if (isEncrypted(r) && !e.deleted) li.dataset.e2ee = c.state;
    const parts = [time, author];
    if (e.replyTo) {
      const quote = document.createElement('span');
      quote.className = 'quote';
      quote.dir = 'auto';
      const target = r.events.get(e.replyTo);
      quote.textContent = '↪ ' + (target && target.reactions ? target.from + ': ' + (target.deleted ? 'deleted' : (contentOf(r, target).text || '')).slice(0, 80) : 'an earlier message');
      parts.push(quote);
    }
    parts.push(text);
    if (c.file && !e.deleted) parts.push(fileItem(r, e, c.file));
    if (e.edited && !e.deleted) {
      const edited = document.createElement('span');
      edited.className = 'edited';
      edited.textContent = '(edited)';
      parts.push(edited);
    }
    li.append.apply(li, parts);
    if (e.reactions.size) {
      const chips = document.createElement('span');
      chips.className = 'reactions';
      e.reactions.forEach(function (who, emoji) {
        const chip = document.createElement('button');
        chip.type = 'button';
        chip.className = 'chip' + (who.has(user) ? ' mine' : '');
        chip.dataset.action = 'toggle';
        chip.dataset.emoji = emoji;
        chip.textContent = emoji + ' ' + who.size;
        chip.setAttribute('aria-pressed', who.has(user) ? 'true' : 'false');
        chip.setAttribute('aria-label', emoji + ' by ' + Array.from(who).sort().join(', '));
        chips.appendChild(chip);
      });
      li.appendChild(chips);
    }
    if (!e.deleted) {
      const actions = document.createElement('span');
      actions.className = 'actions';
      const add = function (action, label, aria) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'link-button';
        b.dataset.action = action;
        b.textContent = label;
        b.setAttribute('aria-label', aria);
        actions.appendChild(b);
      };
      add('reply', 'Reply', 'Reply to ' + e.from);
      add('react', 'React', 'React to the message of ' + e.from);
      if (e.from === user && !c.file && (!e.e2ee || c.state === 'ok')) add('edit', 'Edit', 'Edit your message');
      if (e.from === user || r.obj.owner === user) add('delete', 'Delete', 'Delete the message');
      li.appendChild(actions);
    }
    return li;
  }

  list.addEventListener('click', function (event) {
    const b = event.target.closest('button');
    if (!b) return;
    if (b.dataset.user) { if (b.dataset.user !== user) openDM(b.dataset.user); return; }
    const li = b.closest('li.message');
    if (!li) return;
    const r = rooms.get(current), e = r.events.get(li.dataset.id);
    if (!e) return;
    switch (b.dataset.action) {
      case 'reply':
        replyTo = { id: e.id, from: e.from };
        $('reply-text').textContent = 'Replying to ' + e.from + ': ' + (contentOf(r, e).text || '').slice(0, 80);
        $('reply-bar').hidden = false;
        input.focus();
        break;
      case 'react': showReactionPicker(li, e); break;
      case 'pick':
      case 'toggle': {
        const emoji = b.dataset.emoji;
        const picker = li.querySelector('.picker');
        if (picker) picker.remove();
        const on = !(e.reactions.get(emoji) && e.reactions.get(emoji).has(user));
        request({ type: 'react', room: r.id, id: e.id, emoji: emoji, on: on }, showRefusal);
        break;
      }
      case 'edit': editInPlace(li, r, e); break;
      case 'delete':
        if (window.confirm('Delete this message for everyone?')) request({ type: 'delete', room: r.id, id: e.id }, showRefusal);
        break;
    }
  });

  function showReactionPicker(li, e) {
    const old = li.querySelector('.picker');
    if (old) { old.remove(); return; }
    const picker = document.createElement('span');
    picker.className = 'picker';
    picker.setAttribute('role', 'group');
    picker.setAttribute('aria-label', 'Pick a reaction');
    REACTIONS.forEach(function (emoji) {
      const b = document.createElement('button');
      b.type = 'button';
      b.className = 'chip';
      b.dataset.action = 'pick';
      b.dataset.emoji = emoji;
      b.textContent = emoji;
      b.setAttribute('aria-label', 'React with ' + emoji);
      picker.appendChild(b);
    });
    picker.addEventListener('keydown', function (event) {
      if (event.key === 'Escape') {
        event.stopPropagation();
        picker.remove();
        const react = li.querySelector('button[data-action="react"]');
        if (react) react.focus();
      }
    });
    li.appendChild(picker);
    picker.firstChild.focus();
  }

  function editInPlace(li, r, e) {
    const text = li.querySelector('.text');
    if (!text) return;   // already being edited
    const box = document.createElement('input');
    box.className = 'edit-box';
    const before = contentOf(r, e).text || '';
    box.value = before;
    box.maxLength = 4000;
    box.setAttribute('aria-label', 'Edit message; Enter saves, Escape cancels');
    text.replaceWith(box);
    box.focus();
    const refocus = function () {
      const again = list.querySelector('li.message[data-id="' + CSS.escape(e.id) + '"] button[data-action="edit"]');
      if (again) again.focus();
    };
    box.addEventListener('keydown', function (event) {
      if (event.isComposing) return;
      if (event.key === 'Escape') { event.stopPropagation(); renderMessages(false); refocus(); }
      if (event.key === 'Enter') {
        event.preventDefault();
        const value = box.value;
        if (value.trim() === '' || value.trim() === before) { renderMessages(false); refocus(); return; }
        const done = function (reply) {
          if (reply.type === 'error') showRefusal(reply); else { renderMessages(false); refocus(); }
        };
        if (!isEncrypted(r)) { request({ type: 'edit', room: r.id, id: e.id, text: value }, done); return; }
        sealed(r.id, { kind: 'edit', text: value, edit_of: e.id }).then(function (env) {
          request({ type: 'edit', room: r.id, id: e.id, e2ee: env }, done);
        }, function (err) { showSendError(err.message); });
      }
    });
  }

  function cancelReply() { replyTo = null; $('reply-bar').hidden = true; }
  $('reply-cancel').addEventListener('click', cancelReply);

  // ---- read markers and unread counts ------------------------------------

  let readTimer = null;
  function markRead() {
    if (readTimer) return;
    readTimer = setTimeout(function () {
      readTimer = null;
      const r = rooms.get(current);
      if (!r || !r.lastId || !document.hasFocus() || !atBottom()) return;
      if (r.obj.read && !newer(r.lastId, r.obj.read)) { if (r.obj.unread) { r.obj.unread = 0; renderSidebar(); } return; }
      r.obj.read = r.lastId;
      r.obj.unread = 0;
      renderSidebar();
      request({ type: 'read', room: r.id, id: r.lastId });
    }, 300);
  }
  window.addEventListener('focus', markRead);

  function unreadAfter(r, id) {
    let n = 0;
    r.order.forEach(function (x) { const e = r.events.get(x); if (newer(x, id) && e && e.from !== user) n++; });
    return n;
  }

  // ---- members and presence -------------------------------------------------

  function loadMembers(r) {
    request({ type: 'members', room: r.id }, function (reply) {
      if (reply.type !== 'members') return;
      r.members = reply.members.map(function (m) { return m.user; });
      reply.members.forEach(function (m) { if (m.online) online.add(m.user); });
      if (r.id === current) renderMembers();
      renderOnline();
    });
  }

  function personItem(name, withDot) {
    const li = document.createElement('li');
    if (withDot) li.className = online.has(name) ? 'is-online' : 'is-offline';
    const b = document.createElement('button');
    b.type = 'button';
    b.className = 'link-button';
    b.dataset.user = name;
    b.textContent = name;
    b.setAttribute('aria-label', name + (withDot ? (online.has(name) ? ', online' : ', offline') : '') +
                   (name === user ? '' : ', open a direct message'));
    li.appendChild(b);
    return li;
  }

  function renderMembers() {
    const r = rooms.get(current);
    const names = (r && r.members) || [];
    const owner = r && r.id !== LOBBY && r.obj.kind !== 'dm' && r.obj.owner === user;
    membersList.replaceChildren.apply(membersList, names.map(function (n) {
      const li = personItem(n, true);
      if (owner && n !== user) {
        const x = document.createElement('button');
        x.type = 'button';
        x.className = 'link-button remove-member';
        x.dataset.remove = n;
        x.textContent = 'Remove';
        x.setAttribute('aria-label', 'Remove ' + n + ' from the room');
        li.appendChild(x);
      }
      return li;
    }));
    memberCount.textContent = String(r ? r.obj.members : 0);
  }

  function renderOnline() {
    onlineList.replaceChildren.apply(onlineList, Array.from(online).sort().map(function (n) { return personItem(n, false); }));
    onlineCount.textContent = String(online.size);
    renderMembers();
  }

  [membersList, onlineList].forEach(function (l) {
    l.addEventListener('click', function (event) {
      const x = event.target.closest('button[data-remove]');
      if (x) {
        const name = x.dataset.remove, roomId = current;
        if (window.confirm('Remove ' + name + ' from this room?')) removeMember(roomId, name).then(showRefusal);
        return;
      }
      const b = event.target.closest('button[data-user]');
      if (b && b.dataset.user !== user) openDM(b.dataset.user);
    });
  });

  // The chain of an encrypted room is made stale as soon as the removal is answered, before
  // the `member` event arrives: a message typed right after must not go on the old chain.
  function removeMember(roomId, name) {
    return ask({ type: 'remove', room: roomId, user: name }).then(function (reply) {
      if (reply.type !== 'ok' || !keys) return reply;
      return keys.onMember(roomId, name, false).then(function () { return reply; }, function () { return reply; });
    });
  }

  function openDM(name) {
    request({ type: 'open_dm', user: name }, function (reply) {
      if (reply.type === 'room_added') { roomState(reply.room); openRoom(reply.room.id); closeDrawers(); }
      else showRefusal(reply);
    });
  }

  function lobbyNotice(text) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.dataset.ts = String(Date.now());
    li.textContent = text;
    const lobby = rooms.get(LOBBY);
    if (!lobby) return;
    lobby.notices.push({ li: li, afterId: lobby.lastId });
    if (lobby.notices.length > 50) lobby.notices.shift();
    if (current === LOBBY) { const b = atBottom(); list.appendChild(li); if (b) list.scrollTop = list.scrollHeight; }
  }

  // ---- typing ---------------------------------------------------------------

  input.addEventListener('input', function () {
    const now = Date.now();
    if (now - lastTyping < 2000 || input.value.trim() === '') return;
    lastTyping = now;
    if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ type: 'typing', room: current }));
  });

  function showTyping(name) {
    clearTimeout(typingTimers.get(name));
    typingTimers.set(name, setTimeout(function () { typingTimers.delete(name); renderTyping(); }, 5000));
    renderTyping();
  }
  function renderTyping() {
    const names = Array.from(typingTimers.keys()).sort();
    typingLine.textContent = names.length === 0 ? '' : names.join(', ') + (names.length === 1 ? ' is typing…' : ' are typing…');
  }

  // ---- errors ---------------------------------------------------------------

  function showSendError(text) {
    sendError.textContent = text;
    sendError.hidden = false;
  }

  const errorTexts = {
    too_long: 'That message is too long (at most 2000 characters).',
    empty: 'Type something first.',
    bad_request: 'The server could not read that request.',
    unknown_type: 'The server did not understand that request.',
    unavailable: 'Chat is briefly unavailable; your message was kept, try again.',
    not_found: 'No such room, user or message.',
    not_member: 'Join the room first.',
    forbidden: 'You may not do that here.',
    room_exists: 'That room name is taken.',
    limit: 'A limit was reached.',
    offline: 'Not connected yet; try again in a moment.',
  };
  function errorText(frame) {
    if (frame.code === 'rate_limited') {
      const seconds = Math.max(1, Math.ceil((frame.retry_after_ms || 1000) / 1000));
      return 'You are sending too fast. Try again in ' + seconds + ' s.';
    }
    return (frame.code === 'limit' && frame.message) ? 'Limit reached: ' + frame.message + '.' : (errorTexts[frame.code] || 'The server refused that.');
  }
  function showRefusal(reply) { if (reply && reply.type === 'error') showSendError(errorText(reply)); }

  // ---- frames ---------------------------------------------------------------

  function roomFrame(r, m) {
    if (r.syncing) { r.buffered.push(m); return; }
    const shown = apply(r, m, false);
    if (!shown) return;
    if (r.id === current) { showInPlace(r, m); if (atBottom()) markRead(); }
    renderSidebar();
  }

  function handle(frame) {
    if (frame.ref && waiting.has(frame.ref)) {
      const cb = waiting.get(frame.ref);
      waiting.delete(frame.ref);
      cb(frame);
      // Errors of requests are shown by their callback (a dialog's own line), not again below.
      if (frame.type !== 'ack') return;
    }
    switch (frame.type) {
      case 'welcome': {
        user = frame.user;
        me.textContent = 'Signed in as ' + frame.user;
        online = new Set(frame.online);
        followRooms(frame.rooms);
        const lobby = rooms.get(LOBBY);
        if (!welcomed) {
          frame.history.forEach(function (m) { apply(lobby, m, true); });
          if (frame.history.length) lobby.lastId = frame.history[frame.history.length - 1].id;
          lobby.loaded = true;
          lobby.more = frame.history.length > 0;
        } else {
          // After a reconnect: replay every room this page has loaded from the last id seen (an
          // empty one from the start), in order, before its live events; one sync at a time.
          syncQueue = [];
          rooms.forEach(function (r) {
            if (!r.loaded) return;
            r.syncing = true;
            r.buffered = r.id === LOBBY ? frame.history.slice() : [];
            syncQueue.push(r.id);
          });
          nextSync();
        }
        resendPending();
        if (!keys) startKeys(frame.user);
        else keys.publish();
        welcomed = true;
        renderOnline();
        openRoom(rooms.has(current) ? current : LOBBY);
        break;
      }
      case 'message': {
        const r = rooms.get(frame.room);
        if (r) roomFrame(r, frame);
        break;
      }
      case 'synced': {
        const r = rooms.get(frame.room);
        if (syncing === frame.room) { syncing = null; nextSync(); }
        if (!r) break;
        finishSync(r);
        if (!frame.recovered && r.id === LOBBY) lobbyNotice('Some older messages could not be recovered.');
        resendPending();
        break;
      }
      case 'room_added':
        roomState(frame.room);
        renderSidebar();
        break;
      case 'room_removed':
        if (keys) keys.forgetRoom(frame.room).catch(function () {});
        rooms.delete(frame.room);
        if (current === frame.room) openRoom(LOBBY); else renderSidebar();
        break;
      case 'room_updated': {
        const r = rooms.get(frame.room.id);
        if (!r) break;
        const keep = { read: r.obj.read, unread: r.obj.unread };
        r.obj = Object.assign({}, r.obj, frame.room, keep);
        if (r.id === current) { $('room-title').textContent = '#' + displayName(r); $('room-topic').textContent = r.obj.topic || ''; }
        renderSidebar();
        break;
      }
      case 'rooms':
        // Unsolicited after the server lost track for a while: the list as it is now.
        followRooms(frame.rooms);
        if (!rooms.has(current)) openRoom(LOBBY); else renderSidebar();
        break;
      case 'member': {
        const r = rooms.get(frame.room);
        if (!r) break;
        r.obj.members = Math.max(0, (r.obj.members || 0) + (frame.joined ? 1 : -1));
        if (r.members) {
          if (frame.joined && r.members.indexOf(frame.user) < 0) r.members.push(frame.user);
          if (!frame.joined) r.members = r.members.filter(function (n) { return n !== frame.user; });
          r.members.sort();
        }
        if (r.id === current) renderMembers();
        if (keys && isEncrypted(r)) {
          keys.onMember(r.id, frame.user, frame.joined).then(function () {
            if (frame.joined) return keys.shareNow(r.id);
          }).catch(function () {});
        }
        break;
      }
      case 'to_device':
        if (keys) keys.onToDevice(frame);
        break;
      case 'devices':
        if (keys) keys.onDevices(frame.user).catch(function () {});
        break;
      case 'typing':
        if (frame.room === current && frame.user !== user) showTyping(frame.user);
        break;
      case 'read': {
        const r = rooms.get(frame.room);
        if (!r) break;
        if (!r.obj.read || newer(frame.id, r.obj.read)) {
          r.obj.read = frame.id;
          r.obj.unread = unreadAfter(r, frame.id);
          renderSidebar();
        }
        break;
      }
      case 'presence':
        if (frame.online && !online.has(frame.user)) {
          online.add(frame.user);
          if (frame.user !== user) lobbyNotice(frame.user + ' joined');
        } else if (!frame.online && online.has(frame.user)) {
          online.delete(frame.user);
          lobbyNotice(frame.user + ' left');
        }
        renderOnline();
        break;
      case 'ack':
        if (frame.ref && pending.has(frame.ref)) {
          const p = pending.get(frame.ref);
          pending.delete(frame.ref);
          if (input.value === p.text) input.value = '';
        }
        sendError.hidden = true;
        break;
      case 'error':
        if (!frame.ref && syncing) {
          // The outstanding sync was refused: again later (rate limit, Redis), or not at all (room gone).
          const id = syncing;
          syncing = null;
          if (frame.code === 'rate_limited' || frame.code === 'unavailable') {
            syncQueue.unshift(id);
            setTimeout(nextSync, frame.retry_after_ms || 1000);
          } else {
            const r = rooms.get(id);
            if (r) finishSync(r);
            nextSync();
          }
          break;
        }
        if (frame.ref) pending.delete(frame.ref);
        showSendError(frame.code === 'rate_limited' ? errorText(frame) + ' Your message is still in the box.' : errorText(frame));
        break;
    }
  }

  // Reconnect syncs go one at a time: the server answers each with `synced` (or an error),
  // and its sync limit allows a burst, then one a second.
  let syncQueue = [];
  let syncing = null;
  function nextSync() {
    if (syncing || !socket || socket.readyState !== WebSocket.OPEN) return;
    while (syncQueue.length) {
      const id = syncQueue.shift();
      const r = rooms.get(id);
      if (!r || !r.syncing) continue;
      syncing = id;
      socket.send(JSON.stringify({ type: 'sync', room: id, since: r.lastId || '0-0' }));
      return;
    }
  }
  function finishSync(r) {
    r.syncing = false;
    // Replayed events are in the server's unread count already.
    r.buffered.sort(byId).forEach(function (m) { apply(r, m, false, false); });
    r.buffered = [];
    if (r.id === current) { renderMessages(false); markRead(); }
    renderSidebar();
  }

  // Sends not acknowledged before the connection dropped go again with the same ref (stored
  // once), each once its room is caught up.
  function resendPending() {
    if (!socket || socket.readyState !== WebSocket.OPEN) return;
    pending.forEach(function (p, ref) {
      const r = rooms.get(p.room);
      if (p.sentOn === socket || p.encrypting || (r && r.syncing)) return;
      p.sentOn = socket;
      const frame = { type: 'send', ref: ref, room: p.room };
      if (p.e2ee) frame.e2ee = p.e2ee; else frame.text = p.text;
      if (p.replyTo) frame.reply_to = p.replyTo;
      socket.send(JSON.stringify(frame));
    });
  }

  // The user's rooms as the server listed them: new ones added, gone ones dropped.
  function followRooms(list_) {
    const seen = new Set();
    list_.forEach(function (o) { roomState(o); seen.add(o.id); });
    Array.from(rooms.keys()).forEach(function (id) { if (!seen.has(id)) rooms.delete(id); });
  }

  function connect() {
    const first = attempt === 0 && !welcomed;
    setState(first ? 'connecting' : 'reconnecting', first ? 'Connecting…' : 'Reconnecting…');
    socket = new WebSocket('wss://' + window.location.host + '/ws');
    socket.addEventListener('open', function () {
      attempt = 0;
      setState('online', 'Connected');
    });
    socket.addEventListener('message', function (event) {
      let frame;
      try { frame = JSON.parse(event.data); } catch (e) { return; }
      handle(frame);
    });
    socket.addEventListener('close', function (event) {
      rooms.forEach(function (r) { r.syncing = false; r.buffered = []; });
      syncQueue = [];
      syncing = null;
      waiting.forEach(function (cb) { cb({ type: 'error', code: 'offline' }); });
      waiting.clear();
      if (event.code === 4001) {
        window.location.assign('/');
        return;
      }
      if (event.code === 4009) {
        // Too many sockets open for this account: reconnecting would only be refused again.
        setState('offline', 'Too many open windows for this account. Close one, then reload.');
        return;
      }
      attempt += 1;
      const base = event.code === 1012 ? 100 : Math.min(10000, 500 * Math.pow(2, attempt - 1));
      const delay = base / 2 + Math.random() * base / 2;
      setState('reconnecting', 'Reconnecting…');
      setTimeout(async function () {
        // A socket refused at the upgrade may mean the session is gone.
        try {
          const r = await fetch('/api/me', { credentials: 'same-origin' });
          if (r.status === 401) { window.location.assign('/'); return; }
        } catch (e) { /* server unreachable: keep trying */ }
        connect();
      }, delay);
    });
  }

  form.addEventListener('submit', function (event) {
    event.preventDefault();
    const text = input.value;
    if (text.trim() === '') { showSendError(errorTexts.empty); return; }
    if (!socket || socket.readyState !== WebSocket.OPEN) {
      showSendError('Not connected yet; your message is still in the box.');
      return;
    }
    // The same text still waiting for its ack (a second Enter): not sent twice.
    let waitingAlready = false;
    pending.forEach(function (p) { if (p.room === current && p.text === text) waitingAlready = true; });
    if (waitingAlready) return;
    const ref = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
    const frame = { type: 'send', ref: ref, room: current };
    if (replyTo) frame.reply_to = replyTo.id;
    const p = { room: current, text: text, replyTo: frame.reply_to, sentOn: socket };
    pending.set(ref, p);
    sendError.hidden = true;
    cancelReply();
    list.scrollTop = list.scrollHeight;
    if (!isEncrypted(rooms.get(current))) {
      frame.text = text;
      socket.send(JSON.stringify(frame));
      return;
    }
    // Encrypted: the text never leaves this page; its envelope does, once keys are shared.
    p.encrypting = true;
    p.sentOn = null;
    sealed(current, { kind: 'message', text: text, reply_to: frame.reply_to || null }).then(function (env) {
      p.encrypting = false;
      p.e2ee = env;
      if (!pending.has(ref)) return;
      if (socket && socket.readyState === WebSocket.OPEN && !(rooms.get(p.room) || {}).syncing) {
        p.sentOn = socket;
        frame.e2ee = env;
        socket.send(JSON.stringify(frame));
      }
    }, function (err) {
      pending.delete(ref);
      showSendError('Not sent: ' + err.message + ' Your message is still in the box.');
    });
  });

  // ---- keys: set-up, recovery, verification -------------------------------------

  function onKeyEvent(ev) {
    if (ev.type === 'key') retryDecrypts(ev.room);
    else if (ev.type === 'keys') { retryDecrypts(null); renderE2EE(); }
    else if (ev.type === 'changed') {
      lobbyNotice(ev.user + '’s keys changed (a new browser, or keys made again). Compare safety numbers in a direct message if it matters.');
    } else if (ev.type === 'warning') { renderKeyWarning(); renderE2EE(); }
    else if (ev.type === 'verified') { renderKeyWarning(); renderE2EE(); retryDecrypts(null); }
    else if (ev.type === 'removed') {
      renderE2EE();
      lobbyNotice('This browser was removed from your devices, from another of yours: it no longer reads or sends encrypted messages.');
      showRestore('removed');
    }
  }

  async function startKeys(name) {
    if (!window.SecureChatKeys || !window.indexedDB) return;
    keys = window.SecureChatKeys.create({ user: name, request: ask, onEvent: onKeyEvent });
    // For tests and benchmarks driving the page (a script here can use the keys anyway; the
    // CSP lets no other script run).
    window.SecureChatPage = { keys: keys, request: ask, removeMember: removeMember };
    let state;
    try { state = await keys.start(); } catch (e) {
      // Nothing is decided on an answer not had: tried again on the next connection.
      keys = null;
      lobbyNotice('Could not check your encryption keys (' + e.message + '); trying again when reconnected.');
      renderE2EE();
      return;
    }
    if (state === 'new') {
      await keys.publish();
      lobbyNotice('Encryption keys were made for you in this browser. Save your recovery key (the button at the top): without it no other browser of yours can read your encrypted messages.');
    } else if (state === 'ready') {
      await keys.publish();
    } else {
      showRestore(state);
    }
    renderE2EE();
    renderKeyWarning();
    retryDecrypts(null);
  }

  // The recovery key is shown once, when the user asks (a button at the top until then).
  function showRecovery() {
    if (!keys || !keys.unseenRecovery) return;
    $('recovery-key').textContent = keys.unseenRecovery;
    $('recovery-dialog').showModal();
  }
  $('recovery-reminder').addEventListener('click', showRecovery);
  $('recovery-done').addEventListener('click', function () {
    $('recovery-key').textContent = '';
    $('recovery-dialog').close();
    keys.recoverySeen().then(renderE2EE);
  });

  function showRestore(state) {
    $('restore-form').reset();
    $('restore-error').hidden = true;
    $('restore-why').textContent = state === 'replaced'
      ? 'Your keys were made again in another browser, so the keys in this one are no longer yours. Enter the new recovery key to go on here.'
      : state === 'removed'
        ? 'This browser was removed from your devices. Enter your recovery key to make it one of them again.'
        : 'Your account already has encryption keys, made in another browser. Enter your recovery key to use them here and read your encrypted history.';
    $('restore-dialog').showModal();
  }
  $('e2ee-setup').addEventListener('click', function () { if (keys) showRestore(keys.state); });
  $('restore-form').addEventListener('submit', function (event) {
    event.preventDefault();
    $('restore-error').hidden = true;
    keys.restore($('restore-key').value).then(function (n) {
      $('restore-dialog').close();
      renderKeyWarning();
      lobbyNotice('Keys restored from your backup: ' + n + (n === 1 ? ' conversation key.' : ' conversation keys.'));
      return keys.publish();
    }, function (err) {
      $('restore-error').textContent = err.message;
      $('restore-error').hidden = false;
    }).then(function () { renderE2EE(); retryDecrypts(null); });
  });
  $('restore-later').addEventListener('click', function () {
    $('restore-dialog').close();
    lobbyNotice('Without your recovery key this browser cannot read or send encrypted messages: dms and encrypted rooms show them locked. Use “Enter recovery key” in such a room when you have it.');
    renderE2EE();
  });
  $('restore-reset').addEventListener('click', function () {
    if (!window.confirm('Make new keys? Encrypted messages sent before now stay unreadable in every browser of yours without the old recovery key, your other browsers stop working for encrypted rooms, and your contacts see that your keys changed.')) return;
    $('restore-dialog').close();
    keys.createIdentity().then(function () {
      showRecovery();
      return keys.publish();
    }).then(function () { renderE2EE(); retryDecrypts(null); }, function (err) { showSendError('Could not make new keys: ' + err.message); });
  });

  // A verified contact's keys changed: a warning at the top of every room until dealt with.
  function renderKeyWarning() {
    const changed = keys ? keys.changedContacts() : [];
    $('key-warning').hidden = changed.length === 0;
    $('key-warning-text').textContent = changed.length === 0 ? '' :
      '⚠ The keys of ' + changed.join(', ') + ' changed since you verified ' + (changed.length === 1 ? 'them' : 'them all') +
      '. Until you compare safety numbers again, nothing you send reaches their new keys, and what they send with them stays hidden.';
    $('key-warning-check').dataset.user = changed[0] || '';
  }
  $('key-warning-check').addEventListener('click', function () { showSafety($('key-warning-check').dataset.user); });

  async function showSafety(name) {
    if (!keys || !name) return;
    $('safety-title').textContent = 'Safety number with ' + name;
    $('safety-number').textContent = 'Computing…';
    $('safety-dialog').dataset.user = name;
    $('safety-dialog').showModal();
    let found = null;
    try { found = await keys.safetyNumber(name); } catch (e) { /* shown as none */ }
    const c = keys.contact(name);
    // What "they match" will confirm: the key this number was computed from, nothing else.
    $('safety-dialog').dataset.account = found ? found.account : '';
    $('safety-number').textContent = found ? found.number : 'No keys for ' + name + ' yet: they have not used an encrypted room in a browser.';
    $('safety-state').textContent = !c ? '' : c.changed ? '⚠ Their keys changed since you verified them. This number is of the new keys.'
      : c.verified ? '✓ You verified ' + name + '.' : 'Not verified yet.';
    $('safety-verify').hidden = !found || !c || (c.verified && !c.changed);
    $('safety-verify').textContent = c && c.changed ? 'The numbers match: accept the new keys' : 'The numbers match: mark as verified';
    $('safety-unverify').hidden = !c || !c.verified || !!c.changed;
  }
  $('verify').addEventListener('click', function () { const r = rooms.get(current); if (r && r.obj.kind === 'dm') showSafety(displayName(r)); });
  $('safety-verify').addEventListener('click', async function () {
    const name = $('safety-dialog').dataset.user, accountKey = $('safety-dialog').dataset.account, c = keys.contact(name);
    const ok = c && c.changed ? await keys.acceptChange(name, accountKey) : await keys.setVerified(name, true, accountKey);
    if (!ok) { showSafety(name); return; }   // their keys changed while the number was shown: compare the new one
    $('safety-dialog').close();
  });
  $('safety-unverify').addEventListener('click', async function () {
    await keys.setVerified($('safety-dialog').dataset.user, false);
    $('safety-dialog').close();
  });

  // This user's devices, and removing a lost one.
  function renderDevices() {
    $('devices-error').hidden = true;
    keys.myDevices().then(function (list) {
      $('devices-list').replaceChildren.apply($('devices-list'), list.map(function (d) {
        const li = document.createElement('li');
        const name = document.createElement('span');
        name.className = 'room-name';
        name.textContent = (d.current ? 'This browser' : 'Device ' + d.id.slice(0, 8)) + (d.signed ? '' : ' (not signed by your account key: never given keys)');
        li.appendChild(name);
        if (!d.current) {
          const b = document.createElement('button');
          b.type = 'button';
          b.dataset.device = d.id;
          b.textContent = 'Remove';
          b.setAttribute('aria-label', 'Remove device ' + d.id.slice(0, 8));
          li.appendChild(b);
        }
        return li;
      }));
    }, function (err) {
      $('devices-error').textContent = err.message;
      $('devices-error').hidden = false;
    });
  }
  $('devices-button').addEventListener('click', function () {
    if (!keys) return;
    $('devices-dialog').showModal();
    renderDevices();
  });
  $('devices-list').addEventListener('click', function (event) {
    const b = event.target.closest('button[data-device]');
    if (!b || !window.confirm('Remove this device? It will read nothing sent after now.')) return;
    keys.removeDevice(b.dataset.device).then(renderDevices, function (err) {
      $('devices-error').textContent = err.message;
      $('devices-error').hidden = false;
    });
  });

  // ---- dialogs --------------------------------------------------------------

  document.querySelectorAll('dialog [data-close]').forEach(function (b) {
    b.addEventListener('click', function () { b.closest('dialog').close(); });
  });

  // Encryption is for private rooms (a public room is readable by anyone who joins).
  function syncEncryptedBox() {
    const priv = $('create-form').querySelector('input[name="kind"]:checked').value === 'private';
    $('create-encrypted').disabled = !priv;
    if (!priv) $('create-encrypted').checked = false;
  }
  $('create-form').querySelectorAll('input[name="kind"]').forEach(function (x) { x.addEventListener('change', syncEncryptedBox); });
  $('new-room').addEventListener('click', function () {
    $('create-form').reset();
    syncEncryptedBox();
    $('create-error').hidden = true;
    $('create-dialog').showModal();
  });
  $('create-form').addEventListener('submit', function (event) {
    event.preventDefault();
    const kind = $('create-form').querySelector('input[name="kind"]:checked').value;
    const frame = { type: 'create_room', name: $('create-name').value.trim(), kind: kind };
    if (kind === 'private' && $('create-encrypted').checked) frame.encrypted = true;
    if ($('create-room-title').value.trim()) frame.title = $('create-room-title').value;
    if ($('create-topic').value.trim()) frame.topic = $('create-topic').value;
    request(frame, function (reply) {
      if (reply.type === 'room_added') {
        roomState(reply.room);
        $('create-dialog').close();
        openRoom(reply.room.id);
      } else {
        $('create-error').textContent = errorText(reply);
        $('create-error').hidden = false;
      }
    });
  });

  function searchDirectory() {
    request({ type: 'directory', query: $('directory-query').value }, function (reply) {
      if (reply.type !== 'directory') return;
      const items = reply.rooms.map(function (o) {
        const li = document.createElement('li');
        const name = document.createElement('span');
        name.className = 'room-name';
        name.dir = 'auto';
        name.textContent = '#' + (o.title || o.id) + ' · ' + o.members + (o.members === 1 ? ' member' : ' members');
        const topic = document.createElement('span');
        topic.className = 'topic';
        topic.dir = 'auto';
        topic.textContent = o.topic || '';
        const b = document.createElement('button');
        b.type = 'button';
        const joined = rooms.has(o.id);
        b.textContent = joined ? 'Open' : 'Join';
        b.setAttribute('aria-label', (joined ? 'Open ' : 'Join ') + (o.title || o.id));
        b.addEventListener('click', function () {
          if (rooms.has(o.id)) { $('directory-dialog').close(); openRoom(o.id); return; }
          request({ type: 'join', room: o.id }, function (r) {
            if (r.type === 'room_added') { roomState(r.room); $('directory-dialog').close(); openRoom(r.room.id); }
            else showRefusal(r);
          });
        });
        li.append(name, topic, b);
        return li;
      });
      if (!items.length) {
        const li = document.createElement('li');
        li.textContent = 'No public room matches.';
        items.push(li);
      }
      $('directory-list').replaceChildren.apply($('directory-list'), items);
    });
  }
  let searchTimer = null;
  $('directory-query').addEventListener('input', function () { clearTimeout(searchTimer); searchTimer = setTimeout(searchDirectory, 250); });
  $('directory-form').addEventListener('submit', function (event) { event.preventDefault(); searchDirectory(); });
  $('browse-rooms').addEventListener('click', function () {
    $('directory-query').value = '';
    $('directory-dialog').showModal();
    searchDirectory();
  });

  $('invite').addEventListener('click', function () {
    // The picker offers everyone the inviter shares a room with (as far as this page has seen), and anyone typed.
    const known = new Set(online);
    rooms.forEach(function (r) { (r.members || []).forEach(function (n) { known.add(n); }); });
    const r = rooms.get(current);
    (r.members || []).forEach(function (n) { known.delete(n); });
    known.delete(user);
    $('known-users').replaceChildren.apply($('known-users'), Array.from(known).sort().map(function (n) {
      const o = document.createElement('option');
      o.value = n;
      return o;
    }));
    $('invite-form').reset();
    $('invite-error').hidden = true;
    $('invite-dialog').showModal();
  });
  $('invite-form').addEventListener('submit', function (event) {
    event.preventDefault();
    request({ type: 'invite', room: current, user: $('invite-user').value.trim() }, function (reply) {
      if (reply.type === 'ok') { $('invite-dialog').close(); loadMembers(rooms.get(current)); }
      else { $('invite-error').textContent = errorText(reply); $('invite-error').hidden = false; }
    });
  });

  $('leave').addEventListener('click', function () {
    const r = rooms.get(current);
    if (!r || !window.confirm('Leave ' + displayName(r) + '?')) return;
    request({ type: 'leave', room: r.id }, function (reply) {
      if (reply.type === 'room_removed') { rooms.delete(r.id); openRoom(LOBBY); } else showRefusal(reply);
    });
  });

  // ---- narrow screens: the sidebar and the people pane are drawers ------------

  function toggleDrawer(button, pane) {
    const open = !pane.classList.contains('open');
    closeDrawers();
    if (open) {
      pane.classList.add('open');
      button.setAttribute('aria-expanded', 'true');
      const first = pane.querySelector('button');
      if (first) first.focus();
    }
  }
  function closeDrawers() {
    $('sidebar').classList.remove('open');
    $('online-pane').classList.remove('open');
    $('rooms-toggle').setAttribute('aria-expanded', 'false');
    $('members-toggle').setAttribute('aria-expanded', 'false');
  }
  $('rooms-toggle').addEventListener('click', function () { toggleDrawer($('rooms-toggle'), $('sidebar')); });
  $('members-toggle').addEventListener('click', function () { toggleDrawer($('members-toggle'), $('online-pane')); });
  document.addEventListener('keydown', function (event) { if (event.key === 'Escape') closeDrawers(); });

  $('logout').addEventListener('click', async function () {
    try { await fetch('/api/logout', { method: 'POST', credentials: 'same-origin' }); } catch (e) { /* go anyway */ }
    window.location.assign('/');
  });
  window.addEventListener('beforeunload', saveScroll);

  fetch('/api/me', { credentials: 'same-origin' }).then(function (r) {
    if (r.status === 401) { window.location.assign('/'); return; }
    connect();
  }, function () { connect(); });
})();
