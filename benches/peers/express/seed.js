// Seeds the read-path data set into DATABASE_URL: the same 200 rows as examples/bench_read.rs
// (keep the two in step). 50 templates of each type; 40 of the 50 BUTTONS templates are active.
//
//   DATABASE_URL=postgres://postgres@127.0.0.1:5432/smartbot_bench_read node seed.js
const { Client } = require('pg');

const KINDS = ['buttons', 'text', 'list', 'media'];

function rows() {
  const base = Date.parse('2026-01-01T00:00:00Z');
  const out = [];
  for (let i = 0; i < 200; i++) {
    const kind = KINDS[i % 4];
    const nth = Math.floor(i / 4);
    const status = nth < 40 ? 'active' : nth < 45 ? 'draft' : 'archived';
    let buttons = [], sections = [], media = null, buttonText = null;
    if (kind === 'buttons') {
      buttons = [
        { id: 'confirm', title: 'Confirm' },
        { id: 'change', title: 'Change order' },
        { id: 'cancel', title: 'Cancel' },
      ];
    } else if (kind === 'list') {
      sections = [{ title: 'Menu', rows: [
        { id: 'a', title: 'Groceries' },
        { id: 'b', title: 'Drinks', description: 'Cold and hot' },
      ] }];
      buttonText = 'View menu';
    } else if (kind === 'media') {
      media = { type: 'image', link: `https://cdn.example.com/p/${i}.jpg` };
    }
    const at = new Date(base + i * 60000);
    const hex = (0x01900000000070008000000000000000n + BigInt(i)).toString(16).padStart(32, '0');
    const id = `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
    out.push([
      id, `${kind}_${String(i).padStart(3, '0')}`, kind,
      `Hi {{ customer_name }}, your order {{ order_id }} from store ${i} is ready. ` +
        'Total {{ total }}. Reply with one of the buttons below, or type HELP to talk to ' +
        'a person. We deliver every day between 8 and 18.',
      `Order update ${i}`, 'Reply STOP to opt out', buttonText,
      JSON.stringify(buttons), JSON.stringify(sections), media && JSON.stringify(media),
      JSON.stringify(['customer_name', 'order_id', 'total']), 1, status,
      i % 2 === 0 ? `merchant_${i % 5}` : null, 'seed', at, at,
    ]);
  }
  return out;
}

async function main() {
  const db = new Client({
    connectionString: process.env.DATABASE_URL || 'postgres://postgres@127.0.0.1:5432/smartbot_bench_read',
  });
  await db.connect();
  // The table as Smartbot's first migration creates it (when the peer runs on its own).
  await db.query(`CREATE TABLE IF NOT EXISTS message_templates (
    id uuid PRIMARY KEY, name varchar(100) NOT NULL UNIQUE, "type" varchar(16) NOT NULL, body text NOT NULL,
    header varchar(255), footer varchar(255), button_text varchar(255), buttons json NOT NULL,
    sections json NOT NULL, media json, variables json NOT NULL, version integer NOT NULL DEFAULT 1,
    status varchar(16) NOT NULL, merchant_id varchar(64), created_by varchar(128),
    created_at timestamptz NOT NULL, updated_at timestamptz NOT NULL)`);
  await db.query('DELETE FROM template_versions').catch(() => {}); // absent when run on its own
  await db.query('BEGIN');
  await db.query('DELETE FROM message_templates');
  for (const r of rows()) {
    await db.query(
      `INSERT INTO message_templates (id, name, "type", body, header, footer, button_text, buttons, sections,
         media, variables, version, status, merchant_id, created_by, created_at, updated_at)
       VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13,$14,$15,$16,$17)`, r);
  }
  await db.query('COMMIT');
  const { rows: [c] } = await db.query(
    "SELECT count(*)::int AS n, count(*) FILTER (WHERE status = 'active' AND \"type\" = 'buttons')::int AS live FROM message_templates");
  console.log(`seeded ${c.n} templates, ${c.live} active buttons templates`);
  await db.end();
}

main().catch((e) => { console.error(e); process.exit(1); });
