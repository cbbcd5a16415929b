// Microphone capture for cloning: MediaRecorder in timeslices, a level meter
// and a timer. Each slice is handed to `onChunk` as soon as the browser emits
// it, so the caller can stream it to the server while the person is talking.
// (In WebRTC mode the caller sends the microphone track itself: encode: false.)

const TIMESLICE_MS = 250;

/** The container to ask MediaRecorder for: Opus in WebM (Chrome, Firefox),
 * else MP4/AAC (Safari), else whatever the browser picks by default. */
export function pickMimeType() {
  if (typeof MediaRecorder === 'undefined') return null;
  for (const type of ['audio/webm;codecs=opus', 'audio/mp4']) {
    if (MediaRecorder.isTypeSupported(type)) return type;
  }
  return '';
}

/** Why recording cannot work here, in words for a person; null when it can. */
export function microphoneProblem() {
  if (!window.isSecureContext) {
    return 'The microphone needs a secure page: open this page over https:// (or on localhost). You can still upload a recording.';
  }
  if (!navigator.mediaDevices?.getUserMedia) return 'This browser gives web pages no microphone access. You can still upload a recording.';
  if (pickMimeType() === null) return 'This browser cannot record audio (no MediaRecorder). You can still upload a recording.';
  return null;
}

/** A getUserMedia failure explained. */
export function explainMicError(err) {
  switch (err?.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone access was refused. Allow the microphone for this site (the icon next to the address) and press Record again, or upload a recording instead.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Plug one in, or upload a recording instead.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone is busy or could not be started (another app may be using it).';
    default:
      return `Could not start the microphone: ${err?.message || err}`;
  }
}

export class Recorder {
  /**
   * @param {object} cb
   * @param {(blob: Blob) => void} cb.onChunk  a timeslice of encoded audio
   * @param {(level: number) => void} cb.onLevel 0..1, about 60 times a second
   * @param {(seconds: number) => void} cb.onTick elapsed time, 10 times a second
   * @param {() => void} cb.onLimit the maximum length was reached (recording stopped)
   */
  constructor({ onChunk, onLevel, onTick, onLimit }) {
    Object.assign(this, { onChunk, onLevel, onTick, onLimit });
    this.stream = null;
    this.recorder = null;
    this.mimeType = '';
  }

  /** The microphone track while recording (null before start and after stop). */
  get track() {
    return this.stream?.getAudioTracks()[0] || null;
  }

  get recording() {
    return this.recorder?.state === 'recording';
  }

  /**
   * Ask for the microphone and start recording. Throws the getUserMedia error
   * (explain it with explainMicError).
   * @param {AudioContext|null} ctx used for the level meter, if given
   * @param {number} maxSeconds stop by itself after this long
   * @param {object} [opts]
   * @param {boolean} [opts.encode] record with MediaRecorder (onChunk); false
   *   only opens the microphone, for a caller that sends `track` itself (WebRTC)
   */
  async start(ctx, maxSeconds, { encode = true } = {}) {
    // Echo cancellation stays on (the page may be talking); noise suppression
    // is off because it smears the timbre the clone should copy.
    this.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: true, noiseSuppression: false, autoGainControl: true },
    });
    if (encode) {
      const mimeType = pickMimeType();
      this.recorder = new MediaRecorder(this.stream, mimeType ? { mimeType } : undefined);
      this.mimeType = this.recorder.mimeType || mimeType || '';
      this.recorder.ondataavailable = (e) => {
        if (e.data && e.data.size) this.onChunk(e.data);
      };
      this.stopped = new Promise((resolve) => {
        this.recorder.onstop = resolve;
      });
      this.recorder.start(TIMESLICE_MS);
    }
    this.started = performance.now();
    this.endedAt = null;
    this.#startMeter(ctx);
    this.tick = setInterval(() => {
      const s = (performance.now() - this.started) / 1000;
      this.onTick(s);
      if (s >= maxSeconds) {
        this.stop();
        this.onLimit?.();
      }
    }, 100);
  }

  #startMeter(ctx) {
    if (!ctx) return;
    try {
      this.source = ctx.createMediaStreamSource(this.stream);
      this.analyser = ctx.createAnalyser();
      this.analyser.fftSize = 1024;
      this.source.connect(this.analyser); // not to the speakers: no feedback
    } catch {
      return; // e.g. Firefox with a mic at another rate than the context: no meter
    }
    const buf = new Float32Array(this.analyser.fftSize);
    const draw = () => {
      if (!this.analyser) return;
      this.analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (const v of buf) sum += v * v;
      const rms = Math.sqrt(sum / buf.length);
      // -60..0 dBFS onto 0..1: speech shows as a lively bar, silence as none.
      const db = 20 * Math.log10(rms + 1e-9);
      this.onLevel(Math.max(0, Math.min(1, (db + 60) / 60)));
      this.raf = requestAnimationFrame(draw);
    };
    draw();
  }

  /** Stop the meter and the timer only: the track stays live (WebRTC sends its last frames). */
  pause() {
    this.endedAt ??= performance.now();
    clearInterval(this.tick);
    cancelAnimationFrame(this.raf);
    this.source?.disconnect();
    this.analyser = null;
    this.source = null;
  }

  /** Stop; resolves once the last slice has been handed to onChunk. */
  async stop() {
    this.pause();
    if (this.recorder && this.recorder.state !== 'inactive') this.recorder.stop();
    // The final dataavailable fires before stop.
    if (this.stopped) await this.stopped;
    this.stream?.getTracks().forEach((t) => t.stop());
    this.stream = null;
    this.onLevel(0);
    return (this.endedAt - this.started) / 1000;
  }
}
