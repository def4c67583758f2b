// AudioWorklet: microphone blocks (the context's rate, mono) -> 16 kHz float32 blocks of ~100 ms.
// Downsampling averages the input samples that fall between two output samples (a box filter:
// enough anti-aliasing for speech), carrying the fractional position across blocks.
class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ratio = sampleRate / 16000;
    this.sum = 0; this.count = 0; this.position = 0;
    this.block = new Float32Array(1600);
    this.filled = 0;
  }
  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.sum += channel[i]; this.count += 1; this.position += 1;
        if (this.position >= this.ratio) {
          this.block[this.filled++] = this.sum / this.count;
          this.sum = 0; this.count = 0; this.position -= this.ratio;
          if (this.filled === this.block.length) {
            this.port.postMessage(this.block.slice(0));
            this.filled = 0;
          }
        }
      }
    }
    return true;
  }
}
registerProcessor('capture-processor', CaptureProcessor);
