// The "Clone a voice" panel: record from the microphone while talking, or
// upload a file. Over the WebSocket the recording goes as MediaRecorder slices
// (`voice_chunk`); over WebRTC the microphone track itself goes to the server,
// which records it between `voice_begin {source: "rtc"}` and `voice_end`.

import * as api from './api.js';
import { bytesToBase64, newId } from './protocol.js';
import { Recorder, microphoneProblem, explainMicError } from './recorder.js';
import { log, setStatus, ui } from './page.js';

// After Stop, frames still on their way over the track belong to the
// recording: wait this long before `voice_end`.
const RTC_TAIL_MS = 100;

export class Clone {
  /**
   * @param {object} deps
   * @param {import('./transport.js').Link} deps.link
   * @param {() => AudioContext|null} deps.audioContext for the level meter (made in a gesture)
   * @param {(voiceId: string) => Promise<void>} deps.picked a voice was made: select it in the library
   * @param {(err: Error, el: HTMLElement) => void} deps.httpError
   */
  constructor({ link, audioContext, picked, httpError }) {
    Object.assign(this, { link, audioContext, picked, httpError });
    /** The recording in progress: {ref, recorder, chain, name, rtc}. */
    this.rec = null;
    /** Uploads the server has not answered yet: ref -> name. */
    this.uploads = new Map();

    ui.record.addEventListener('click', () => (this.rec ? this.stop() : this.start()));
    ui.upload.addEventListener('change', () => this.#uploadFile());
    link.on('closed', () => this.abort('The connection dropped while recording; please record again.'));
    link.on('progress', (msg) => {
      if (!this.uploads.has(msg.ref) || this.rec?.ref !== msg.ref) return;
      const s = ((msg.decoded_ms || 0) / 1000).toFixed(1);
      setStatus(ui.cloneStatus, `Recording… the server has ${s} s so far.`);
    });
    link.on('voice', async (msg) => {
      log('voice', { ref: msg.ref, voice_id: msg.voice_id });
      if (!this.uploads.delete(msg.ref)) return;
      const secs = ((msg.duration_ms || 0) / 1000).toFixed(1);
      setStatus(ui.cloneStatus, `Voice “${msg.name}” is ready (${secs} s of reference) and picked in the library.`, 'ok');
      await this.picked(msg.voice_id);
    });
  }

  #setUi(on) {
    ui.record.setAttribute('aria-pressed', String(on));
    ui.record.textContent = on ? 'Stop recording' : 'Record';
    ui.upload.disabled = on;
  }

  chunkLimit() {
    // base64 grows bytes by 4/3; leave room for the JSON around the data.
    const max = this.link.info?.limits?.max_message_bytes || 1 << 20;
    return Math.max(1024, Math.floor(((max - 512) * 3) / 4));
  }

  async start() {
    const problem = microphoneProblem();
    if (problem) return setStatus(ui.cloneStatus, problem, 'error');
    const { link } = this;
    if (!link.isReady) return setStatus(ui.cloneStatus, 'Not connected to the server yet.', 'error');
    const rtc = link.transport === 'webrtc';
    const conn = link.conn; // the track goes on this peer connection, whatever the switch does later
    const ref = newId('ref');
    const name = ui.cloneName.value.trim() || `My voice ${new Date().toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })}`;
    const state = { ref, recorder: null, chain: Promise.resolve(), name, rtc, conn };
    state.recorder = new Recorder({
      onChunk: (blob) => {
        // Keep slices in order: each waits for the previous one to be sent.
        state.chain = state.chain.then(async () => this.#sendBytes(ref, new Uint8Array(await blob.arrayBuffer())));
      },
      onLevel: (level) => {
        ui.level.style.setProperty('--level', level.toFixed(3));
        ui.level.setAttribute('aria-valuenow', String(Math.round(level * 100)));
      },
      onTick: (s) => {
        ui.recTime.textContent = `${s.toFixed(1)} s`;
      },
      onLimit: () => this.stop(),
    });
    this.rec = state;
    this.#setUi(true);
    setStatus(ui.cloneStatus, 'Asking for the microphone…');
    const maxSeconds = Math.min(20, link.info?.limits?.max_ref_seconds || 20);
    try {
      await state.recorder.start(this.audioContext(), maxSeconds, { encode: !rtc });
      if (rtc) await conn.setMicrophone(state.recorder.track);
    } catch (err) {
      if (this.rec === state) this.rec = null;
      state.recorder.stop();
      this.#setUi(false);
      log('mic-error', { name: err?.name });
      return setStatus(ui.cloneStatus, explainMicError(err), 'error');
    }
    if (this.rec !== state) return; // dropped while the prompt was open
    const begin = { type: 'voice_begin', ref, name };
    if (rtc) begin.source = 'rtc'; // no mime, no chunks: the server records the track
    else begin.mime = state.recorder.mimeType;
    const refText = ui.refText.value.trim();
    if (refText) begin.ref_text = refText;
    link.send(begin);
    this.uploads.set(ref, name);
    log('voice_begin', { ref, mime: begin.mime, source: begin.source });
    const how = rtc ? 'over the WebRTC call' : state.recorder.mimeType || 'default format';
    setStatus(ui.cloneStatus, `Recording (${how})… talk for 5 to 20 seconds, then press Stop recording.`);
  }

  #sendBytes(ref, bytes) {
    if (!this.uploads.has(ref)) return; // the server already refused this upload
    const step = this.chunkLimit();
    for (let i = 0; i < bytes.length; i += step) {
      this.link.send({ type: 'voice_chunk', ref, data: bytesToBase64(bytes.subarray(i, i + step)) });
    }
  }

  async stop() {
    const current = this.rec;
    if (!current || current.stopping) return;
    current.stopping = true;
    let seconds;
    try {
      if (current.rtc) {
        current.recorder.pause(); // the meter and timer stop; the track keeps sending
        this.#setUi(false);
        await new Promise((r) => setTimeout(r, RTC_TAIL_MS));
        if (this.rec !== current) return; // aborted meanwhile
        if (this.uploads.has(current.ref)) this.link.send({ type: 'voice_end', ref: current.ref });
        await current.conn.setMicrophone(null);
        seconds = await current.recorder.stop();
        this.rec = null;
      } else {
        seconds = await current.recorder.stop();
        this.#setUi(false);
        this.rec = null;
        await current.chain;
        if (this.uploads.has(current.ref)) this.link.send({ type: 'voice_end', ref: current.ref });
      }
    } catch (err) {
      this.rec = null;
      this.uploads.delete(current.ref);
      return setStatus(ui.cloneStatus, `The recording could not be sent: ${err.message}`, 'error');
    }
    log('voice_end', { ref: current.ref, seconds });
    const short = seconds < 5 ? ' That was short: 5 to 20 seconds clone better.' : '';
    setStatus(ui.cloneStatus, `Recorded ${seconds.toFixed(1)} s; the server is finishing the voice…${short}`);
  }

  /** Give up on the recording in progress (connection dropped, transport switched, server refused it). */
  abort(message) {
    const current = this.rec;
    if (!current) return;
    this.rec = null;
    this.uploads.delete(current.ref);
    if (current.rtc) current.conn.setMicrophone(null).catch(() => {});
    current.recorder.stop();
    this.#setUi(false);
    setStatus(ui.cloneStatus, message, 'error');
  }

  /** A server error about one of our uploads; true if it was one. */
  error(msg, text) {
    if (!msg.ref || !this.uploads.has(msg.ref)) return false;
    this.uploads.delete(msg.ref);
    const message = `The server could not use the recording: ${text}`;
    if (this.rec?.ref === msg.ref) this.abort(message);
    else setStatus(ui.cloneStatus, message, 'error');
    return true;
  }

  async #uploadFile() {
    const file = ui.upload.files[0];
    if (!file) return;
    const name = ui.cloneName.value.trim() || file.name.replace(/\.[^.]+$/, '');
    setStatus(ui.cloneStatus, `Uploading “${file.name}”…`);
    try {
      const voice = await api.createVoiceFromFile(file, name, ui.refText.value.trim());
      setStatus(ui.cloneStatus, `Voice “${voice.name}” is ready and picked in the library.`, 'ok');
      await this.picked(voice.id);
    } catch (err) {
      this.httpError(err, ui.cloneStatus);
    } finally {
      ui.upload.value = '';
    }
  }
}
