'use strict';
// Chat page: one WebSocket, reconnect with backoff and jitter, `sync` after a
// reconnect so nothing acknowledged is missed, and every text rendered inert
// (textContent only, never HTML).
(function () {
  const list = document.getElementById('messages');
  const onlineList = document.getElementById('online');
  const onlineCount = document.getElementById('online-count');
  const connection = document.getElementById('connection');
  const form = document.getElementById('send-form');
  const input = document.getElementById('message-input');
  const sendError = document.getElementById('send-error');
  const me = document.getElementById('me');

  let socket = null;
  let lastId = null;          // greatest message id shown, "<ms>-<seq>"
  let syncing = false;        // between a reconnect's welcome and its `synced`
  let buffered = [];          // messages that arrived while syncing
  let attempt = 0;
  let online = new Set();
  let user = null;
  const pending = new Map();  // ref -> text, until acknowledged

  function parseId(id) {
    const parts = String(id).split('-');
    return [BigInt(parts[0] || '0'), BigInt(parts[1] || '0')];
  }
  function newer(a, b) {  // is id a after id b?
    if (b === null) return true;
    const x = parseId(a), y = parseId(b);
    return x[0] > y[0] || (x[0] === y[0] && x[1] > y[1]);
  }

  function setState(state, text) {
    connection.dataset.state = state;
    connection.textContent = text;
  }

  function scrollDown() { list.scrollTop = list.scrollHeight; }

  function addNotice(text) {
    const li = document.createElement('li');
    li.className = 'notice';
    li.textContent = text;
    list.appendChild(li);
    scrollDown();
  }

  function showMessage(m) {
    if (!newer(m.id, lastId)) return;
    lastId = m.id;
    const li = document.createElement('li');
    li.className = 'message';
    li.dataset.id = m.id;
    const time = document.createElement('time');
    time.className = 'time';
    const date = new Date(Number(m.ts));
    time.dateTime = date.toISOString();
    time.textContent = date.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' });
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = m.from;
    const text = document.createElement('span');
    text.className = 'text';
    // Its own direction, isolated (style.css): bidi controls in a text cannot reorder the
    // time or the author, nor run into the next message.
    text.dir = 'auto';
    text.textContent = m.text;
    li.append(time, author, text);
    list.appendChild(li);
    scrollDown();
  }

  function renderOnline() {
    onlineList.replaceChildren();
    Array.from(online).sort().forEach(function (name) {
      const li = document.createElement('li');
      li.textContent = name;
      onlineList.appendChild(li);
    });
    onlineCount.textContent = String(online.size);
  }

  function showSendError(text) {
    sendError.textContent = text;
    sendError.hidden = false;
  }

  const errorTexts = {
    too_long: 'That message is too long (at most 2000 characters).',
    empty: 'Type something first.',
    bad_request: 'The server could not read that message.',
    unknown_type: 'The server did not understand that request.',
    unavailable: 'Chat is briefly unavailable; your message was kept, try again.',
  };

  function handle(frame) {
    switch (frame.type) {
      case 'welcome':
        user = frame.user;
        me.textContent = 'Signed in as ' + frame.user;
        online = new Set(frame.online);
        renderOnline();
        if (lastId === null) {
          frame.history.forEach(showMessage);
        } else {
          // After a reconnect: replay from the last id seen, in order, before showing live messages.
          syncing = true;
          buffered = frame.history.slice();
          socket.send(JSON.stringify({ type: 'sync', since: lastId }));
        }
        break;
      case 'message':
        if (syncing) buffered.push(frame); else showMessage(frame);
        break;
      case 'synced':
        syncing = false;
        buffered.sort(function (a, b) { return newer(a.id, b.id) ? 1 : (a.id === b.id ? 0 : -1); });
        buffered.forEach(showMessage);
        buffered = [];
        if (!frame.recovered) addNotice('Some older messages could not be recovered.');
        // Sends that were not acknowledged before the connection dropped go again, same ref: stored once.
        pending.forEach(function (text, ref) {
          socket.send(JSON.stringify({ type: 'send', text: text, ref: ref }));
        });
        break;
      case 'presence':
        if (frame.online && !online.has(frame.user)) {
          online.add(frame.user);
          if (frame.user !== user) addNotice(frame.user + ' joined');
        } else if (!frame.online && online.has(frame.user)) {
          online.delete(frame.user);
          addNotice(frame.user + ' left');
        }
        renderOnline();
        break;
      case 'ack':
        if (frame.ref && pending.has(frame.ref)) {
          const text = pending.get(frame.ref);
          pending.delete(frame.ref);
          if (input.value === text) input.value = '';
        }
        sendError.hidden = true;
        break;
      case 'error':
        if (frame.ref) pending.delete(frame.ref);
        if (frame.code === 'rate_limited') {
          const seconds = Math.max(1, Math.ceil((frame.retry_after_ms || 1000) / 1000));
          showSendError('You are sending too fast. Try again in ' + seconds + ' s; your message is still in the box.');
        } else {
          showSendError(errorTexts[frame.code] || 'The server refused that message.');
        }
        break;
    }
  }

  function connect() {
    setState(attempt === 0 && lastId === null ? 'connecting' : 'reconnecting', attempt === 0 && lastId === null ? 'Connecting…' : 'Reconnecting…');
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
      syncing = false;
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
    const ref = (window.crypto && crypto.randomUUID) ? crypto.randomUUID() : String(Date.now()) + Math.random();
    pending.set(ref, text);
    sendError.hidden = true;
    socket.send(JSON.stringify({ type: 'send', text: text, ref: ref }));
  });

  document.getElementById('logout').addEventListener('click', async function () {
    try { await fetch('/api/logout', { method: 'POST', credentials: 'same-origin' }); } catch (e) { /* go anyway */ }
    window.location.assign('/');
  });

  fetch('/api/me', { credentials: 'same-origin' }).then(function (r) {
    if (r.status === 401) { window.location.assign('/'); return; }
    connect();
  }, function () { connect(); });
})();
