// The seed's api-server read endpoint, as it would serve it: Express + pg,
// `SELECT * FROM message_templates WHERE … ORDER BY name` and res.json.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/smartbot_bench_read PORT=4101 node server.js
const express = require('express');
const { Pool } = require('pg');

const pool = new Pool({
  connectionString: process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/smartbot_bench_read',
  max: Number(process.env.PG_POOL || 10),
});
const app = express();
app.use(express.json());

app.get('/health', (_req, res) => res.json({ status: 'ok' }));

app.get('/api/templates', async (req, res) => {
  try {
    const where = [];
    const params = [];
    for (const key of ['type', 'status']) {
      if (req.query[key]) {
        params.push(String(req.query[key]).toLowerCase());
        where.push(`${key === 'type' ? '"type"' : 'status'} = $${params.length}`);
      }
    }
    if (req.query.search) {
      params.push(`%${String(req.query.search).toLowerCase()}%`);
      where.push(`(lower(name) LIKE $${params.length} OR lower(body) LIKE $${params.length})`);
    }
    const sql = `SELECT * FROM message_templates${where.length ? ' WHERE ' + where.join(' AND ') : ''} ORDER BY name`;
    const { rows } = await pool.query(sql, params);
    res.json({ success: true, count: rows.length, templates: rows });
  } catch (err) {
    res.status(500).json({ success: false, error: err.message });
  }
});

const port = Number(process.env.PORT || 4101);
app.listen(port, '127.0.0.1', () => console.log(`express peer on http://127.0.0.1:${port}`));
