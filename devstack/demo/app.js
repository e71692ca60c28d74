// playback-drm demo page: three unmodified players, one JWT, everything else signed by the sidecar.
//
// Loaded FIRST (all scripts are deferred, so they run in order): it hooks fetch and XHR before the
// players capture them, so every manifest, license and key request shows up in the request log.
// Everything starts on DOMContentLoaded, once the players' scripts have run.
//
// Each player is one playback session: the page asks for the JSON form of the manifest with the JWT
// (`Accept: application/json`), which answers the signed manifest URL and the session's own signed
// URLs: its license URLs (so the players need no JWT at all), a heartbeat and an end URL. The page
// ends its sessions when it goes away (`navigator.sendBeacon` on `pagehide`), so reloading the page
// at the concurrent-stream limit starts again at once, and sends a heartbeat every 30 s while open.
//
// Query parameters: ?user=alice&video=demo&autoplay=1 (autoplay=0 waits for the button).
// Playback requests go to the gateway named by /demo/api/config: the page's own origin through
// the gateway, the gateway's origin on the local site (cross-origin, as on a real platform).
//
// For tests, window.demoState = {run, user, video, token: {status}, manifest: {dash, hls},
//   sessions: {started, ended},
//   shaka|dashjs|hlsjs: {state, currentTime, maxTime, error, warnings, license, startedAt}}
// is kept current; `error` is the first fatal error: {code, message, httpStatus, problem}.
'use strict';

(() => {
  const PLAYERS = ['shaka', 'dashjs', 'hlsjs'];
  const CLEARKEY = 'org.w3.clearkey';
  const EVENTS_POLL_MS = 1000;
  const HEARTBEAT_MS = 30000;
  const TICK_MS = 200;
  const MAX_LOG_ROWS = 200;

  const demoState = {
    run: 0,
    user: null,
    video: null,
    token: { status: 'idle' },
    manifest: { dash: null, hls: null },
    events: { status: 'idle', count: 0 },
    sessions: { started: 0, ended: 0 },
    requests: [],
  };
  for (const name of PLAYERS) demoState[name] = freshPlayerState();
  window.demoState = demoState;

  function freshPlayerState() {
    return {
      state: 'idle',
      currentTime: 0,
      maxTime: 0,
      error: null,
      warnings: [],
      license: null,
      startedAt: null,
    };
  }

  // ------------------------------------------------------------------------- URLs and helpers

  // The gateway's origin when the page is served from another (/demo/api/config); '' otherwise.
  let gateway = '';
  const api = {
    config: '/demo/api/config',
    token: (sub) => `/demo/api/token?sub=${encodeURIComponent(sub)}`,
    events: '/demo/api/events',
    // the entry manifest; asked for with Accept: application/json it starts a playback session
    manifest: (video, format) =>
      `${gateway}/playback/${encodeURIComponent(video)}/manifest${format === 'dash' ? '?format=dash' : ''}`,
  };
  // The format each player plays.
  const FORMAT = { shaka: 'dash', dashjs: 'dash', hlsjs: 'hls' };

  // How each player reports a failed request (errors.js, shared with player.html).
  const { elide, problemOf, shakaErrorInfo, dashErrorInfo, hlsErrorInfo } = window.PlayerErrors;

  function pathOf(url) {
    try {
      const u = new URL(url, window.location.href);
      return u.pathname + u.search;
    } catch (_) {
      return String(url);
    }
  }

  // --------------------------------------------------------------------------- request log

  function interesting(url) {
    const path = pathOf(url);
    return path.startsWith('/playback/') || path.startsWith('/drm/') || path.startsWith('/media/');
  }

  function isSegment(url) {
    return pathOf(url).startsWith('/media/') && !/\.(m3u8|mpd)(\?|$)/.test(pathOf(url));
  }

  function logRequest(method, url, status) {
    // Media segments only when they fail: the log is for manifests, licenses and keys.
    if (isSegment(url) && typeof status === 'number' && status < 400) return;
    const entry = { at: new Date(), method, path: elide(pathOf(url)), status };
    demoState.requests.push(entry);
    if (demoState.requests.length > MAX_LOG_ROWS) demoState.requests.shift();
    const body = document.getElementById('requests');
    if (!body) return;
    const row = document.createElement('tr');
    for (const text of [entry.at.toLocaleTimeString([], { hour12: false }), method, entry.path, String(status)]) {
      const cell = document.createElement('td');
      cell.textContent = text;
      row.appendChild(cell);
    }
    row.lastChild.dataset.ok = String(typeof status === 'number' && status < 400);
    body.prepend(row);
    while (body.children.length > MAX_LOG_ROWS) body.lastChild.remove();
  }

  (function hookNetwork() {
    const originalFetch = window.fetch;
    window.fetch = async function demoFetch(input, init) {
      const url = typeof input === 'string' || input instanceof URL ? String(input) : input.url;
      const method = ((init && init.method) || (input && input.method) || 'GET').toUpperCase();
      if (!interesting(url)) return originalFetch.call(this, input, init);
      try {
        const response = await originalFetch.call(this, input, init);
        logRequest(method, url, response.status);
        return response;
      } catch (err) {
        logRequest(method, url, 'network error');
        throw err;
      }
    };
    const open = XMLHttpRequest.prototype.open;
    const send = XMLHttpRequest.prototype.send;
    XMLHttpRequest.prototype.open = function demoOpen(method, url, ...rest) {
      this.__demo = { method: String(method).toUpperCase(), url: String(url) };
      return open.call(this, method, url, ...rest);
    };
    XMLHttpRequest.prototype.send = function demoSend(...args) {
      const info = this.__demo;
      if (info && interesting(info.url)) {
        this.addEventListener('loadend', () => {
          logRequest(info.method, info.url, this.status || 'network error');
        });
      }
      return send.apply(this, args);
    };
  })();

  // ------------------------------------------------------------------------ playback sessions

  /** name -> the JSON form of its session: {url, sessionEndUrl, heartbeatUrl, licenseUrls}. */
  const sessions = {};

  /** A new playback session for one player; throws {httpStatus, problem} when refused. */
  async function startSession(ctx, name) {
    const response = await fetch(api.manifest(ctx.video, FORMAT[name]), {
      headers: { Accept: 'application/json', Authorization: `Bearer ${ctx.token}` },
    });
    const text = await response.text();
    if (!response.ok) {
      const problem = problemOf(text);
      throw { code: 'session', message: `manifest: HTTP ${response.status}`, httpStatus: response.status, problem };
    }
    const doc = JSON.parse(text);
    sessions[name] = doc;
    demoState.sessions.started += 1;
    return doc;
  }

  /** End every session at once: `beacon` while the page goes away (it outlives the page). */
  function endSessions(beacon) {
    for (const name of Object.keys(sessions)) {
      const url = sessions[name].sessionEndUrl;
      delete sessions[name];
      if (!url) continue;
      demoState.sessions.ended += 1;
      if (beacon && navigator.sendBeacon) navigator.sendBeacon(url);
      else fetch(url, { method: 'POST', keepalive: true }).catch(() => {});
    }
  }

  function heartbeat() {
    for (const doc of Object.values(sessions)) {
      if (doc.heartbeatUrl) fetch(doc.heartbeatUrl, { method: 'POST', keepalive: true }).catch(() => {});
    }
  }

  // ------------------------------------------------------------------------ player bookkeeping

  const active = { shaka: null, dashjs: null, hlsjs: null };

  function videoOf(name) {
    return document.getElementById(`video-${name}`);
  }

  function fatal(name, run, error) {
    if (run !== demoState.run) return; // a late error from a player we already tore down
    if (error && error.message) error.message = elide(error.message);
    const s = demoState[name];
    if (!s.error) s.error = error;
    s.state = 'error';
    render(name);
  }

  function warn(name, run, warning) {
    if (run !== demoState.run) return;
    if (warning && warning.message) warning.message = elide(warning.message);
    const list = demoState[name].warnings;
    if (list.length < 20) list.push(warning);
  }

  function setLicense(name, run, status, what) {
    if (run !== demoState.run) return;
    demoState[name].license = { status, ok: typeof status === 'number' && status < 400, what };
    render(name);
  }

  function tick() {
    for (const name of PLAYERS) {
      const s = demoState[name];
      const video = videoOf(name);
      if (!video || s.state === 'idle') continue;
      s.currentTime = video.currentTime;
      if (video.currentTime > s.maxTime) s.maxTime = video.currentTime;
      if (s.state !== 'error') {
        if (video.ended) s.state = 'ended';
        else if (!video.paused && video.currentTime > 0) s.state = 'playing';
      }
      render(name);
    }
  }

  function render(name) {
    const s = demoState[name];
    const card = document.getElementById(`player-${name}`);
    if (!card) return;
    card.dataset.state = s.state;
    const field = (f) => card.querySelector(`[data-field="${f}"]`);
    field('state').textContent = s.state;
    field('time').textContent = `${s.currentTime.toFixed(1)} s`;
    const lic = s.license;
    field('license').textContent = lic ? `${lic.what}: ${lic.status}` : '-';
    field('license').dataset.ok = lic ? String(lic.ok) : '';
    const err = s.error;
    const problem = err && err.problem;
    field('error').textContent = err
      ? [err.code, err.httpStatus, problem && problem.code, (problem && problem.detail) || err.message]
        .filter(Boolean).join(' · ')
      : '-';
    field('error').dataset.ok = err ? 'false' : '';
  }

  async function teardown() {
    endSessions(false);
    const players = { ...active };
    active.shaka = active.dashjs = active.hlsjs = null;
    const jobs = [];
    if (players.shaka) jobs.push(players.shaka.destroy().catch(() => {}));
    if (players.dashjs) {
      try { players.dashjs.reset(); } catch (_) { /* already gone */ }
    }
    if (players.hlsjs) players.hlsjs.destroy();
    await Promise.all(jobs);
    for (const name of PLAYERS) {
      const video = videoOf(name);
      if (video) {
        video.removeAttribute('src');
        video.load();
      }
      demoState[name] = freshPlayerState();
      render(name);
    }
  }

  // -------------------------------------------------------------------------- Shaka Player

  async function startShaka(ctx) {
    const name = 'shaka';
    const s = demoState[name];
    if (!window.shaka) return fatal(name, ctx.run, { code: 'player-missing', message: 'shaka-player did not load' });
    shaka.polyfill.installAll();
    if (!shaka.Player.isBrowserSupported()) {
      return fatal(name, ctx.run, { code: 'unsupported', message: 'browser not supported by Shaka' });
    }
    const player = new shaka.Player();
    active.shaka = player;
    s.state = 'loading';
    s.startedAt = Date.now();
    await player.attach(videoOf(name));
    const session = ctx.sessions[name];
    // the session's signed license URL: no JWT in the player
    player.configure({ drm: { servers: { [CLEARKEY]: session.licenseUrls[CLEARKEY] } } });
    const RequestType = shaka.net.NetworkingEngine.RequestType;
    const net = player.getNetworkingEngine();
    net.registerResponseFilter((type, response) => {
      if (type === RequestType.LICENSE) setLicense(name, ctx.run, response.status || 200, 'license');
    });
    const onError = (info) => {
      // 6xxx: DRM. LICENSE_REQUEST_FAILED (6007) wraps the HTTP answer of the license server.
      if (info.code === 'shaka-6007') setLicense(name, ctx.run, info.httpStatus || 'failed', 'license');
      if (info.severity === 2 /* CRITICAL */) fatal(name, ctx.run, info);
      else warn(name, ctx.run, info);
    };
    player.addEventListener('error', (event) => onError(shakaErrorInfo(event.detail)));
    try {
      // the MIME type saves Shaka a HEAD request (it cannot tell DASH from this URL)
      await player.load(session.url, null, 'application/dash+xml');
    } catch (err) {
      const info = shakaErrorInfo(err);
      if (info.code === 'shaka-7000') return; // LOAD_INTERRUPTED: a newer run replaced this one
      return onError({ ...info, severity: 2 }); // a failed load is fatal whatever its severity
    }
    await playMuted(name, ctx);
  }

  // -------------------------------------------------------------------------------- dash.js

  async function startDashjs(ctx) {
    const name = 'dashjs';
    const s = demoState[name];
    if (!window.dashjs) return fatal(name, ctx.run, { code: 'player-missing', message: 'dash.js did not load' });
    const player = dashjs.MediaPlayer().create();
    active.dashjs = player;
    s.state = 'loading';
    s.startedAt = Date.now();
    player.updateSettings({ debug: { logLevel: dashjs.Debug.LOG_LEVEL_WARNING } });
    player.on(dashjs.MediaPlayer.events.ERROR, (event) => fatal(name, ctx.run, dashErrorInfo(event)));
    player.on('public_licenseRequestComplete', (event) => {
      if (event.error) {
        const info = dashErrorInfo(event);
        setLicense(name, ctx.run, info.httpStatus || 'failed', 'license');
      } else {
        setLicense(name, ctx.run, 200, 'license');
      }
    });
    player.initialize(videoOf(name), null, true);
    const session = ctx.sessions[name];
    player.setProtectionData({ [CLEARKEY]: { serverURL: session.licenseUrls[CLEARKEY] } });
    player.attachSource(session.url);
  }

  // --------------------------------------------------------------------------------- hls.js

  async function startHlsjs(ctx) {
    const name = 'hlsjs';
    const s = demoState[name];
    if (!window.Hls) return fatal(name, ctx.run, { code: 'player-missing', message: 'hls.js did not load' });
    if (!Hls.isSupported()) return fatal(name, ctx.run, { code: 'unsupported', message: 'MSE not supported' });
    const hls = new Hls({ maxBufferLength: 10 });
    active.hlsjs = hls;
    s.state = 'loading';
    s.startedAt = Date.now();
    hls.on(Hls.Events.ERROR, (_event, data) => {
      const info = hlsErrorInfo(data);
      const keyError = !!data.details && data.details.startsWith('keyLoad');
      if (keyError) setLicense(name, ctx.run, info.httpStatus || 'failed', 'key');
      if (data.fatal) {
        hls.stopLoad();
        hls.detachMedia(); // leave a still, empty video rather than a spinner
        fatal(name, ctx.run, info);
      } else if (keyError && (info.httpStatus === 401 || info.httpStatus === 403)) {
        // hls.js keeps trying other renditions; a refused key is final for this viewer.
        hls.stopLoad();
        fatal(name, ctx.run, info);
      } else {
        warn(name, ctx.run, info);
      }
    });
    hls.on(Hls.Events.KEY_LOADED, () => setLicense(name, ctx.run, 200, 'key'));
    hls.on(Hls.Events.MANIFEST_PARSED, () => playMuted(name, ctx));
    hls.attachMedia(videoOf(name));
    hls.loadSource(ctx.sessions[name].url);
  }

  async function playMuted(name, ctx) {
    const video = videoOf(name);
    video.muted = true;
    try {
      await video.play();
    } catch (err) {
      if (err && err.name !== 'AbortError') warn(name, ctx.run, { code: 'autoplay', message: String(err) });
    }
  }

  // ------------------------------------------------------------------------ token, manifests

  async function fetchToken(sub) {
    demoState.token = { status: 'busy' };
    setStatus('token-status', 'busy', `fetching a token for ${sub}…`);
    const response = await fetch(api.token(sub), { headers: { Accept: 'application/json' } });
    const text = await response.text();
    if (!response.ok) {
      demoState.token = { status: 'error', httpStatus: response.status };
      setStatus('token-status', 'error', `token for ${sub}: HTTP ${response.status}`);
      throw new Error(`token endpoint answered ${response.status}`);
    }
    let token = text.trim();
    try {
      const doc = JSON.parse(text);
      token = doc.token || doc.access_token || doc.jwt || token;
    } catch (_) { /* plain text token */ }
    demoState.token = { status: 'ok' };
    setStatus('token-status', 'ok', `JWT for ${sub} (${token.length} chars)`);
    return token;
  }

  async function showManifests(ctx) {
    setStatus('manifest-status', 'busy', 'fetching signed manifests…');
    const fetchOne = async (kind, url, elementId) => {
      try {
        const response = await fetch(url);
        const text = await response.text();
        if (ctx.run !== demoState.run) return null;
        demoState.manifest[kind] = { status: response.status, ok: response.ok, problem: response.ok ? null : problemOf(text) };
        document.getElementById(elementId).textContent = text;
        return `${kind.toUpperCase()} ${response.status}`;
      } catch (err) {
        demoState.manifest[kind] = { status: 'network error', ok: false };
        return `${kind.toUpperCase()} network error`;
      }
    };
    // the players' own signed manifests (Shaka's DASH session, hls.js's HLS session)
    const of = (name) => (ctx.sessions[name] ? ctx.sessions[name].url : null);
    const results = await Promise.all([
      of('shaka') ? fetchOne('dash', of('shaka'), 'manifest-dash') : 'DASH: no session',
      of('hlsjs') ? fetchOne('hls', of('hlsjs'), 'manifest-hls') : 'HLS: no session',
    ]);
    if (ctx.run !== demoState.run) return;
    const ok = demoState.manifest.dash && demoState.manifest.dash.ok && demoState.manifest.hls && demoState.manifest.hls.ok;
    setStatus('manifest-status', ok ? 'ok' : 'error', results.filter(Boolean).join(' · '));
  }

  function setStatus(id, state, text) {
    const el = document.getElementById(id);
    if (!el) return;
    el.dataset.state = state;
    el.textContent = text;
  }

  // --------------------------------------------------------------------------------- events

  async function pollEvents() {
    try {
      const response = await fetch(api.events, { headers: { Accept: 'application/json' } });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const events = await response.json();
      demoState.events = { status: 'ok', count: events.length };
      setStatus('events-status', 'ok', `${events.length} event(s)`);
      renderEvents(events);
    } catch (err) {
      demoState.events = { status: 'error', count: 0 };
      setStatus('events-status', 'error', `events unavailable: ${err.message}`);
    }
  }

  const EVENT_FACTS = ['userId', 'videoId', 'keySystem', 'plan', 'format', 'code', 'status', 'cached'];

  /** "dev.playback-drm.license.issued.v1" -> "license.issued"; "PlaybackError" stays. */
  function shortType(type) {
    return String(type || '(no type)').replace(/^dev\.playback-drm\./, '').replace(/\.v\d+$/, '');
  }

  function renderEvents(events) {
    const list = document.getElementById('events');
    const items = [];
    for (const event of events.slice(-50).reverse()) {
      const data = event.data || {};
      const li = document.createElement('li');
      li.title = JSON.stringify(event, null, 1);
      const type = document.createElement('span');
      type.className = 'type';
      type.dataset.type = event.type || '';
      type.textContent = shortType(event.type);
      const when = event.time ? new Date(typeof event.time === 'number' ? event.time * 1000 : event.time) : null;
      const meta = document.createTextNode(
        ` ${when && !Number.isNaN(when.getTime()) ? when.toLocaleTimeString([], { hour12: false }) : ''} ${event.source || ''}`,
      );
      const facts = document.createElement('span');
      facts.className = 'data';
      const shown = EVENT_FACTS.filter((key) => data[key] !== undefined && data[key] !== null)
        .map((key) => `${key}=${data[key]}`);
      if (event.subject && !data.videoId) shown.push(`subject=${event.subject}`);
      facts.textContent = shown.join('  ');
      li.append(type, meta, facts);
      items.push(li);
    }
    list.replaceChildren(...items);
  }

  // ----------------------------------------------------------------------------------- run

  async function start(user, video) {
    demoState.run += 1;
    const run = demoState.run;
    await teardown();
    if (run !== demoState.run) return;
    demoState.user = user;
    demoState.video = video;
    demoState.manifest = { dash: null, hls: null };
    document.getElementById('manifest-dash').textContent = '';
    document.getElementById('manifest-hls').textContent = '';
    let token;
    try {
      token = await fetchToken(user);
    } catch (err) {
      for (const name of PLAYERS) fatal(name, run, { code: 'token', message: String(err.message || err) });
      return;
    }
    if (run !== demoState.run) return;
    const ctx = { run, user, video, token, sessions: {} };
    // one playback session per player (the JSON form of the manifest)
    await Promise.all(PLAYERS.map(async (name) => {
      try {
        ctx.sessions[name] = await startSession(ctx, name);
      } catch (err) {
        fatal(name, run, err && err.code ? err : { code: 'session', message: String(err) });
      }
    }));
    if (run !== demoState.run) return;
    showManifests(ctx);
    const starters = { shaka: startShaka, dashjs: startDashjs, hlsjs: startHlsjs };
    await Promise.all(PLAYERS.filter((name) => ctx.sessions[name]).map(async (name) => {
      try {
        await starters[name](ctx);
      } catch (err) {
        fatal(name, run, { code: `${name}-exception`, message: String((err && err.message) || err) });
      }
    }));
  }

  function setupTabs() {
    for (const tab of document.querySelectorAll('[role="tab"]')) {
      tab.addEventListener('click', () => {
        for (const other of document.querySelectorAll('[role="tab"]')) {
          other.setAttribute('aria-selected', String(other === tab));
        }
        for (const panel of document.querySelectorAll('[data-tab-panel]')) {
          panel.hidden = panel.dataset.tabPanel !== tab.dataset.tab;
        }
      });
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const params = new URLSearchParams(window.location.search);
    const userSelect = document.getElementById('user');
    const videoSelect = document.getElementById('video');
    const wanted = params.get('user');
    if (wanted && ![...userSelect.options].some((o) => o.value === wanted)) {
      userSelect.add(new Option(wanted, wanted)); // a subscriber a test or a developer added
    }
    if (wanted) userSelect.value = wanted;
    if (params.get('video')) videoSelect.value = params.get('video');
    setupTabs();
    document.getElementById('controls').addEventListener('submit', (event) => {
      event.preventDefault();
      start(userSelect.value, videoSelect.value);
    });
    setInterval(tick, TICK_MS);
    setInterval(pollEvents, EVENTS_POLL_MS);
    setInterval(heartbeat, HEARTBEAT_MS);
    // leaving (or reloading) the page ends its playback sessions at once: their stream slots
    // are free for the next page, whatever the limit
    window.addEventListener('pagehide', () => endSessions(true));
    pollEvents();
    loadGateway().then(() => {
      if (params.get('autoplay') !== '0') start(userSelect.value, videoSelect.value);
    });
  });

  async function loadGateway() {
    try {
      const response = await fetch(api.config, { headers: { Accept: 'application/json' } });
      if (response.ok) gateway = String((await response.json()).gateway || '').replace(/\/$/, '');
    } catch (_) { /* served by the gateway itself: same origin */ }
  }
})();
