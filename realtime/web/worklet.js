// AudioWorklet: microphone (any rate, any channel count) -> 16 kHz mono s16le chunks for the server.
//
// Channels are averaged, a windowed-sinc low-pass (Blackman, cutoff 7.2 kHz) removes what 16 kHz
// cannot hold, and output samples are linearly interpolated between filtered input samples at a
// step of sampleRate / 16000 (so 44.1 kHz works as well as 48 kHz). Every `chunkSamples` outputs
// one Int16Array buffer is posted (transferred) to the main thread together with the chunk's RMS.
class Downsampler extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.target = o.targetRate || 16000;
    this.chunkSamples = o.chunkSamples || 1600;
    this.ratio = sampleRate / this.target;  // input samples per output sample
    const taps = o.taps || 63;
    this.h = Downsampler.lowpass(taps, Math.min(0.5, 7200 / sampleRate));
    this.hist = new Float32Array(taps);      // last `taps` input samples, circular
    this.hpos = 0;
    this.prev = 0;                            // previous filtered sample
    this.frac = 1;                            // next output time, in input samples after `prev`
    this.out = new Int16Array(this.chunkSamples);
    this.n = 0;
    this.sumsq = 0;
    this.stopped = false;
    this.port.onmessage = (e) => { if (e.data === 'stop') this.stopped = true; };
  }

  static lowpass(taps, fc) {  // fc in cycles per input sample
    const h = new Float32Array(taps);
    const m = (taps - 1) / 2;
    let sum = 0;
    for (let i = 0; i < taps; i++) {
      const x = i - m;
      const sinc = x === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * x) / (Math.PI * x);
      const w = 0.42 - 0.5 * Math.cos(2 * Math.PI * i / (taps - 1)) + 0.08 * Math.cos(4 * Math.PI * i / (taps - 1));
      h[i] = sinc * w;
      sum += h[i];
    }
    for (let i = 0; i < taps; i++) h[i] /= sum;  // unity gain at DC
    return h;
  }

  emit(v) {
    const c = v > 1 ? 1 : v < -1 ? -1 : v;
    this.sumsq += c * c;
    this.out[this.n++] = Math.round(c * 32767);
    if (this.n === this.chunkSamples) {
      const buf = this.out.buffer;
      this.port.postMessage({pcm: buf, rms: Math.sqrt(this.sumsq / this.n)}, [buf]);
      this.out = new Int16Array(this.chunkSamples);
      this.n = 0;
      this.sumsq = 0;
    }
  }

  process(inputs) {
    if (this.stopped) return false;
    const input = inputs[0];
    if (!input || input.length === 0) return true;
    const frames = input[0].length, chans = input.length;
    const h = this.h, hist = this.hist, taps = h.length;
    for (let i = 0; i < frames; i++) {
      let s = 0;
      for (let c = 0; c < chans; c++) s += input[c][i];
      hist[this.hpos] = s / chans;
      this.hpos = (this.hpos + 1) % taps;
      let f = 0;  // FIR over the circular history, oldest first
      for (let k = 0, j = this.hpos; k < taps; k++, j = (j + 1) % taps) f += h[k] * hist[j];
      while (this.frac <= 1) {
        this.emit(this.prev + (f - this.prev) * this.frac);
        this.frac += this.ratio;
      }
      this.frac -= 1;
      this.prev = f;
    }
    return true;
  }
}

registerProcessor('downsampler', Downsampler);
