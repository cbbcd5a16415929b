// The talk-back panel: one utterance at a time (a new Speak cuts the old one),
// its figures, Stop (barge-in) and the WAV download.
//
// Two outputs, by transport: over the WebSocket, `audio` messages feed the
// Player (worklet jitter buffer), as PCM or as Ogg/Opus pages decoded by
// WebCodecs (opus.js); over WebRTC the speech plays on the call's track
// (RtcOutput). Both report audible / underrun / drained the same way.

import { base64ToBytes, bytesToInt16, newId } from './protocol.js';
import { OggOpusStream } from './opus.js';
import { SOURCE_RATE } from './player.js';
import { showFigures, wavBlob } from './figures.js';
import { debug, log, notice, setStatus, ui } from './page.js';

export class Talk {
  /**
   * @param {object} deps
   * @param {import('./transport.js').Link} deps.link
   * @param {import('./player.js').Player} deps.player
   * @param {import('./rtc-output.js').RtcOutput} deps.rtcOut
   * @param {import('./figures.js').Waveform} deps.waveform
   * @param {() => object|null} deps.currentVoice
   */
  constructor({ link, player, rtcOut, waveform, currentVoice }) {
    Object.assign(this, { link, player, rtcOut, waveform, currentVoice });
    /** The utterance being spoken. */
    this.utter = null;
    waveform.idle = () => !this.utter || this.utter.finished;

    link.on('audio', (msg) => this.#onAudio(msg));
    link.on('done', (msg) => this.#onDone(msg));
    link.on('closed', () => {
      if (this.live) this.#cut('The connection dropped; the utterance was cut.', 'error');
    });
    for (const out of [player, rtcOut]) {
      out.on('audible', (msg) => this.#onAudible(msg));
      out.on('underrun', (msg) => {
        if (this.utter && msg.id === this.utter.id) {
          this.utter.underruns = msg.count;
          this.#figures();
        }
      });
      out.on('drained', (msg) => {
        if (this.utter && msg.id === this.utter.id) this.#finish(this.utter.done ? 'Done.' : 'Played everything received.', 'ok');
      });
    }

    ui.speak.addEventListener('click', () => this.speak());
    ui.stop.addEventListener('click', () => this.stop());
    ui.download.addEventListener('click', () => this.#download());
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Enter' && (e.ctrlKey || e.metaKey) && !ui.tokenForm.contains(e.target)) {
        e.preventDefault();
        this.speak();
      } else if (e.key === 'Escape' && this.live) {
        this.stop();
      }
    });
  }

  get live() {
    return !!this.utter && !this.utter.finished;
  }

  get rtc() {
    return this.link.transport === 'webrtc';
  }

  /** The output for the transport in use. */
  get output() {
    return this.rtc ? this.rtcOut : this.player;
  }

  /** Audio is locked until a gesture: make the context (and worklet) now, from one. */
  unlock() {
    try {
      const ready = this.player.unlock();
      ready.catch((err) => notice('audio', `Audio playback is not available: ${err.message}`));
      if (this.rtc) this.rtcOut.useContext(this.player.ctx);
      return true;
    } catch (err) {
      notice('audio', `Audio playback is not available: ${err.message}`);
      return false;
    }
  }

  speak() {
    const t0 = performance.now(); // TTFA as heard counts from here
    const { link } = this;
    if (!link.isReady) return setStatus(ui.talkStatus, 'Not connected to the server yet.', 'error');
    const text = ui.text.value.trim();
    if (!text) return setStatus(ui.talkStatus, 'Type something to say first.', 'error');
    const max = link.info?.limits?.max_text_chars;
    if (max && text.length > max) return setStatus(ui.talkStatus, `The text is too long: at most ${max} characters.`, 'error');
    const voice = this.currentVoice();
    if (!voice) return setStatus(ui.talkStatus, 'Describe a voice in “Design a voice”, or pick a saved one.', 'error');

    if (this.live) this.stop('Replaced by a new utterance.');
    if (!this.unlock()) return;

    const id = newId('u');
    const rtc = this.rtc;
    // Over WebRTC there are no chunks to count or keep: those figures are n/a (null).
    const fig = { chunks: rtc ? null : 0, underruns: 0, firstChunk: rtc ? null : undefined, bytesIn: rtc ? null : 0 };
    const u = { id, t0, rtc, chunks: 0, pcm: [], rate: SOURCE_RATE, bytes: 0, opus: null, underruns: 0, fig, finished: false };
    this.utter = u;
    debug.utterances.push(u);
    const out = this.output;
    out.begin(id);
    this.waveform.clear();
    if (rtc) this.waveform.run(this.rtcOut.heard);
    else this.player.ready.then(() => this.waveform.run(this.player.analyser)).catch(() => {});
    const language = ui.language.value || 'auto';

    if (ui.streamDemo.checked) {
      // Input streaming demo: open the utterance with the first word and feed
      // the rest as if it were being typed or produced by a language model.
      const words = text.match(/\S+\s*/g);
      link.send({ type: 'speak', id, text: words[0], voice, language, final: false });
      let i = 1;
      u.feeder = setInterval(() => {
        if (!link.isReady) return clearInterval(u.feeder);
        if (i < words.length) {
          link.send({ type: 'text', id, text: words[i++] });
          setStatus(ui.talkStatus, `Streaming text in: ${i}/${words.length} words…`);
        } else {
          clearInterval(u.feeder);
          link.send({ type: 'end', id });
        }
      }, 120);
    } else {
      link.send({ type: 'speak', id, text, voice, language, final: true });
    }
    log('speak', { id, transport: link.transport });
    ui.stop.disabled = false;
    ui.download.disabled = true;
    showFigures(ui.figures, fig);
    setStatus(ui.talkStatus, 'Generating…');
  }

  /** Barge-in: silence the output at once and tell the server to stop. */
  stop(message = 'Stopped.') {
    const u = this.utter;
    if (!this.live) return;
    clearInterval(u.feeder);
    u.opus?.close();
    this.output.stop();
    if (!u.done && this.link.isReady) this.link.send({ type: 'cancel', id: u.id });
    u.cancelled = true;
    // Over WebRTC nothing counts the audio: what was heard until Stop is the figure.
    if (u.rtc && u.fig.ttfaHeard !== undefined) u.heardMs = performance.now() - u.t0 - u.fig.ttfaHeard;
    log('cancel', { id: u.id });
    this.#finish(message);
  }

  /** The utterance is lost (connection dropped, server error): silence it. */
  #cut(message, kind) {
    this.utter.opus?.close();
    (this.utter.rtc ? this.rtcOut : this.player).stop();
    this.utter.done = true;
    this.#finish(message, kind);
  }

  #finish(message, kind = '') {
    const u = this.utter;
    if (!u || u.finished) return;
    u.finished = true;
    clearInterval(u.feeder);
    ui.stop.disabled = true;
    ui.download.disabled = u.pcm.length === 0;
    setStatus(ui.talkStatus, message, kind);
    this.#figures();
  }

  #figures() {
    const u = this.utter;
    if (!u) return;
    const f = u.fig;
    if (!u.rtc) Object.assign(f, { chunks: u.chunks, bytesIn: u.bytes });
    f.underruns = u.underruns;
    // The server's figure once it is done; until then (or when cut) what arrived.
    const received = u.rtc ? u.heardMs : (u.pcm.reduce((n, c) => n + c.length, 0) * 1000) / u.rate;
    f.audioMs = u.done && !u.cancelled && u.serverAudioMs != null ? u.serverAudioMs : received || undefined;
    showFigures(ui.figures, f);
  }

  #onAudio(msg) {
    log('audio', { id: msg.id, seq: msg.seq });
    const u = this.utter;
    if (!u || msg.id !== u.id || u.cancelled) return; // late audio of a cut utterance
    const bytes = base64ToBytes(msg.data);
    if (u.chunks === 0) u.fig.firstChunk = performance.now() - u.t0;
    u.chunks++;
    u.bytes += bytes.length;
    const format = this.link.info?.format;
    if (format === 'opus') {
      // The first message of an utterance starts its Ogg stream (the headers).
      u.opus ||= new OggOpusStream(
        (samples, rate) => this.#decoded(u, samples, rate),
        (err) => this.utter === u && this.#cut(`The Opus audio could not be decoded: ${err.message}`, 'error'),
      );
      u.opus.push(bytes);
    } else {
      const pcm = format === 'pcm_f32le' ? floatToInt16(bytes) : bytesToInt16(bytes);
      u.pcm.push(pcm);
      this.player.push(pcm);
    }
    this.#figures();
  }

  /** Samples the Opus decoder made for `u` (it calls back after the message that carried them). */
  #decoded(u, samples, rate) {
    if (this.utter !== u || u.cancelled) return;
    u.rate = rate;
    u.pcm.push(floatSamplesToInt16(samples));
    this.player.pushFloat(samples, rate);
    this.#figures();
  }

  #onDone(msg) {
    log('done', { id: msg.id, cancelled: !!msg.cancelled });
    const u = this.utter;
    if (!u || msg.id !== u.id) return;
    u.done = true;
    u.serverAudioMs = msg.audio_ms;
    Object.assign(u.fig, { serverTtfa: msg.ttfa_ms ?? undefined, rtf: msg.rtf ?? undefined });
    const out = u.rtc ? this.rtcOut : this.player;
    if (msg.cancelled) {
      out.stop();
      this.#finish('Stopped.');
    } else if (u.opus) {
      // The decoder may still hold the last pages: play out once it has given them.
      u.opus.flush().then(() => this.utter === u && !u.cancelled && out.end());
    } else {
      // Play out what is queued (WebSocket) or still in the browser's jitter
      // buffer (WebRTC: `done` follows the last frame sent); 'drained' finishes.
      out.end();
    }
    this.#figures();
  }

  #onAudible(msg) {
    const u = this.utter;
    if (!u || msg.id !== u.id) return;
    u.fig.ttfaHeard = msg.heardAt - u.t0;
    log('audible', { id: msg.id, ttfaHeard: u.fig.ttfaHeard });
    if (!u.finished) setStatus(ui.talkStatus, 'Speaking…');
    this.#figures();
  }

  /** A server error about the current utterance; true if it was one. */
  error(msg, text) {
    if (!msg.id || !this.utter || msg.id !== this.utter.id) return false;
    this.#cut(`Server error: ${text}`, 'error');
    return true;
  }

  #download() {
    const u = this.utter;
    if (!u?.pcm.length) return;
    const a = document.createElement('a');
    a.href = URL.createObjectURL(wavBlob(u.pcm, u.rate));
    a.download = `minestream-${u.id}.wav`;
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
}

function floatToInt16(bytes) {
  return floatSamplesToInt16(new Float32Array(bytes.slice().buffer));
}

function floatSamplesToInt16(f) {
  const out = new Int16Array(f.length);
  for (let i = 0; i < f.length; i++) out[i] = Math.max(-32768, Math.min(32767, Math.round(f[i] * 32767)));
  return out;
}
