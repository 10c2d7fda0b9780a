// A tiny round-robin HTTP reverse proxy for the services walkthrough (walkthrough.sh runs it from h1's graph).
// It listens on $PORT and re-reads its upstream list ($UPSTREAMS, one host:port a line) on every request, so a
// template that follows a service's healthy instances is all the service discovery it needs.
import { readFileSync } from 'node:fs';
import http from 'node:http';

const upstreams = () => {
  try {
    return readFileSync(process.env.UPSTREAMS, 'utf8').split('\n').filter(Boolean);
  } catch {
    return [];
  }
};
let next = 0;
http
  .createServer((req, res) => {
    if (req.url === '/health') return res.end('ok\n');
    const list = upstreams();
    if (list.length === 0) {
      res.statusCode = 503;
      return res.end('no upstream\n');
    }
    const upstream = list[next++ % list.length];
    const [host, port] = upstream.split(':');
    const up = http.request({ host, port, path: req.url, method: req.method, headers: req.headers }, (r) => {
      res.writeHead(r.statusCode ?? 502, { ...r.headers, 'x-upstream': upstream });
      r.pipe(res);
    });
    up.on('error', () => {
      res.statusCode = 502;
      res.end(`upstream ${upstream} failed\n`);
    });
    req.pipe(up);
  })
  .listen(Number(process.env.PORT), '127.0.0.1');
