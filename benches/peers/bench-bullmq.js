// BullMQ throughput: enqueue N no-op jobs with addBulk (batches of 1000) while one worker drains
// them at concurrency C; then idle pickup: one job at a time into an idle queue.
// Usage: node bench-bullmq.js N C   (Redis on 127.0.0.1:6379, or REDIS_URL)
const { Queue, Worker } = require('bullmq');
process.on('uncaughtException', e => { console.error(e.message); process.exit(1); });
process.on('unhandledRejection', e => { console.error(String(e)); process.exit(1); });
const N = +(process.argv[2] || 20000), C = +(process.argv[3] || 5);
const url = new URL(process.env.REDIS_URL || 'redis://127.0.0.1:6379');
if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) { console.error('loopback only'); process.exit(1); }
const connection = { host: url.hostname.replace(/^\[|\]$/g, ''), port: +(url.port || 6379) };
const pct = (xs, p) => xs[Math.round((xs.length - 1) * p)];
(async () => {
  const name = 'bench_' + process.pid;
  const q = new Queue(name, { connection });
  let done = 0, onDone = null, started = 0, onStart = null;
  const w = new Worker(name, async () => { started++; if (onStart) onStart(); return 1; }, { connection, concurrency: C });
  w.on('error', e => { console.error(e.message); process.exit(1); });
  w.on('completed', () => { done++; if (onDone) onDone(); });
  await w.waitUntilReady();
  const until = n => new Promise(res => { onDone = () => { if (done >= n) { onDone = null; res(); } }; onDone(); });
  const untilStarted = n => new Promise(res => { onStart = () => { if (started >= n) { onStart = null; res(); } }; onStart(); });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i += 1000) {
    await q.addBulk(Array.from({ length: Math.min(1000, N - i) }, (_, k) => ({
      name: 'job', data: { i: i + k, to: '263781564004', body: 'Hello' },
      opts: { attempts: 3, backoff: { type: 'exponential', delay: 1000 } } })));
  }
  await until(N);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ peer: 'bullmq', bench: 'throughput', jobs: N, concurrency: C, seconds: +s.toFixed(3), jobs_per_s: Math.round(N / s) }));
  const idle = [];
  for (let i = 0; i < 200; i++) {
    await new Promise(r => setTimeout(r, 5));
    const t = process.hrtime.bigint();
    const d0 = done;
    const wait = untilStarted(started + 1);
    await q.add('idle', { i }, { attempts: 3 });
    await wait;
    await until(d0 + 1);
    idle.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  idle.sort((a, b) => a - b);
  console.log(JSON.stringify({ peer: 'bullmq', bench: 'idle_pickup', samples: idle.length, add_to_handler_ms_p50: +pct(idle, 0.5).toFixed(2), add_to_handler_ms_p99: +pct(idle, 0.99).toFixed(2) }));
  await w.close(); await q.obliterate({ force: true }); await q.close(); process.exit(0);
})();
