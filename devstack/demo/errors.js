// How each player reports a failed request, reduced to one shape the demo pages show and the
// browser tests read: {code, message, httpStatus, problem: {code, title, detail, status} | null}.
// `problem` is the problem+json body of our refusal, which a page on another origin can read
// only because the edge's CORS policy covers error answers too.
'use strict';

window.PlayerErrors = (() => {
  /** Tokens and signatures never appear on screen in full. */
  function elide(url) {
    return String(url).replace(/([?&](?:token|pdt)=)[^&#\s]*/g, '$1…');
  }

  /** The problem+json `code` of an error body, if it is one. */
  function problemOf(text) {
    if (!text) return null;
    try {
      const doc = typeof text === 'string' ? JSON.parse(text) : text;
      if (doc && typeof doc === 'object' && (doc.code || doc.type || doc.title)) {
        return { code: doc.code || null, title: doc.title || null, detail: doc.detail || null, status: doc.status || null };
      }
    } catch (_) { /* not JSON */ }
    return null;
  }

  function bytesToText(data) {
    if (data == null) return null;
    if (typeof data === 'string') return data;
    try {
      const view = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer || data);
      return new TextDecoder().decode(view);
    } catch (_) {
      return null;
    }
  }

  function isPlainObject(value) {
    return !!value && typeof value === 'object' && !(value instanceof ArrayBuffer) && !ArrayBuffer.isView(value);
  }

  function statusFromText(text) {
    const m = /\b(?:status|HTTP)\D{0,40}([45]\d\d)\b/i.exec(text || '');
    return m ? Number(m[1]) : null;
  }

  /** A shaka.util.Error (from player.load() or the player's 'error' event). */
  function shakaErrorInfo(err) {
    const codes = (window.shaka && shaka.util && shaka.util.Error && shaka.util.Error.Code) || {};
    const codeName = err && Object.keys(codes).find((key) => codes[key] === err.code);
    const info = {
      code: err && err.code != null ? `shaka-${err.code}` : 'shaka-unknown',
      message: codeName ? `${codeName} (${err.code})` : (err && err.message) || String(err),
      severity: err && err.severity,
      httpStatus: null,
      problem: null,
    };
    // Walk nested errors (LICENSE_REQUEST_FAILED 6007 wraps BAD_HTTP_STATUS 1001).
    const seen = new Set();
    const visit = (e) => {
      if (!e || typeof e !== 'object' || seen.has(e)) return;
      seen.add(e);
      if (e.code === 1001 && Array.isArray(e.data)) {
        info.httpStatus = info.httpStatus || e.data[1] || null;
        info.problem = info.problem || problemOf(bytesToText(e.data[2]));
      }
      if (Array.isArray(e.data)) e.data.forEach(visit);
    };
    visit(err);
    return info;
  }

  /** A dash.js ERROR event (or a licenseRequestComplete event carrying an error). */
  function dashErrorInfo(event) {
    const e = (event && event.error) || event || {};
    const data = e.data || {};
    // Download errors carry {request, response}; license errors put the status in the message.
    const response = data.response || data;
    const status = response && (response.status || (response.xhr && response.xhr.status));
    const body = data.serverResponse
      || (response && (response.data !== undefined ? response.data : response.response));
    const message = e.message || data.message || String(e);
    return {
      code: e.code != null ? `dashjs-${e.code}` : 'dashjs-unknown',
      message,
      httpStatus: (typeof status === 'number' && status >= 400 ? status : null) || statusFromText(message),
      problem: problemOf(isPlainObject(body) ? body : bytesToText(body)),
    };
  }

  /** The data of an hls.js ERROR event. */
  function hlsErrorInfo(data) {
    const response = data.response || {};
    const xhr = data.networkDetails;
    let text = null;
    if (xhr) {
      try {
        text = xhr.responseType === '' || xhr.responseType === 'text' ? xhr.responseText : bytesToText(xhr.response);
      } catch (_) {
        text = null;
      }
    }
    return {
      code: `hlsjs-${data.details}`,
      message: `${data.type}: ${data.details}${data.reason ? ` (${data.reason})` : ''}`,
      httpStatus: response.code || (xhr && xhr.status) || null,
      problem: problemOf(text),
    };
  }

  return { elide, problemOf, shakaErrorInfo, dashErrorInfo, hlsErrorInfo };
})();
