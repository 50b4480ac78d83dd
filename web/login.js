'use strict';
// Sign-in page: submits asynchronously and says plainly what went wrong.
(function () {
  const form = document.getElementById('login-form');
  const error = document.getElementById('login-error');
  const button = document.getElementById('login-button');

  function showError(text) {
    error.textContent = text;
    error.hidden = false;
  }

  form.addEventListener('submit', async function (event) {
    event.preventDefault();
    error.hidden = true;
    button.disabled = true;
    const body = JSON.stringify({
      username: document.getElementById('username').value,
      password: document.getElementById('password').value,
    });
    try {
      const response = await fetch('/api/login', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        credentials: 'same-origin',
        body: body,
      });
      if (response.ok) {
        window.location.assign('/chat');
        return;
      }
      if (response.status === 401) {
        showError('Wrong user name or password.');
      } else if (response.status === 429) {
        let seconds = parseInt(response.headers.get('Retry-After') || '0', 10);
        try { seconds = (await response.json()).retry_after || seconds; } catch (e) { /* keep header value */ }
        showError('Too many attempts. Try again in ' + seconds + ' seconds.');
      } else {
        showError('Sign-in is unavailable right now. Please try again.');
      }
    } catch (e) {
      showError('Cannot reach the server. Check your connection and try again.');
    } finally {
      button.disabled = false;
    }
  });
})();
