// A worker that scales its own service on the length of a queue, through the instance API (docs/instance-api.md):
// plain `fetch` against the documented HTTP routes, so the same is a few lines in any language.
//
// Every instance pops jobs from the queue (examples/worker/queue.mjs) and "works" JOB_MS on each. Instance 0 alone
// decides the count, so two instances never argue about it: every POLL_MS it reads the queue's length and asks for
//   count = clamp(ceil(length / PER_INSTANCE), min, max)        (min, max: the operator's scale bounds)
// at once when that is more instances than now, and only after DOWN_AFTER_MS of wanting fewer when it is fewer, then
// the most it wanted during that time (hysteresis, as Kubernetes' autoscaler's stabilization window: a queue that
// empties for a moment does not stop workers it needs again a second later, and it steps down, 4 -> 3 -> 2 -> 1).
//
// The platform's side: BACKPLANE_API and BACKPLANE_TOKEN are set by the agent in every instance's environment.
//   GET  /v1/self    -> {allocId, service, index, scale: {min, max} | null, ...}
//   GET  /v1/peers   -> {peers: [...]}: the service's healthy instances
//   POST /v1/scale   {count, reason} -> 202 {accepted: true, count} | 403/422 {accepted: false, reason}
//   GET  /v1/events  Server-Sent Events; `stopping` {inMs, reason} comes before the agent stops this instance
// Its own HTTP port (PORT_HTTP): GET /health, GET /status, and GET /ask?count=N (asks the platform for N instances
// and answers with what the platform said: how a refusal looks).
import { createServer } from 'node:http';

const env = (name, fallback) => process.env[name] ?? fallback;
const API = env('BACKPLANE_API');
const TOKEN = env('BACKPLANE_TOKEN');
const QUEUE = env('QUEUE_URL', 'http://127.0.0.1:24650');
const ME = env('INSTANCE_ID', 'worker');
const INDEX = Number(env('INSTANCE_INDEX', '0'));
const JOB_MS = Number(env('JOB_MS', '1000'));
const PER_INSTANCE = Number(env('PER_INSTANCE', '10'));
const POLL_MS = Number(env('POLL_MS', '1000'));
const DOWN_AFTER_MS = Number(env('DOWN_AFTER_MS', '5000'));
const RESYNC_MS = 20_000;

const log = (msg) => console.log(`${new Date().toISOString()} ${ME}: ${msg}`);
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
if (API === undefined || TOKEN === undefined) log('no BACKPLANE_API/BACKPLANE_TOKEN: working, but not scaling');

/** One call of the instance API: {status, body}. */
async function api(method, path, body) {
  const res = await fetch(`${API}${path}`, {
    method,
    headers: { authorization: `Bearer ${TOKEN}`, ...(body === undefined ? {} : { 'content-type': 'application/json' }) },
    ...(body === undefined ? {} : { body: JSON.stringify(body) }),
    signal: AbortSignal.timeout(5000),
  });
  const text = await res.text();
  return { status: res.status, body: text === '' ? null : JSON.parse(text) };
}

async function queue(method, path, body) {
  const res = await fetch(`${QUEUE}${path}`, { method, ...(body === undefined ? {} : { body: JSON.stringify(body) }), signal: AbortSignal.timeout(5000) });
  const text = await res.text();
  return { status: res.status, body: text === '' ? null : JSON.parse(text) };
}

const state = { processed: 0, stopping: false, working: false, exitWhenIdle: false, count: undefined, asked: undefined, lastAnswer: undefined };

// ---- work: every instance ------------------------------------------------------------------------------------------
async function work() {
  while (!state.stopping) {
    try {
      // Busy from the pop on: a job the queue handed out is finished before this instance exits.
      state.working = true;
      const r = await queue('POST', '/pop');
      if (r.status !== 200) {
        await sleep(300);
        continue;
      }
      await sleep(JOB_MS);
      await queue('POST', '/done', { id: r.body.id, by: ME });
      state.processed++;
    } catch (err) {
      log(`queue: ${err.message}`);
      await sleep(1000);
    } finally {
      state.working = false;
    }
  }
  log(`stopping: took no more jobs (${state.processed} done)`);
  if (state.exitWhenIdle) process.exit(0);
}

// ---- scale: instance 0 decides -------------------------------------------------------------------------------------
async function decide() {
  const self = await api('GET', '/v1/self');
  const bounds = self.body?.scale;
  if (self.status !== 200 || bounds === null || bounds === undefined) {
    log(`not scaling: ${self.status === 200 ? 'the operator set no scale bounds' : `GET /v1/self answered ${self.status}`}`);
    return;
  }
  log(`deciding the count of ${self.body.service} within ${bounds.min}..${bounds.max}, ${PER_INSTANCE} jobs per instance`);
  let belowSince;
  let differsSince;
  /** What it wanted, with when, over the last DOWN_AFTER_MS. */
  let wants = [];
  while (!state.stopping) {
    await sleep(POLL_MS);
    try {
      const { length } = (await queue('GET', '/length')).body;
      const peers = (await api('GET', '/v1/peers')).body.peers.length;
      // What runs now: what was last granted, or (at start, or when someone else changed it) the healthy peers.
      if (state.count === undefined) state.count = Math.max(bounds.min, peers);
      if (peers !== state.count) differsSince ??= Date.now();
      else differsSince = undefined;
      if (differsSince !== undefined && Date.now() - differsSince > RESYNC_MS) {
        log(`${peers} instances run, not ${state.count}: the count was changed elsewhere (a deploy?); following it`);
        state.count = Math.min(bounds.max, Math.max(bounds.min, peers));
        differsSince = undefined;
      }
      const now = Date.now();
      const want = Math.min(bounds.max, Math.max(bounds.min, Math.ceil(length / PER_INSTANCE)));
      wants = [...wants.filter((w) => now - w.at < DOWN_AFTER_MS), { at: now, want }];
      // Fewer is judged only once what was asked for runs: new instances still starting are not yet working.
      if (want >= state.count || peers < state.count) belowSince = undefined;
      else belowSince ??= now;
      const down = belowSince !== undefined && now - belowSince >= DOWN_AFTER_MS;
      if (want <= state.count && !down) continue;
      // Up: what it wants now. Down: the most it wanted in the window, which is still fewer than now.
      const count = want > state.count ? want : Math.max(...wants.map((w) => w.want));
      const reason = `queue length ${length}`;
      const r = await api('POST', '/v1/scale', { count, reason });
      state.lastAnswer = r.body;
      if (r.status === 202) {
        log(`asked for ${count} instance${count === 1 ? "" : "s"} (${reason}): accepted`);
        state.count = count;
        state.asked = count;
        // A step down starts a new window: the next one comes DOWN_AFTER_MS later at the earliest.
        belowSince = count > want ? now : undefined;
        wants = [];
      } else log(`asked for ${count} instances (${reason}): ${r.status} ${r.body?.reason ?? ''}`);
    } catch (err) {
      log(`scale: ${err.message}`);
    }
  }
}

// ---- callbacks from the platform -----------------------------------------------------------------------------------
async function events() {
  while (!state.stopping) {
    try {
      const res = await fetch(`${API}/v1/events`, { headers: { authorization: `Bearer ${TOKEN}`, accept: 'text/event-stream' } });
      if (res.status === 404) return;
      let buf = '';
      for await (const chunk of res.body.pipeThrough(new TextDecoderStream())) {
        buf += chunk;
        let end;
        while ((end = buf.indexOf('\n\n')) >= 0) {
          const frame = buf.slice(0, end);
          buf = buf.slice(end + 2);
          const event = /^event: ?(.*)$/m.exec(frame)?.[1];
          const data = frame.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trimStart()).join('\n');
          if (event === 'stopping') {
            log(`the platform stops this instance in ${JSON.parse(data).inMs} ms: finishing the current job`);
            state.stopping = true;
          }
        }
      }
    } catch {
      // The agent restarted, or the stream broke: connect again.
    }
    await sleep(1000);
  }
}

// ---- this instance's own port ----------------------------------------------------------------------------------------
createServer(async (req, res) => {
  const url = new URL(req.url ?? '/', 'http://x');
  const json = (status, v) => {
    res.writeHead(status, { 'content-type': 'application/json' });
    res.end(`${JSON.stringify(v)}\n`);
  };
  try {
    if (url.pathname === '/health') return res.end('ok\n');
    if (url.pathname === '/status') return json(200, { instance: ME, index: INDEX, ...state });
    if (url.pathname === '/ask') {
      const r = await api('POST', '/v1/scale', { count: Number(url.searchParams.get('count')), reason: url.searchParams.get('reason') ?? 'asked by hand' });
      log(`asked by hand for ${url.searchParams.get('count')}: ${r.status} ${JSON.stringify(r.body)}`);
      return json(200, { status: r.status, ...r.body });
    }
    json(404, { error: 'routes: /health, /status, /ask?count=N' });
  } catch (err) {
    json(500, { error: err.message });
  }
}).listen(Number(env('PORT_HTTP', '0')), '127.0.0.1');

// Stopped (a scale-down, a rollout): finish the job in hand, take no more, then exit (within run.stopTimeout).
process.on('SIGTERM', () => {
  state.exitWhenIdle = true;
  if (state.stopping && !state.working) process.exit(0);
  state.stopping = true;
  if (!state.working) process.exit(0);
});
log(`up: instance ${INDEX}, queue ${QUEUE}, ${JOB_MS} ms a job`);
if (API !== undefined && TOKEN !== undefined) {
  void events();
  if (INDEX === 0) void decide().catch((err) => log(`scale: ${err.message}`));
}
void work();
