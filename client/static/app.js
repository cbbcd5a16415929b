// MineStream talk-back page: wires the connection, player, recorder, library
// and figures to the controls. Each concept lives in its own module; this one
// holds the page state (the current utterance, the current recording).

import * as api from './api.js';
import { Connection, base64ToBytes, bytesToBase64, bytesToInt16, newId } from './protocol.js';
import { Player, SOURCE_RATE } from './player.js';
import { Recorder, microphoneProblem, explainMicError } from './recorder.js';
import { Library } from './library.js';
import { Waveform, showFigures, wavBlob } from './figures.js';

const $ = (id) => document.getElementById(id);
const ui = {
  conn: $('conn'),
  connText: $('conn-text'),
  engineName: $('engine-name'),
  engineKind: $('engine-kind'),
  engineNote: $('engine-note'),
  notices: $('notices'),
  tokenForm: $('token-form'),
  tokenInput: $('token-input'),
  text: $('text'),
  language: $('language'),
  streamDemo: $('stream-demo'),
  voiceCurrent: $('voice-current'),
  speak: $('speak'),
  stop: $('stop'),
  download: $('download'),
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
  libRefresh: $('lib-refresh'),
  libStatus: $('lib-status'),
};

function setStatus(el, msg, kind = '') {
  el.textContent = msg;
  el.dataset.kind = kind;
}

/** A page-level problem (insecure context, no worklet...), shown once. */
function notice(key, msg) {
  if (ui.notices.querySelector(`[data-key="${key}"]`)) return;
  const p = document.createElement('p');
  p.dataset.key = key;
  p.textContent = msg;
  ui.notices.append(p);
}

// What tests (and curious people in devtools) can look at.
const debug = { log: [], utterances: [] };
window.minestream = debug;
function log(kind, fields = {}) {
  debug.log.push({ t: performance.now(), kind, ...fields });
  if (debug.log.length > 5000) debug.log.splice(0, 1000); // a long session stays small
}

// --- connection --------------------------------------------------------------

api.loadToken();
const conn = new Connection({ token: api.getToken, format: 'pcm_s16le', sampleRate: SOURCE_RATE });
const player = new Player();
const waveform = new Waveform($('wave'));
waveform.idle = () => !utter || utter.finished;
const library = new Library($('voices'), {
  status: (msg) => setStatus(ui.libStatus, msg, 'ok'),
  onSelect: (voice) => {
    ui.voiceCurrent.textContent = voice ? `${voice.name} (saved, ${voice.kind === 'clone' ? 'cloned' : 'designed'})` : 'the description in “Design a voice”';
  },
  onError: (err) => httpError(err, ui.libStatus),
});
Object.assign(debug, { conn, player, library });

const STATE_TEXT = {
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  ready: 'Connected',
  unauthorized: 'Token needed',
  failed: 'Disconnected',
};

conn.on('state', ({ state, detail }) => {
  ui.conn.dataset.state = state;
  ui.connText.textContent = STATE_TEXT[state] + (detail ? ` (${detail})` : '');
  ui.speak.disabled = state !== 'ready';
  if (state === 'unauthorized') showTokenForm();
});

conn.on('pong', () => {
  if (conn.rttMs !== null) ui.connText.textContent = `Connected · ${Math.round(conn.rttMs)} ms round trip`;
});

conn.on('ready', (msg) => {
  ui.tokenForm.hidden = true;
  showEngine(msg.engine || {});
  debug.ready = msg;
  library.refresh();
});

conn.on('closed', () => {
  if (utter && !utter.finished) {
    player.stop();
    finishUtterance('The connection dropped; the utterance was cut.', 'error');
  }
  if (rec) abortRecording('The connection dropped while recording; please record again.');
});

function showEngine(engine) {
  ui.engineName.textContent = engine.name || 'unknown';
  ui.engineKind.hidden = !engine.kind;
  ui.engineKind.textContent = engine.kind || '';
  ui.engineNote.hidden = !engine.note;
  ui.engineNote.textContent = engine.note || '';

  // Languages: keep the choice across reconnects.
  const keep = ui.language.value;
  const names = typeof Intl.DisplayNames === 'function' ? new Intl.DisplayNames([navigator.language || 'en'], { type: 'language' }) : null;
  const opts = [['auto', 'Auto']];
  for (const code of engine.languages || []) {
    if (code === 'auto') continue;
    let label = code;
    try {
      label = names?.of(code) || code;
    } catch {
      /* not a BCP 47 code: show it as it is */
    }
    opts.push([code, label]);
  }
  ui.language.replaceChildren(...opts.map(([v, t]) => new Option(t, v, false, v === keep)));

  const cloneOff = engine.clone === false;
  ui.record.disabled = cloneOff || !!microphoneProblem();
  ui.upload.disabled = cloneOff;
  if (cloneOff) setStatus(ui.cloneStatus, 'This engine cannot clone voices.', 'error');
  ui.designSave.disabled = engine.design === false;
}

function showTokenForm() {
  ui.tokenForm.hidden = false;
  ui.tokenInput.value = '';
  ui.tokenInput.focus();
}

ui.tokenForm.addEventListener('submit', (e) => {
  e.preventDefault();
  api.saveToken(ui.tokenInput.value.trim());
  ui.tokenForm.hidden = true;
  conn.reconnect();
});

function httpError(err, statusEl) {
  if (err instanceof api.Unauthorized) {
    showTokenForm();
    setStatus(statusEl, err.message, 'error');
  } else {
    setStatus(statusEl, err.message || String(err), 'error');
  }
}

// --- talk-back -----------------------------------------------------------------

/** The utterance being spoken (one at a time: a new Speak cuts the old one). */
let utter = null;

function currentVoice() {
  const saved = library.selectedVoice;
  if (saved) return { voice_id: saved.id };
  const design = ui.design.value.trim();
  return design ? { design } : null;
}

function speak() {
  const t0 = performance.now(); // TTFA as heard counts from here
  if (!conn.isReady) return setStatus(ui.talkStatus, 'Not connected to the server yet.', 'error');
  const text = ui.text.value.trim();
  if (!text) return setStatus(ui.talkStatus, 'Type something to say first.', 'error');
  const max = conn.info?.limits?.max_text_chars;
  if (max && text.length > max) return setStatus(ui.talkStatus, `The text is too long: at most ${max} characters.`, 'error');
  const voice = currentVoice();
  if (!voice) return setStatus(ui.talkStatus, 'Describe a voice in “Design a voice”, or pick a saved one.', 'error');

  if (utter && !utter.finished) stop('Replaced by a new utterance.');
  try {
    player.unlock();
  } catch (err) {
    notice('audio', `Audio playback is not available: ${err.message}`);
    return;
  }
  player.ready.catch((err) => notice('audio', `Audio playback is not available: ${err.message}`));

  const id = newId('u');
  utter = { id, t0, chunks: 0, pcm: [], underruns: 0, fig: { chunks: 0, underruns: 0 }, finished: false };
  debug.utterances.push(utter);
  player.begin(id);
  waveform.clear();
  player.ready.then(() => waveform.run(player.analyser)).catch(() => {});
  const language = ui.language.value || 'auto';

  if (ui.streamDemo.checked) {
    // Input streaming demo: open the utterance with the first word and feed
    // the rest as if it were being typed or produced by a language model.
    const words = text.match(/\S+\s*/g);
    conn.send({ type: 'speak', id, text: words[0], voice, language, final: false });
    let i = 1;
    utter.feeder = setInterval(() => {
      if (!conn.isReady) return clearInterval(utter?.feeder);
      if (i < words.length) {
        conn.send({ type: 'text', id, text: words[i++] });
        setStatus(ui.talkStatus, `Streaming text in: ${i}/${words.length} words…`);
      } else {
        clearInterval(utter.feeder);
        conn.send({ type: 'end', id });
      }
    }, 120);
  } else {
    conn.send({ type: 'speak', id, text, voice, language, final: true });
  }
  log('speak', { id });
  ui.stop.disabled = false;
  ui.download.disabled = true;
  showFigures(ui.figures, utter.fig);
  setStatus(ui.talkStatus, 'Generating…');
}

/** Barge-in: silence the player at once and tell the server to stop. */
function stop(message = 'Stopped.') {
  if (!utter || utter.finished) return;
  clearInterval(utter.feeder);
  player.stop();
  if (!utter.done && conn.isReady) conn.send({ type: 'cancel', id: utter.id });
  utter.cancelled = true;
  log('cancel', { id: utter.id });
  finishUtterance(message);
}

function finishUtterance(message, kind = '') {
  if (!utter || utter.finished) return;
  utter.finished = true;
  clearInterval(utter.feeder);
  ui.stop.disabled = true;
  ui.download.disabled = utter.pcm.length === 0;
  setStatus(ui.talkStatus, message, kind);
  updateFigures();
}

function updateFigures() {
  if (!utter) return;
  const f = utter.fig;
  f.chunks = utter.chunks;
  f.underruns = utter.underruns;
  // The server's figure once it is done; until then (or when cut) what arrived.
  const received = (utter.pcm.reduce((n, c) => n + c.length, 0) * 1000) / SOURCE_RATE;
  f.audioMs = utter.done && !utter.cancelled && utter.serverAudioMs != null ? utter.serverAudioMs : received || undefined;
  showFigures(ui.figures, f);
}

conn.on('audio', (msg) => {
  log('audio', { id: msg.id, seq: msg.seq });
  if (!utter || msg.id !== utter.id || utter.cancelled) return; // late audio of a cut utterance
  const bytes = base64ToBytes(msg.data);
  const pcm = conn.info?.format === 'pcm_f32le' ? floatToInt16(bytes) : bytesToInt16(bytes);
  if (utter.chunks === 0) utter.fig.firstChunk = performance.now() - utter.t0;
  utter.chunks++;
  utter.pcm.push(pcm);
  player.push(pcm);
  updateFigures();
});

function floatToInt16(bytes) {
  const f = new Float32Array(bytes.slice().buffer);
  const out = new Int16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(f[i] * 32767)));
  return out;
}

conn.on('done', (msg) => {
  log('done', { id: msg.id, cancelled: !!msg.cancelled });
  if (!utter || msg.id !== utter.id) return;
  utter.done = true;
  utter.serverAudioMs = msg.audio_ms;
  Object.assign(utter.fig, { serverTtfa: msg.ttfa_ms ?? undefined, rtf: msg.rtf ?? undefined });
  if (msg.cancelled) {
    player.stop();
    finishUtterance('Stopped.');
  } else {
    player.end(); // play out the queue; 'drained' finishes the utterance
  }
  updateFigures();
});

player.on('audible', (msg) => {
  if (!utter || msg.id !== utter.id) return;
  utter.fig.ttfaHeard = msg.heardAt - utter.t0;
  log('audible', { id: msg.id, ttfaHeard: utter.fig.ttfaHeard });
  if (!utter.finished) setStatus(ui.talkStatus, 'Speaking…');
  updateFigures();
});

player.on('underrun', (msg) => {
  if (utter && msg.id === utter.id) {
    utter.underruns = msg.count;
    updateFigures();
  }
});

player.on('drained', (msg) => {
  if (utter && msg.id === utter.id) finishUtterance(utter.done ? 'Done.' : 'Played everything received.', 'ok');
});

conn.on('error', (msg) => {
  log('error', { code: msg.code, id: msg.id, ref: msg.ref });
  const text = msg.message || msg.code;
  if (msg.id && utter && msg.id === utter.id) {
    player.stop();
    utter.done = true;
    finishUtterance(`Server error: ${text}`, 'error');
  } else if (msg.ref && uploads.has(msg.ref)) {
    uploads.delete(msg.ref);
    if (rec?.ref === msg.ref) abortRecording(`The server could not use the recording: ${text}`);
    else setStatus(ui.cloneStatus, `The server could not use the recording: ${text}`, 'error');
  } else if (msg.code !== 'unauthorized') {
    setStatus(ui.talkStatus, `Server error: ${text}`, 'error');
  }
});

ui.speak.addEventListener('click', speak);
ui.stop.addEventListener('click', () => stop());
ui.download.addEventListener('click', () => {
  if (!utter?.pcm.length) return;
  const a = document.createElement('a');
  a.href = URL.createObjectURL(wavBlob(utter.pcm, SOURCE_RATE));
  a.download = `minestream-${utter.id}.wav`;
  a.click();
  setTimeout(() => URL.revokeObjectURL(a.href), 10000);
});

document.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !ui.tokenForm.contains(e.target)) {
    e.preventDefault();
    speak();
  } else if (e.key === 'Escape' && utter && !utter.finished) {
    stop();
  }
});

// Browsers keep audio locked until a gesture; unlock (and load the worklet)
// on the first one, so the first Speak does not pay for it.
const unlockOnce = () => {
  try {
    player.unlock().catch((err) => notice('audio', `Audio playback is not available: ${err.message}`));
  } catch (err) {
    notice('audio', `Audio playback is not available: ${err.message}`);
  }
};
document.addEventListener('pointerdown', unlockOnce, { once: true, capture: true });
document.addEventListener('keydown', unlockOnce, { once: true, capture: true });

// --- design --------------------------------------------------------------------

ui.designSave.addEventListener('click', async () => {
  const design = ui.design.value.trim();
  if (!design) return setStatus(ui.designStatus, 'Describe the voice first.', 'error');
  const name = ui.designName.value.trim() || design.split(/\s+/).slice(0, 4).join(' ');
  ui.designSave.disabled = true;
  setStatus(ui.designStatus, 'Saving… (the server may render a sample first)');
  try {
    const voice = await api.createDesignVoice(name, design);
    setStatus(ui.designStatus, `Saved “${voice.name}” to the library and picked it.`, 'ok');
    library.selected = voice.id;
    await library.refresh();
  } catch (err) {
    httpError(err, ui.designStatus);
  } finally {
    ui.designSave.disabled = false;
  }
});

// --- clone: record (streamed over the socket) or upload ---------------------------

/** The recording in progress: {ref, recorder, chain}. */
let rec = null;
/** Uploads the server has not answered yet: ref -> name. */
const uploads = new Map();

function chunkLimit() {
  // base64 grows bytes by 4/3; leave room for the JSON around the data.
  const max = conn.info?.limits?.max_message_bytes || 1 << 20;
  return Math.max(1024, Math.floor(((max - 512) * 3) / 4));
}

function setRecordingUi(on) {
  ui.record.setAttribute('aria-pressed', String(on));
  ui.record.textContent = on ? 'Stop recording' : 'Record';
  ui.upload.disabled = on;
}

async function startRecording() {
  const problem = microphoneProblem();
  if (problem) return setStatus(ui.cloneStatus, problem, 'error');
  if (!conn.isReady) return setStatus(ui.cloneStatus, 'Not connected to the server yet.', 'error');
  unlockOnce();
  const ref = newId('ref');
  const name = ui.cloneName.value.trim() || `My voice ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
  const state = { ref, recorder: null, chain: Promise.resolve(), name };
  const recorder = new Recorder({
    onChunk: (blob) => {
      // Keep slices in order: each waits for the previous one to be sent.
      state.chain = state.chain.then(async () => sendBytes(ref, new Uint8Array(await blob.arrayBuffer())));
    },
    onLevel: (level) => {
      ui.level.style.setProperty('--level', level.toFixed(3));
      ui.level.setAttribute('aria-valuenow', String(Math.round(level * 100)));
    },
    onTick: (s) => {
      ui.recTime.textContent = `${s.toFixed(1)} s`;
    },
    onLimit: () => stopRecording(),
  });
  state.recorder = recorder;
  rec = state;
  setRecordingUi(true);
  setStatus(ui.cloneStatus, 'Asking for the microphone…');
  const maxSeconds = Math.min(20, conn.info?.limits?.max_ref_seconds || 20);
  try {
    await recorder.start(player.ctx, maxSeconds);
  } catch (err) {
    rec = null;
    setRecordingUi(false);
    log('mic-error', { name: err?.name });
    return setStatus(ui.cloneStatus, explainMicError(err), 'error');
  }
  const begin = { type: 'voice_begin', ref, name, mime: recorder.mimeType };
  const refText = ui.refText.value.trim();
  if (refText) begin.ref_text = refText;
  conn.send(begin);
  uploads.set(ref, name);
  log('voice_begin', { ref, mime: recorder.mimeType });
  setStatus(ui.cloneStatus, `Recording (${recorder.mimeType || 'default format'})… talk for 5 to 20 seconds, then press Stop recording.`);
}

function sendBytes(ref, bytes) {
  if (!uploads.has(ref)) return; // the server already refused this upload
  const step = chunkLimit();
  for (let i = 0; i < bytes.length; i += step) {
    conn.send({ type: 'voice_chunk', ref, data: bytesToBase64(bytes.subarray(i, i + step)) });
  }
}

async function stopRecording() {
  if (!rec || rec.stopping) return;
  const current = rec;
  current.stopping = true;
  const seconds = await current.recorder.stop();
  setRecordingUi(false);
  rec = null;
  try {
    await current.chain;
    if (uploads.has(current.ref)) conn.send({ type: 'voice_end', ref: current.ref });
  } catch (err) {
    uploads.delete(current.ref);
    return setStatus(ui.cloneStatus, `The recording could not be sent: ${err.message}`, 'error');
  }
  log('voice_end', { ref: current.ref, seconds });
  const short = seconds < 5 ? ' That was short: 5 to 20 seconds clone better.' : '';
  setStatus(ui.cloneStatus, `Recorded ${seconds.toFixed(1)} s; the server is finishing the voice…${short}`);
}

function abortRecording(message) {
  if (!rec) return;
  const current = rec;
  rec = null;
  uploads.delete(current.ref);
  current.recorder.stop();
  setRecordingUi(false);
  setStatus(ui.cloneStatus, message, 'error');
}

ui.record.addEventListener('click', () => (rec ? stopRecording() : startRecording()));

conn.on('progress', (msg) => {
  if (!uploads.has(msg.ref)) return;
  const s = ((msg.decoded_ms || 0) / 1000).toFixed(1);
  if (rec?.ref === msg.ref) setStatus(ui.cloneStatus, `Recording… the server has ${s} s so far.`);
});

conn.on('voice', async (msg) => {
  log('voice', { ref: msg.ref, voice_id: msg.voice_id });
  if (!uploads.delete(msg.ref)) return;
  const secs = ((msg.duration_ms || 0) / 1000).toFixed(1);
  setStatus(ui.cloneStatus, `Voice “${msg.name}” is ready (${secs} s of reference) and picked in the library.`, 'ok');
  library.selected = msg.voice_id;
  await library.refresh();
});

ui.upload.addEventListener('change', async () => {
  const file = ui.upload.files[0];
  if (!file) return;
  const name = ui.cloneName.value.trim() || file.name.replace(/\.[^.]+$/, '');
  setStatus(ui.cloneStatus, `Uploading “${file.name}”…`);
  try {
    const voice = await api.createVoiceFromFile(file, name, ui.refText.value.trim());
    setStatus(ui.cloneStatus, `Voice “${voice.name}” is ready and picked in the library.`, 'ok');
    library.selected = voice.id;
    await library.refresh();
  } catch (err) {
    httpError(err, ui.cloneStatus);
  } finally {
    ui.upload.value = '';
  }
});

ui.libRefresh.addEventListener('click', () => library.refresh());

// --- start ------------------------------------------------------------------------

const micProblem = microphoneProblem();
if (micProblem) {
  ui.record.disabled = true;
  setStatus(ui.cloneStatus, micProblem, 'error');
}
if (!window.isSecureContext) {
  notice('insecure', 'This page is not in a secure context (it was opened over plain http). Browsers then turn off the microphone and the audio worklet: open it with https:// instead.');
}
library.render();
conn.connect();
