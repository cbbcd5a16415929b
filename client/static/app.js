// MineStream talk-back page: picks the transport (WebSocket or WebRTC), and
// wires the connection, the talk panel, the clone panel, the library and the
// design panel together. Each concept lives in its own module.

import * as api from './api.js';
import { Connection } from './protocol.js';
import { opusSupport } from './opus.js';
import { RtcConnection, preferRtc } from './rtc.js';
import { Link } from './transport.js';
import { Player, SOURCE_RATE } from './player.js';
import { RtcOutput } from './rtc-output.js';
import { microphoneProblem } from './recorder.js';
import { Library } from './library.js';
import { Waveform } from './figures.js';
import { Talk } from './talk.js';
import { Clone } from './clone.js';
import { debug, log, notice, setStatus, ui } from './page.js';

api.loadToken();
const link = new Link();
const player = new Player();
const rtcOut = new RtcOutput();
const library = new Library(ui.voices, {
  status: (msg) => setStatus(ui.libStatus, msg, 'ok'),
  onSelect: (voice) => {
    ui.voiceCurrent.textContent = voice ? `${voice.name} (saved, ${voice.kind === 'clone' ? 'cloned' : 'designed'})` : 'the description in “Design a voice”';
  },
  onError: (err) => httpError(err, ui.libStatus),
});

function currentVoice() {
  const saved = library.selectedVoice;
  if (saved) return { voice_id: saved.id };
  const design = ui.design.value.trim();
  return design ? { design } : null;
}

async function picked(voiceId) {
  library.selected = voiceId;
  await library.refresh();
}

const talk = new Talk({ link, player, rtcOut, waveform: new Waveform(ui.wave), currentVoice });
const clone = new Clone({ link, audioContext: () => (talk.unlock() ? player.ctx : null), picked, httpError });
Object.assign(debug, { conn: link, link, player, rtcOut, library, talk, clone });

// --- transport switch ----------------------------------------------------------------

const TRANSPORT_KEY = 'minestream.transport';
const TRANSPORT_NAME = { websocket: 'WebSocket', webrtc: 'WebRTC' };

function chosenTransport() {
  if (typeof RTCPeerConnection !== 'function') return 'websocket';
  let saved = null;
  try {
    saved = localStorage.getItem(TRANSPORT_KEY);
  } catch {
    /* storage blocked: fall back to the default */
  }
  if (saved === 'websocket' || saved === 'webrtc') return saved;
  // Phones default to WebRTC: mobile networks drop long-lived WebSockets, and
  // the call's jitter buffer rides out radio hiccups.
  return preferRtc() ? 'webrtc' : 'websocket';
}

// What the WebSocket carries: PCM (the default: no decoding between the
// socket and the speaker) or Opus pages, for slow or metered networks.
const FORMAT_KEY = 'minestream.wsFormat';
const opusProblem = await opusSupport();

function chosenFormat() {
  let saved = null;
  try {
    saved = localStorage.getItem(FORMAT_KEY);
  } catch {
    /* storage blocked: the default */
  }
  return saved === 'opus' && !opusProblem ? 'opus' : 'pcm_s16le';
}

function showFormat(kind) {
  ui.wsFormat.value = chosenFormat();
  ui.wsFormat.disabled = kind === 'webrtc';
  ui.wsFormat.querySelector('option[value=opus]').disabled = !!opusProblem;
  const hint = kind === 'webrtc' ? 'WebRTC carries its own Opus on the call.' : opusProblem ? `Opus is off: ${opusProblem}.` : '';
  ui.wsFormatHint.hidden = !hint;
  ui.wsFormatHint.textContent = hint;
}

ui.wsFormat.addEventListener('change', () => {
  try {
    localStorage.setItem(FORMAT_KEY, ui.wsFormat.value);
  } catch {
    /* not remembered, still used */
  }
  if (link.transport === 'websocket') useTransport('websocket');
});

/** Open a session over `kind`; whatever was playing or recording is cut first. */
function useTransport(kind) {
  if (talk.live) talk.stop('Stopped: the transport changed.');
  clone.abort('Recording stopped: the transport changed. Please record again.');
  const conn =
    kind === 'webrtc'
      ? new RtcConnection({ token: api.getToken })
      : new Connection({ token: api.getToken, format: chosenFormat(), sampleRate: SOURCE_RATE });
  showFormat(kind);
  link.use(conn);
  conn.connect();
  // Play the speech track from the start: Chromium does not drain a remote
  // track nobody plays, and would later play the whole backlog.
  if (kind === 'webrtc') rtcOut.attach(conn);
  for (const input of ui.transport.querySelectorAll('input')) input.checked = input.value === kind;
  // Over WebRTC the speech is a call stream, not kept: nothing to download.
  const rtc = kind === 'webrtc';
  ui.downloadHint.hidden = !rtc;
  ui.download.title = rtc ? ui.downloadHint.textContent : '';
  log('transport', { kind });
}

if (typeof RTCPeerConnection !== 'function') {
  const input = ui.transport.querySelector('input[value=webrtc]');
  input.disabled = true;
  ui.transportNote.hidden = false;
  ui.transportNote.textContent = 'This browser has no WebRTC; the WebSocket is used.';
}

ui.transport.addEventListener('change', (e) => {
  const kind = e.target.value;
  try {
    localStorage.setItem(TRANSPORT_KEY, kind);
  } catch {
    /* not remembered, still switched */
  }
  if (kind !== link.transport) useTransport(kind);
});

// --- connection state ------------------------------------------------------------------

const STATE_TEXT = {
  idle: 'Not connected',
  connecting: 'Connecting…',
  reconnecting: 'Reconnecting…',
  ready: 'Connected',
  unauthorized: 'Token needed',
  failed: 'Disconnected',
};

function connText(state, detail = '') {
  const over = state === 'ready' ? ` over ${TRANSPORT_NAME[link.transport]}` : '';
  const rtt = state === 'ready' && link.rttMs !== null ? ` · ${Math.round(link.rttMs)} ms round trip` : '';
  return STATE_TEXT[state] + over + rtt + (detail ? ` (${detail})` : '');
}

link.on('state', ({ state, detail }) => {
  ui.conn.dataset.state = state;
  ui.connText.textContent = connText(state, detail);
  ui.speak.disabled = state !== 'ready';
  if (state === 'unauthorized') showTokenForm();
});

link.on('pong', () => {
  ui.connText.textContent = connText(link.state);
});

link.on('ready', (msg) => {
  ui.tokenForm.hidden = true;
  showEngine(msg.engine || {});
  debug.ready = msg;
  library.refresh();
});

link.on('error', (msg) => {
  log('error', { code: msg.code, id: msg.id, ref: msg.ref });
  const text = msg.message || msg.code;
  if (talk.error(msg, text) || clone.error(msg, text)) return;
  if (msg.code !== 'unauthorized') setStatus(ui.talkStatus, `Server error: ${text}`, 'error');
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
  link.reconnect();
});

function httpError(err, statusEl) {
  if (err instanceof api.Unauthorized) showTokenForm();
  setStatus(statusEl, err.message || String(err), 'error');
}

// Browsers keep audio locked until a gesture; unlock (and load the worklet)
// on the first one, so the first Speak does not pay for it.
const unlockOnce = () => talk.unlock();
document.addEventListener('pointerdown', unlockOnce, { once: true, capture: true });
document.addEventListener('keydown', unlockOnce, { once: true, capture: true });

// --- design --------------------------------------------------------------------------

ui.designSave.addEventListener('click', async () => {
  const design = ui.design.value.trim();
  if (!design) return setStatus(ui.designStatus, 'Describe the voice first.', 'error');
  const name = ui.designName.value.trim() || design.split(/\s+/).slice(0, 4).join(' ');
  ui.designSave.disabled = true;
  setStatus(ui.designStatus, 'Saving… (the server may render a sample first)');
  try {
    const voice = await api.createDesignVoice(name, design);
    setStatus(ui.designStatus, `Saved “${voice.name}” to the library and picked it.`, 'ok');
    await picked(voice.id);
  } catch (err) {
    httpError(err, ui.designStatus);
  } finally {
    ui.designSave.disabled = false;
  }
});

ui.libRefresh.addEventListener('click', () => library.refresh());

// --- start ------------------------------------------------------------------------------

const micProblem = microphoneProblem();
if (micProblem) {
  ui.record.disabled = true;
  setStatus(ui.cloneStatus, micProblem, 'error');
}
if (!window.isSecureContext) {
  notice('insecure', 'This page is not in a secure context (it was opened over plain http). Browsers then turn off the microphone and the audio worklet: open it with https:// instead.');
}
library.render();
useTransport(chosenTransport());
