// AudioWorklet ring-buffer player for /ws/stream audio: 48 kHz float32 mono frames in,
// gapless output at the AudioContext's rate (linear interpolation when it is not 48 kHz).
//
// Messages in (port): {type: "pcm", buffer: ArrayBuffer of float32}, {type: "start"} (a new
// utterance begins: the next sample played starts it), {type: "end"} (no more audio for this
// utterance: running dry is the end, not an underrun), {type: "clear"} (Stop: drop everything
// buffered, silent from the next render quantum).
// Messages out: {type: "state", ...} every few render quanta and right after "clear".

const SOURCE_RATE = 48000;
// A sample counts as non-silent above -60 dBFS.
const SILENCE = 1e-3;
// Render quanta between state reports (128 frames each: about 21 ms at 48 kHz).
const REPORT_EVERY = 8;
const SCOPE_POINTS = 512;

class RingPlayer extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    this.ring = new Float32Array(Math.round(SOURCE_RATE * (opts.bufferSeconds || 120)));
    this.preroll = Math.round(SOURCE_RATE * (opts.prerollMs ?? 50) / 1000);
    this.step = SOURCE_RATE / sampleRate;  // source samples per output sample
    this.read = 0;   // index of the next source sample
    this.fill = 0;   // source samples buffered
    this.frac = 0;   // position between ring[read] and ring[read + 1] when resampling
    this.playing = false;
    this.ending = false;
    this.starved = false;
    this.stats = {played: 0, nonSilent: 0, underruns: 0, underrunSamples: 0, overflowSamples: 0, received: 0, clears: 0};
    this.level = 0;
    this.scope = new Float32Array(SCOPE_POINTS);
    this.scopeAt = 0;
    this.blocks = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(message) {
    switch (message.type) {
      case "pcm": this.push(new Float32Array(message.buffer)); break;
      case "start": this.ending = false; this.starved = false; break;
      case "end": this.ending = true; break;
      case "clear":
        this.read = 0; this.fill = 0; this.frac = 0;
        this.playing = false; this.ending = false; this.starved = false;
        this.level = 0; this.scope.fill(0);
        this.stats.clears += 1;
        this.report();
        break;
    }
  }

  push(samples) {
    const capacity = this.ring.length;
    let count = samples.length;
    if (count > capacity - this.fill) {  // never overwrite unplayed audio: drop the excess, counted
      this.stats.overflowSamples += count - (capacity - this.fill);
      count = capacity - this.fill;
    }
    let write = (this.read + this.fill) % capacity;
    const first = Math.min(count, capacity - write);
    this.ring.set(samples.subarray(0, first), write);
    this.ring.set(samples.subarray(first, count), 0);
    this.fill += count;
    this.stats.received += count;
  }

  take(out) {  // fills out[0..n) from the ring; returns n
    const ring = this.ring, capacity = ring.length;
    let n = 0;
    if (this.step === 1) {
      n = Math.min(out.length, this.fill);
      const first = Math.min(n, capacity - this.read);
      out.set(ring.subarray(this.read, this.read + first), 0);
      out.set(ring.subarray(0, n - first), first);
      this.read = (this.read + n) % capacity;
      this.fill -= n;
      return n;
    }
    while (n < out.length && this.fill >= 2) {
      const a = ring[this.read], b = ring[(this.read + 1) % capacity];
      out[n++] = a + (b - a) * this.frac;
      this.frac += this.step;
      const whole = Math.floor(this.frac);
      this.frac -= whole;
      const advance = Math.min(whole, this.fill);
      this.read = (this.read + advance) % capacity;
      this.fill -= advance;
    }
    if (this.ending && this.fill < 2) { this.read = (this.read + this.fill) % capacity; this.fill = 0; }
    return n;
  }

  process(inputs, outputs) {
    const channels = outputs[0];
    const out = channels[0];
    if (!this.playing && this.fill > 0 && (this.fill >= this.preroll || this.ending)) this.playing = true;
    let n = 0;
    if (this.playing) {
      n = this.take(out);
      if (n < out.length) {
        if (this.ending && this.fill === 0) {
          this.playing = false;  // the utterance is over
        } else {
          if (!this.starved) this.stats.underruns += 1;
          this.starved = true;
          this.stats.underrunSamples += out.length - n;
        }
      } else {
        this.starved = false;
      }
    }
    out.fill(0, n);
    for (let c = 1; c < channels.length; c++) channels[c].set(out);
    let squares = 0;
    for (let i = 0; i < n; i++) {
      const x = out[i];
      squares += x * x;
      if (x > SILENCE || x < -SILENCE) this.stats.nonSilent += 1;
    }
    this.stats.played += n;
    const rms = Math.sqrt(squares / out.length);
    this.level = Math.max(rms, this.level * 0.9);  // fast attack, slow release
    const stride = Math.max(1, Math.floor(out.length / 16));
    for (let i = 0; i < out.length; i += stride) {
      this.scope[this.scopeAt] = out[i];
      this.scopeAt = (this.scopeAt + 1) % SCOPE_POINTS;
    }
    if (++this.blocks % REPORT_EVERY === 0) this.report();
    return true;
  }

  report() {
    const scope = new Float32Array(SCOPE_POINTS);
    scope.set(this.scope.subarray(this.scopeAt), 0);
    scope.set(this.scope.subarray(0, this.scopeAt), SCOPE_POINTS - this.scopeAt);
    this.port.postMessage({
      type: "state",
      ...this.stats,
      fill: this.fill,
      playing: this.playing,
      starved: this.starved,
      level: this.level,
      outputRate: sampleRate,
      scope,
    }, [scope.buffer]);
  }
}

registerProcessor("ring-player", RingPlayer);
