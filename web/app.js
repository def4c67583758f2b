// Live captions in the browser: microphone -> AudioWorklet (16 kHz) -> pcm_s16le frames over
// ws://HOST/ws (protocol in README) -> partials in grey (words still changing lighter), finals appended.
'use strict';
const $ = (id) => document.getElementById(id);
const state = { ws: null, context: null, stream: null, node: null, sent: 0, sentAt: [], finals: [],
                partials: 0, done: false, latencies: [], errors: [] };
window.liveState = state;  // read by tests

function socketUrl() {
  const token = new URLSearchParams(location.search).get('token');
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws` + (token ? `?token=${encodeURIComponent(token)}` : '');
}

function toPcm16(block) {
  const pcm = new Int16Array(block.length);
  for (let i = 0; i < block.length; i++) {
    const x = Math.max(-1, Math.min(1, block[i]));
    pcm[i] = x < 0 ? x * 32768 : x * 32767;
  }
  return pcm.buffer;
}

function sentTime(endSeconds) {  // when the sample at endSeconds went out
  const sample = endSeconds * 16000;
  for (const [count, when] of state.sentAt) if (count >= sample) return when;
  return performance.now();
}

function stamp(seconds) {
  const m = Math.floor(seconds / 60), s = (seconds % 60).toFixed(1).padStart(4, '0');
  return `${m}:${s}`;
}

function onMessage(event) {
  const message = JSON.parse(event.data);
  if (message.type === 'ready') {
    $('status').textContent = `streaming (session ${message.session})`;
  } else if (message.type === 'partial') {
    state.partials += 1;
    $('partial').textContent = message.text;
    $('unstable').textContent = message.unstable || '';
  } else if (message.type === 'final') {
    $('partial').textContent = '';
    $('unstable').textContent = '';
    if (!message.text) return;
    state.finals.push(message);
    $('finals').textContent = state.finals.map((f) => f.text).join(' ');
    const latency = (performance.now() - sentTime(message.end)) / 1000;
    state.latencies.push(latency);
    $('latency').textContent = `latency: ${latency.toFixed(2)} s (end of speech to caption), lag ${message.lag.toFixed(1)} s`;
    $('download').disabled = false;
  } else if (message.type === 'error') {
    state.errors.push(message);
    $('status').innerHTML = `<span class="error">error ${message.code}: ${message.message}</span>`;
  } else if (message.type === 'done') {
    state.done = true;
    $('status').textContent = `done: ${state.finals.length} captions`;
  }
}

async function start() {
  $('start').disabled = true;
  state.done = false; state.sent = 0; state.sentAt = [];
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1,
      echoCancellation: false, noiseSuppression: false, autoGainControl: false } });
  } catch (error) {
    $('status').innerHTML = `<span class="error">no microphone: ${error.message}</span>`;
    $('start').disabled = false;
    return;
  }
  state.context = new AudioContext();
  await state.context.audioWorklet.addModule('capture-worklet.js');
  const ws = new WebSocket(socketUrl());
  ws.binaryType = 'arraybuffer';
  ws.onmessage = onMessage;
  ws.onclose = (event) => {
    if (!state.done) $('status').innerHTML = `<span class="error">closed (${event.code}) ${event.reason}</span>`;
    stopCapture();
    $('start').disabled = false; $('stop').disabled = true;
  };
  state.ws = ws;
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  ws.send(JSON.stringify({ type: 'start', sample_rate: 16000, format: 'pcm_s16le' }));
  const source = state.context.createMediaStreamSource(state.stream);
  state.node = new AudioWorkletNode(state.context, 'capture-processor');
  state.node.port.onmessage = (event) => {
    if (ws.readyState !== WebSocket.OPEN) return;
    ws.send(toPcm16(event.data));
    state.sent += event.data.length;
    state.sentAt.push([state.sent, performance.now()]);
    if (state.sentAt.length > 3000) state.sentAt.splice(0, 1000);
  };
  source.connect(state.node);
  $('stop').disabled = false;
}

function stopCapture() {
  if (state.node) { state.node.port.onmessage = null; state.node.disconnect(); state.node = null; }
  if (state.stream) { state.stream.getTracks().forEach((t) => t.stop()); state.stream = null; }
  if (state.context) { state.context.close(); state.context = null; }
}

function stop() {
  $('stop').disabled = true;
  stopCapture();
  if (state.ws && state.ws.readyState === WebSocket.OPEN) {
    state.ws.send(JSON.stringify({ type: 'stop' }));
    $('status').textContent = 'finishing the last captions…';
  }
}

function download() {
  const lines = state.finals.map((f) => `[${stamp(f.start)} - ${stamp(f.end)}] ${f.text}`);
  const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/plain' });
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'transcript.txt';
  link.click();
  URL.revokeObjectURL(link.href);
}

$('start').addEventListener('click', start);
$('stop').addEventListener('click', stop);
$('download').addEventListener('click', download);
