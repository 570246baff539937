// The seed-004 Node.js client, unchanged except that the URL and the tokens come from the
// command line and playAudio() counts samples. Prints {"samples": N} after 3 s without data.
// Usage: node seed_node_client.js ws://127.0.0.1:PORT/ws/stream "Some text."
const WebSocket = require('ws');

const url = process.argv[2];
const tokens = process.argv[3].split(/(?<= )/);
let total = 0;
let idle = null;
function playAudio(samples) {
  total += samples.length;
  for (const s of samples) { if (!Number.isFinite(s)) { throw new Error('non-finite sample'); } }
  clearTimeout(idle);
  idle = setTimeout(() => { console.log(JSON.stringify({ samples: total })); process.exit(0); }, 3000);
}

async function streamTTS(tokens) {
  const ws = new WebSocket(url);
  ws.on('open', () => {
    // Send tokens
    for (const token of tokens) {
      ws.send(JSON.stringify({ token: token, pitch_shift: 0 }));
    }
    // Flush
    ws.send(JSON.stringify({ flush: true }));
  });
  ws.on('message', (data) => {
    // data is Buffer containing PCM float32 audio
    const samples = new Float32Array(
      data.buffer,
      data.byteOffset,
      data.length / 4
    );
    // Play audio...
    playAudio(samples);
  });
}

streamTTS(tokens);
setTimeout(() => { console.error('no audio within 60 s'); process.exit(1); }, 60000);
