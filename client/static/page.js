// The page's elements and the small helpers every panel uses: status lines,
// page-level notices, and the debug log that tests read (window.minestream).

const $ = (id) => document.getElementById(id);

export const ui = {
  conn: $('conn'),
  connText: $('conn-text'),
  transport: $('transport'),
  transportNote: $('transport-note'),
  engineName: $('engine-name'),
  engineKind: $('engine-kind'),
  engineNote: $('engine-note'),
  notices: $('notices'),
  tokenForm: $('token-form'),
  tokenInput: $('token-input'),
  text: $('text'),
  language: $('language'),
  streamDemo: $('stream-demo'),
  wsFormat: $('ws-format'),
  wsFormatHint: $('ws-format-hint'),
  voiceCurrent: $('voice-current'),
  speak: $('speak'),
  stop: $('stop'),
  download: $('download'),
  downloadHint: $('download-hint'),
  wave: $('wave'),
  figures: $('figures'),
  talkStatus: $('talk-status'),
  design: $('design'),
  designName: $('design-name'),
  designSave: $('design-save'),
  designStatus: $('design-status'),
  cloneName: $('clone-name'),
  refText: $('ref-text'),
  record: $('record'),
  level: $('level'),
  recTime: $('rec-time'),
  upload: $('upload'),
  cloneStatus: $('clone-status'),
  voices: $('voices'),
  libRefresh: $('lib-refresh'),
  libStatus: $('lib-status'),
};

export function setStatus(el, msg, kind = '') {
  el.textContent = msg;
  el.dataset.kind = kind;
}

/** A page-level problem (insecure context, no worklet...), shown once. */
export function notice(key, msg) {
  if (ui.notices.querySelector(`[data-key="${key}"]`)) return;
  const p = document.createElement('p');
  p.dataset.key = key;
  p.textContent = msg;
  ui.notices.append(p);
}

// What tests (and curious people in devtools) can look at.
export const debug = { log: [], utterances: [] };
window.minestream = debug;

export function log(kind, fields = {}) {
  debug.log.push({ t: performance.now(), kind, ...fields });
  if (debug.log.length > 5000) debug.log.splice(0, 1000); // a long session stays small
}
