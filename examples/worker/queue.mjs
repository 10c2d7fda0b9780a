// A tiny in-memory job queue over HTTP, for the self-scaling worker example (examples/worker/README.md).
// No packages: plain Node. One instance; its jobs live only in its memory.
//
//   POST /push   body: a number N (push N jobs) or any text (one job with that text)  -> {length}
//   POST /pop    -> 200 {id, job} or 204 when empty
//   POST /done   body: {id, by}  -> 204
//   GET  /length -> {length, inFlight, done, byWorker}
//   GET  /health -> ok
import { createServer } from 'node:http';

const port = Number(process.env.PORT_HTTP);
const jobs = [];
const inFlight = new Map();
const byWorker = {};
let nextId = 1;
let done = 0;

const body = (req) =>
  new Promise((resolve, reject) => {
    let s = '';
    req.setEncoding('utf8');
    req.on('data', (d) => {
      s += d;
      if (s.length > 1 << 20) req.destroy(new Error('body too large'));
    });
    req.on('end', () => resolve(s));
    req.on('error', reject);
  });

const send = (res, status, value) => {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(value === undefined ? '' : `${JSON.stringify(value)}\n`);
};

createServer(async (req, res) => {
  try {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    if (req.method === 'GET' && path === '/health') return res.end('ok\n');
    if (req.method === 'GET' && path === '/length') return send(res, 200, { length: jobs.length, inFlight: inFlight.size, done, byWorker });
    if (req.method === 'POST' && path === '/push') {
      const text = (await body(req)).trim();
      const n = /^\d+$/.test(text) ? Math.min(Number(text), 100_000) : 1;
      for (let i = 0; i < n; i++) jobs.push({ id: nextId++, job: n === 1 && !/^\d+$/.test(text) ? text : `job ${nextId - 1}` });
      return send(res, 200, { length: jobs.length });
    }
    if (req.method === 'POST' && path === '/pop') {
      const j = jobs.shift();
      if (j === undefined) return send(res, 204);
      inFlight.set(j.id, j);
      return send(res, 200, j);
    }
    if (req.method === 'POST' && path === '/done') {
      const { id, by } = JSON.parse((await body(req)) || '{}');
      if (inFlight.delete(id)) {
        done++;
        byWorker[by] = (byWorker[by] ?? 0) + 1;
      }
      return send(res, 204);
    }
    send(res, 404, { error: `no route ${req.method} ${path}` });
  } catch (err) {
    send(res, 400, { error: String(err) });
  }
}).listen(port, () => console.log(`queue: listening on ${port}`));

for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
