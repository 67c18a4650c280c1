// graphile-worker throughput with its documented fast settings: jobs added in batches of 1000
// with one `graphile_worker.add_jobs` call each (0.16's batch API; the JS addJobs wrapper is 0.17+), a local queue (size 500) and completeJobBatchDelay: 0; one worker
// process at concurrency C. Then idle pickup: one job at a time into an idle queue (LISTEN/NOTIFY).
// Usage: node bench-graphile.js N C   (DATABASE_URL, default postgres://postgres@127.0.0.1:5432/test)
const { run, makeWorkerUtils } = require('graphile-worker');
process.on('uncaughtException', e => { console.error(e.message); process.exit(1); });
process.on('unhandledRejection', e => { console.error(String(e)); process.exit(1); });
const N = +(process.argv[2] || 20000), C = +(process.argv[3] || 5);
const connectionString = process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/test';
if (!/@(127\.0\.0\.1|localhost|\[::1\])[:/]/.test(connectionString)) { console.error('loopback only'); process.exit(1); }
const pct = (xs, p) => xs[Math.round((xs.length - 1) * p)];
(async () => {
  const utils = await makeWorkerUtils({ connectionString });
  await utils.migrate();
  const pending = async () => (await utils.withPgClient(c => c.query('SELECT count(*)::int AS n FROM graphile_worker._private_jobs'))).rows[0].n;
  if (await pending() > 0) { console.error('graphile_worker jobs table is not empty; clear it first'); process.exit(1); }
  let done = 0, onDone = null;
  const until = n => new Promise(res => { onDone = () => { if (done >= n) { onDone = null; res(); } }; onDone(); });
  const runner = await run({
    connectionString, concurrency: C, noHandleSignals: true, pollInterval: 2000,
    logger: new (require('graphile-worker').Logger)(() => () => {}),
    preset: { worker: { localQueue: { size: 500 }, completeJobBatchDelay: 0, failJobBatchDelay: 0 } },
    taskList: { job: async () => { done++; if (onDone) onDone(); } },
  });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < N; i += 1000) {
    const specs = Array.from({ length: Math.min(1000, N - i) }, (_, k) => ({
      identifier: 'job', payload: { i: i + k, to: '263781564004', body: 'Hello' }, max_attempts: 3 }));
    await utils.withPgClient(c => c.query(
      'SELECT graphile_worker.add_jobs(ARRAY(SELECT json_populate_record(NULL::graphile_worker.job_spec, x) FROM json_array_elements($1::json) x))',
      [JSON.stringify(specs)]));
  }
  await until(N);
  // Completions are batched: the run ends when the last one is recorded.
  while (await pending() > 0) await new Promise(r => setTimeout(r, 1));
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  console.log(JSON.stringify({ peer: 'graphile-worker', bench: 'throughput', jobs: N, concurrency: C, seconds: +s.toFixed(3), jobs_per_s: Math.round(N / s) }));
  const idle = [];
  for (let i = 0; i < 200; i++) {
    await new Promise(r => setTimeout(r, 5));
    const t = process.hrtime.bigint();
    const wait = until(done + 1);
    await utils.addJob('job', { i }, { maxAttempts: 3 });
    await wait;
    idle.push(Number(process.hrtime.bigint() - t) / 1e6);
  }
  idle.sort((a, b) => a - b);
  console.log(JSON.stringify({ peer: 'graphile-worker', bench: 'idle_pickup', samples: idle.length, add_to_handler_ms_p50: +pct(idle, 0.5).toFixed(2), add_to_handler_ms_p99: +pct(idle, 0.99).toFixed(2) }));
  await runner.stop(); await utils.release(); process.exit(0);
})();
