// Ogg/Opus as it streams in, for `hello {format: "opus"}` over the WebSocket.
//
// Each utterance is one Ogg stream (docs/protocol.md, "Compressed audio"):
// its first audio message starts with the OpusHead and OpusTags pages, and
// every message holds whole pages. OggOpusStream takes the pages apart into
// Opus packets and hands them to WebCodecs' AudioDecoder, which decodes off
// the main thread and calls back with float samples (48 kHz, whatever the
// stream's input rate). decodeAudioData is no substitute: it wants a whole
// file, and decoding message by message would restart the codec at every
// seam. Where there is no AudioDecoder (Safari before 26, older browsers),
// opusSupport() says so and the page stays on PCM.

const PACKET_US = 20000; // the server's Opus packets are 20 ms

/** Why Opus cannot be played here, or null when it can. */
export async function opusSupport() {
  if (typeof AudioDecoder !== 'function') return 'this browser has no WebCodecs AudioDecoder';
  try {
    const { supported } = await AudioDecoder.isConfigSupported({ codec: 'opus', sampleRate: 48000, numberOfChannels: 1 });
    return supported ? null : 'this browser cannot decode Opus with WebCodecs';
  } catch (err) {
    return `Opus decoding is not available (${err.message})`;
  }
}

export class OggOpusStream {
  /**
   * @param {(samples: Float32Array, rate: number) => void} onSamples decoded audio, in order
   * @param {(err: Error) => void} onError
   */
  constructor(onSamples, onError) {
    this.onSamples = onSamples;
    this.onError = onError;
    this.decoder = null;
    this.packets = 0; // packets seen, the two headers included
    this.partial = []; // pieces of a packet that continues on the next page
    this.timestamp = 0;
    this.closed = false;
  }

  /** One audio message: whole Ogg pages. */
  push(bytes) {
    if (this.closed) return;
    let offset = 0;
    while (offset < bytes.length) offset = this.#page(bytes, offset);
  }

  /** All pages are in: resolves once the last samples have been handed over. */
  async flush() {
    if (this.closed || !this.decoder) return;
    try {
      await this.decoder.flush();
    } catch (err) {
      if (!this.closed) this.onError(err);
    }
    this.close();
  }

  /** Abandon the stream (cancel, a new utterance): nothing more comes out. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this.decoder && this.decoder.state !== 'closed') this.decoder.close();
  }

  // An Ogg page (RFC 3533): 27-byte header, segment table, then the packets' bytes.
  #page(bytes, offset) {
    const view = new DataView(bytes.buffer, bytes.byteOffset + offset);
    if (view.getUint32(0, false) !== 0x4f676753) throw new Error('not an Ogg page'); // "OggS"
    const count = view.getUint8(26);
    const lacing = bytes.subarray(offset + 27, offset + 27 + count);
    let at = offset + 27 + count;
    let size = 0;
    for (const value of lacing) {
      size += value;
      if (value < 255) {
        this.#packet(bytes.subarray(at, at + size));
        at += size;
        size = 0;
      }
    }
    if (size) {
      // A packet that goes on in the next page (never from this server, but legal Ogg).
      this.partial.push(bytes.slice(at, at + size));
      at += size;
    }
    return at;
  }

  #packet(piece) {
    let data = piece;
    if (this.partial.length) {
      const parts = [...this.partial, piece];
      data = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let at = 0;
      for (const p of parts) {
        data.set(p, at);
        at += p.length;
      }
      this.partial = [];
    }
    const index = this.packets++;
    if (index === 0) return this.#configure(data); // OpusHead
    if (index === 1) return; // OpusTags
    this.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: this.timestamp, data }));
    this.timestamp += PACKET_US;
  }

  #configure(head) {
    this.decoder = new AudioDecoder({
      output: (audio) => this.#output(audio),
      error: (err) => {
        if (!this.closed) this.onError(err);
      },
    });
    // OpusHead as the description: the decoder reads the pre-skip and gain from it.
    this.decoder.configure({ codec: 'opus', sampleRate: 48000, numberOfChannels: head[9] || 1, description: head.slice() });
  }

  #output(audio) {
    try {
      if (this.closed) return;
      const samples = new Float32Array(audio.numberOfFrames);
      audio.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
      this.onSamples(samples, audio.sampleRate);
    } finally {
      audio.close();
    }
  }
}
