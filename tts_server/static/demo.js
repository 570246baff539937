// The llm-voice demo page: streams text token by token over /ws/stream (events on) and plays
// the 48 kHz float32 frames through the "ring-player" AudioWorklet (player-worklet.js).
// No build step, no dependencies. State for tests and curious users: window.demoState.

const SOURCE_RATE = 48000;  // /ws/stream audio: float32 mono little-endian at 48 kHz
const REPLIES = [
  "Sure! Here is a short answer. Streaming speech starts talking before the reply is finished, " +
    "so the first words come out while the model is still writing the rest.",
  "Good question. The server cuts the text at sentence ends, synthesizes each piece as soon as it is " +
    "complete, and sends the audio in small frames. This page queues them in a ring buffer and plays them back to back.",
  "Of course. Press Stop at any time: the page tells the server to cancel, empties its buffer, " +
    "and goes quiet at once.",
];

const $ = (id) => document.getElementById(id);

const state = {
  status: "loading",
  apiKeyRequired: false,
  voices: [],
  wsOpen: false,
  utterances: 0,
  tokensSent: 0,
  framesReceived: 0,
  samplesReceived: 0,
  framesDiscarded: 0,
  segments: 0,
  flushed: 0,
  serverErrors: [],
  ttfaMs: null,
  rtf: null,
  contextRate: null,
  contextState: null,
  samplesPlayed: 0,
  nonSilentSamples: 0,
  nonSilentSeconds: 0,
  playedSeconds: 0,
  underruns: 0,
  underrunSamples: 0,
  overflowSamples: 0,
  bufferFill: 0,
  playing: false,
  stopped: 0,
  clears: 0,
  workletReceived: 0,
  consoleErrors: [],
};
window.demoState = state;

// Every error the page meets is kept for the tests (and shown in the status line).
const originalError = console.error.bind(console);
console.error = (...args) => {
  state.consoleErrors.push(args.map(String).join(" "));
  originalError(...args);
};
window.addEventListener("error", (event) => state.consoleErrors.push(String(event.message)));
window.addEventListener("unhandledrejection", (event) => state.consoleErrors.push(String(event.reason)));

let apiKey = null;
let context = null;
let player = null;
let socket = null;
let socketReady = null;
let typing = null;         // the timer of the token "LLM"
let discarding = false;    // after Stop, until the server's "cancelled": audio of the cancelled text
let sentAt = null;         // performance.now() of the utterance's first token
let synthMs = 0;
let audioMs = 0;

function setStatus(text) {
  state.status = text;
  $("status").textContent = text;
}

function authHeaders() {
  return apiKey ? {"X-API-Key": apiKey} : {};
}

// -- voices and the API key --------------------------------------------------------------------

async function loadVoices() {
  const response = await fetch("/voices", {headers: authHeaders(), cache: "no-store"});
  if (response.status === 401) {
    state.apiKeyRequired = true;
    $("key-form").hidden = false;
    $("key-error").textContent = apiKey ? "that key was refused" : "";
    $("api-key").focus();
    setStatus("API key needed");
    return false;
  }
  if (!response.ok) throw new Error(`GET /voices: HTTP ${response.status}`);
  const body = await response.json();
  state.voices = body.voices.map((v) => v.name);
  const select = $("voice");
  select.replaceChildren(new Option(body.default ? `server default (${body.default})` : "server default", ""));
  for (const name of state.voices) select.add(new Option(name, name));
  // Pitch shifts the RVC voice conversion; without RVC voices the server ignores it.
  $("pitch").disabled = state.voices.length === 0;
  $("pitch").title = state.voices.length ? "" : "pitch applies to RVC voices; this server has none";
  $("key-form").hidden = true;
  for (const id of ["play", "simulate"]) $(id).disabled = false;
  setStatus("ready");
  return true;
}

$("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  apiKey = $("api-key").value.trim() || null;
  loadVoices().catch(fail);
});

$("pitch").addEventListener("input", () => { $("pitch-value").textContent = $("pitch").value; });

// -- audio ------------------------------------------------------------------------------------

async function ensureAudio() {
  if (!context) {
    // ?context_rate=44100 tries another rate (to hear, or test, the worklet's resampling).
    const rate = Number(new URLSearchParams(location.search).get("context_rate")) || SOURCE_RATE;
    try {
      context = new AudioContext({sampleRate: rate, latencyHint: "interactive"});
    } catch (error) {  // a browser that refuses the rate: the worklet resamples
      console.warn(`AudioContext at ${rate} Hz refused, using the device rate:`, error);
      context = new AudioContext({latencyHint: "interactive"});
    }
    await context.audioWorklet.addModule("/demo/player-worklet.js");
    player = new AudioWorkletNode(context, "ring-player", {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
      processorOptions: {bufferSeconds: 120, prerollMs: 50},
    });
    player.port.onmessage = (event) => onPlayerState(event.data);
    player.connect(context.destination);
    state.contextRate = context.sampleRate;
  }
  if (context.state !== "running") {
    // We are inside the click's gesture. A browser without an audio output never resolves
    // this: stream anyway (the buffer fills, nothing plays) and say so.
    const waited = new Promise((resolve) => setTimeout(resolve, 2000));
    await Promise.race([context.resume(), waited]);
  }
  state.contextState = context.state;
  if (context.state !== "running") console.warn(`the AudioContext is ${context.state}: no audio output?`);
}

function onPlayerState(s) {
  state.samplesPlayed = s.played;
  state.nonSilentSamples = s.nonSilent;
  state.playedSeconds = s.played / s.outputRate;
  state.nonSilentSeconds = s.nonSilent / s.outputRate;
  state.underruns = s.underruns;
  state.underrunSamples = s.underrunSamples;
  state.overflowSamples = s.overflowSamples;
  state.bufferFill = s.fill;
  state.clears = s.clears;
  state.workletReceived = s.received;
  state.playing = s.playing;
  state.contextState = context.state;
  $("played").textContent = `${state.playedSeconds.toFixed(1)} s`;
  $("buffered").textContent = `${(s.fill / SOURCE_RATE).toFixed(2)} s`;
  $("underruns").textContent = String(s.underruns);
  const db = 20 * Math.log10(Math.max(s.level, 1e-5));
  $("level").style.width = `${Math.max(0, Math.min(100, (db + 60) / 60 * 100))}%`;
  drawScope(s.scope);
  if (!s.playing && !typing && !discarding && state.status === "speaking" && s.fill === 0 && state.flushed) {
    setStatus("done");
    $("stop").disabled = true;
  }
}

function drawScope(points) {
  const canvas = $("scope");
  const g = canvas.getContext("2d");
  const {width, height} = canvas;
  g.fillStyle = "#0d1117";
  g.fillRect(0, 0, width, height);
  g.strokeStyle = "#3fb950";
  g.lineWidth = 1.5;
  g.beginPath();
  for (let i = 0; i < points.length; i++) {
    const x = (i / (points.length - 1)) * width;
    const y = height / 2 - Math.max(-1, Math.min(1, points[i] * 2)) * (height / 2 - 4);
    if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
  }
  g.stroke();
}

// -- /ws/stream --------------------------------------------------------------------------------

function connect() {
  if (socket && socket.readyState <= WebSocket.OPEN) return socketReady;
  const url = new URL("/ws/stream", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  if (apiKey) url.searchParams.set("api_key", apiKey);  // browsers cannot set headers on a WebSocket
  socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socketReady = new Promise((resolve, reject) => {
    socket.addEventListener("open", () => {
      state.wsOpen = true;
      socket.send(JSON.stringify({events: true}));
      resolve();
    }, {once: true});
    socket.addEventListener("error", () => reject(new Error("the WebSocket to /ws/stream failed")), {once: true});
  });
  socket.addEventListener("message", onMessage);
  socket.addEventListener("close", (event) => {
    state.wsOpen = false;
    stopTyping();
    if (event.code !== 1000 && event.code !== 1005) setStatus(`connection closed (${event.code} ${event.reason})`);
  });
  return socketReady;
}

function onMessage(event) {
  if (typeof event.data !== "string") {
    if (discarding) { state.framesDiscarded += 1; return; }
    if (state.ttfaMs === null) {
      state.ttfaMs = performance.now() - sentAt;
      $("ttfa").textContent = `${state.ttfaMs.toFixed(0)} ms`;
    }
    state.framesReceived += 1;
    state.samplesReceived += event.data.byteLength / 4;
    $("received").textContent = `${(state.samplesReceived / SOURCE_RATE).toFixed(1)} s`;
    player.port.postMessage({type: "pcm", buffer: event.data}, [event.data]);
    return;
  }
  const message = JSON.parse(event.data);
  if (message.error) {
    state.serverErrors.push(message.error);
    setStatus(`server: ${message.error}`);
  } else if (message.type === "cancelled") {
    discarding = false;
  } else if (message.type === "segment" && !discarding) {
    state.segments += 1;
    synthMs += message.synth_ms;
    audioMs += message.audio_ms;
    if (audioMs > 0) {
      state.rtf = synthMs / audioMs;
      $("rtf").textContent = state.rtf.toFixed(3);
    }
    const item = document.createElement("li");
    item.textContent = `${message.text} — ${message.audio_ms.toFixed(0)} ms of audio in ${message.synth_ms.toFixed(0)} ms`;
    $("segments").append(item);
  } else if (message.type === "flushed" && !discarding) {
    state.flushed += 1;
    player.port.postMessage({type: "end"});  // running dry from here on is the end, not an underrun
  }
}

// A simple stand-in for an LLM's tokenizer: a word with its leading space, long words in pieces.
function tokens(text) {
  return text.match(/\s*[^\s]{1,6}/g) || [];
}

async function speak(text, {typeIntoBox = false} = {}) {
  stopTyping();
  const pieces = tokens(text);
  if (pieces.length === 0) { setStatus("nothing to say"); return; }
  await ensureAudio();
  await connect();
  if (state.utterances > 0) socket.send(JSON.stringify({cancel: true}));  // one utterance at a time
  discarding = state.utterances > 0;
  player.port.postMessage({type: "clear"});
  player.port.postMessage({type: "start"});
  state.utterances += 1;
  state.flushed = 0;
  state.ttfaMs = null;
  synthMs = 0;
  audioMs = 0;
  $("segments").replaceChildren();
  $("ttfa").textContent = "…";
  $("rtf").textContent = "…";
  $("stop").disabled = false;
  setStatus(context.state === "running" ? "speaking" : `speaking (audio output ${context.state})`);
  const voice = $("voice").value || null;
  const pitch = Number($("pitch").value);
  socket.send(JSON.stringify({voice}));
  if (typeIntoBox) $("text").value = "";
  const interval = 1000 / Number($("rate").value);
  let index = 0;
  sentAt = performance.now();
  const sendNext = () => {
    if (socket.readyState !== WebSocket.OPEN) { stopTyping(); return; }
    const token = pieces[index++];
    socket.send(JSON.stringify(index === 1 ? {token, pitch_shift: pitch} : {token}));
    state.tokensSent += 1;
    if (typeIntoBox) $("text").value += token;
    if (index === pieces.length) {
      socket.send(JSON.stringify({flush: true}));
      stopTyping();
    }
  };
  sendNext();
  if (index < pieces.length) typing = setInterval(sendNext, interval);
}

function stopTyping() {
  if (typing !== null) clearInterval(typing);
  typing = null;
}

function stop() {
  stopTyping();
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({cancel: true}));
    discarding = true;  // frames already on the way belong to the cancelled text
  }
  if (player) player.port.postMessage({type: "clear"});  // silent from the next render quantum
  state.stopped += 1;
  $("stop").disabled = true;
  setStatus("stopped");
}

function fail(error) {
  console.error(error);
  setStatus(`error: ${error.message || error}`);
}

let reply = 0;
$("play").addEventListener("click", () => speak($("text").value).catch(fail));
$("simulate").addEventListener("click", () => {
  speak(REPLIES[reply++ % REPLIES.length], {typeIntoBox: true}).catch(fail);
});
$("stop").addEventListener("click", stop);

drawScope(new Float32Array(2));
loadVoices().catch(fail);
