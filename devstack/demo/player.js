// One stock player on a page of its own, set up the way a platform's page would: each player's
// default request settings, the viewer's JWT on the first manifest request only (and, for the
// DASH players, as an Authorization header on license requests). Every other URL comes signed
// in the manifests. On the local stack's site the page lives on another origin than the gateway,
// so every playback request is cross-origin and passes the edge's CORS policy or fails.
//
// Query parameters: ?player=shaka|dashjs|hlsjs&user=alice&video=demo
//
// For tests, window.playerState = {player, state, currentTime, maxTime, duration, ended, error,
// license} is kept current; `error` is the first fatal error: {code, message, httpStatus, problem};
// `ended` turns true when playback reaches the end (never mid-seek) and false again on a seek.
'use strict';

(() => {
  const CLEARKEY = 'org.w3.clearkey';
  const TICK_MS = 200;
  const SCRIPTS = {
    shaka: '/demo/vendor/shaka-player/dist/shaka-player.compiled.js',
    dashjs: '/demo/vendor/dashjs/dist/modern/umd/dash.all.min.js',
    hlsjs: '/demo/vendor/hls.js/dist/hls.min.js',
  };
  const params = new URLSearchParams(window.location.search);
  const name = params.get('player') || 'shaka';
  const user = params.get('user') || 'alice';
  const videoId = params.get('video') || 'demo';
  const state = {
    player: name,
    state: 'idle',
    currentTime: 0,
    maxTime: 0,
    duration: null,
    ended: false,
    error: null,
    license: null,
  };
  window.playerState = state;

  function fail(info) {
    if (!state.error) state.error = { ...info, message: PlayerErrors.elide(info.message || '') };
    state.state = 'error';
    render();
  }

  function setLicense(status) {
    state.license = status;
    render();
  }

  async function getJson(url) {
    const response = await fetch(url, { headers: { Accept: 'application/json' } });
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    return response.json();
  }

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const script = document.createElement('script');
      script.src = src;
      script.onload = resolve;
      script.onerror = () => reject(new Error(`${src} did not load`));
      document.head.appendChild(script);
    });
  }

  const starters = {
    async shaka(video, urls, token) {
      shaka.polyfill.installAll();
      const player = new shaka.Player();
      await player.attach(video);
      player.configure({ drm: { servers: { [CLEARKEY]: urls.license } } });
      const net = player.getNetworkingEngine();
      const { LICENSE } = shaka.net.NetworkingEngine.RequestType;
      net.registerRequestFilter((type, request) => {
        if (type === LICENSE) request.headers.Authorization = `Bearer ${token}`;
      });
      net.registerResponseFilter((type, response) => {
        if (type === LICENSE) setLicense(response.status || 200);
      });
      player.addEventListener('error', (event) => {
        if (event.detail && event.detail.severity === 2 /* CRITICAL */) {
          fail(PlayerErrors.shakaErrorInfo(event.detail));
        }
      });
      try {
        // the MIME type saves Shaka a HEAD request (it cannot tell DASH from this URL)
        await player.load(urls.dash, null, 'application/dash+xml');
      } catch (err) {
        return fail(PlayerErrors.shakaErrorInfo(err));
      }
      return video.play().catch(() => {});
    },

    dashjs(video, urls, token) {
      const player = dashjs.MediaPlayer().create();
      player.on(dashjs.MediaPlayer.events.ERROR, (event) => fail(PlayerErrors.dashErrorInfo(event)));
      player.on('public_licenseRequestComplete', (event) => {
        setLicense(event.error ? PlayerErrors.dashErrorInfo(event).httpStatus || 'failed' : 200);
      });
      player.initialize(video, null, true);
      // dash.js sends this request with credentials because it carries Authorization: the
      // edge must answer with Access-Control-Allow-Credentials and the exact origin.
      player.setProtectionData({
        [CLEARKEY]: {
          serverURL: urls.license,
          httpRequestHeaders: { Authorization: `Bearer ${token}` },
        },
      });
      player.attachSource(urls.dash);
    },

    hlsjs(video, urls) {
      const hls = new Hls();
      hls.on(Hls.Events.ERROR, (_event, data) => {
        const info = PlayerErrors.hlsErrorInfo(data);
        const keyError = !!data.details && data.details.startsWith('keyLoad');
        if (keyError) setLicense(info.httpStatus || 'failed');
        // hls.js would try other renditions after a refused key; for this viewer it is final
        if (data.fatal || (keyError && (info.httpStatus === 401 || info.httpStatus === 403))) {
          hls.stopLoad();
          fail(info);
        }
      });
      hls.on(Hls.Events.KEY_LOADED, () => setLicense(200));
      hls.on(Hls.Events.MANIFEST_PARSED, () => video.play().catch(() => {}));
      hls.attachMedia(video);
      hls.loadSource(urls.hls);
    },
  };

  function tick() {
    const video = document.getElementById('video');
    if (!video || state.state === 'idle') return;
    state.currentTime = video.currentTime;
    state.maxTime = Math.max(state.maxTime, video.currentTime);
    if (Number.isFinite(video.duration)) state.duration = video.duration;
    // (a browser may reach the end without an 'ended' event, e.g. when paused right there)
    state.ended = video.ended && !video.seeking;
    if (state.state !== 'error') {
      if (video.ended) state.state = 'ended';
      else if (!video.paused && video.currentTime > 0) state.state = 'playing';
    }
    render();
  }

  function render() {
    const card = document.getElementById('player');
    if (!card) return;
    card.dataset.state = state.state;
    const field = (f) => card.querySelector(`[data-field="${f}"]`);
    field('state').textContent = state.state;
    field('time').textContent = `${state.currentTime.toFixed(1)} s`;
    field('license').textContent = state.license == null ? '-' : String(state.license);
    const err = state.error;
    const problem = err && err.problem;
    field('error').textContent = err
      ? [err.code, err.httpStatus, problem && problem.code, (problem && problem.detail) || err.message]
        .filter(Boolean).join(' · ')
      : '-';
  }

  async function start() {
    document.getElementById('which').textContent = `${name} · ${user} · ${videoId}`;
    if (!SCRIPTS[name]) return fail({ code: 'player-unknown', message: `no player called ${name}` });
    state.state = 'loading';
    try {
      const [config, token] = await Promise.all([
        getJson('/demo/api/config'),
        getJson(`/demo/api/token?sub=${encodeURIComponent(user)}`),
        loadScript(SCRIPTS[name]),
      ]);
      const gateway = String(config.gateway || '').replace(/\/$/, '');
      const playback = `${gateway}/playback/${encodeURIComponent(videoId)}/manifest`;
      const jwt = encodeURIComponent(token.token);
      const urls = {
        dash: `${playback}?format=dash&token=${jwt}`,
        hls: `${playback}?token=${jwt}`,
        license: `${gateway}/drm/license/${CLEARKEY}?videoId=${encodeURIComponent(videoId)}`,
      };
      await starters[name](document.getElementById('video'), urls, token.token);
    } catch (err) {
      fail({ code: `${name}-exception`, message: String((err && err.message) || err) });
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    const video = document.getElementById('video');
    video.addEventListener('seeking', () => { state.ended = false; });
    video.addEventListener('ended', tick);
    setInterval(tick, TICK_MS);
    start();
  });
})();
