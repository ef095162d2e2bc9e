// Helpers for the node pack, run with the node's own Node.js (no dependencies):
//   node pkg.js engines PACKAGE_JSON   exit 1 with a reason if engines.node is not satisfied
//   node pkg.js release PACKAGE_JSON   print bin/release YAML (the web process)
// The range matcher covers what package.json files use in practice: `||` alternatives
// of space-separated comparators (<, <=, >, >=, =, ^, ~, x-ranges like 20.x or *) and
// hyphen ranges (18 - 20). Pre-release tags are ignored.
'use strict';
const fs = require('fs');

function readPackage(path) {
  try {
    return JSON.parse(fs.readFileSync(path, 'utf8'));
  } catch (e) {
    fail(`package.json is not valid JSON: ${e.message}`);
  }
}

function fail(message) {
  process.stderr.write(message + '\n');
  process.exit(1);
}

// "20.1" -> [20, 1, null]; "x"/"*" parts become null (any).
function partial(text) {
  const parts = text.replace(/^v/, '').split('-')[0].split('.');
  const nums = [0, 1, 2].map((i) => {
    const p = parts[i];
    if (p === undefined || p === '' || p === 'x' || p === 'X' || p === '*') return null;
    if (!/^\d+$/.test(p)) throw new Error(`bad version ${text}`);
    return Number(p);
  });
  return nums;
}

function cmp(a, b) {
  for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] < b[i] ? -1 : 1;
  return 0;
}

function fill(p, value) {
  return p.map((n) => (n === null ? value : n));
}

// [lo, loInclusive, hi, hiInclusive] bounds of one comparator.
function bounds(op, text) {
  const p = partial(text);
  const lo = fill(p, 0);
  const known = p.findIndex((n) => n === null);
  const free = known === -1 ? 3 : known;   // how many leading parts are given
  const bump = (i) => { const v = lo.slice(0, i + 1); v[i] += 1; while (v.length < 3) v.push(0); return v; };
  const INF = [Infinity, 0, 0];
  if (free === 0) return [[0, 0, 0], true, INF, false];
  const top = free === 3 ? null : bump(free - 1);   // exclusive upper of the x-range
  switch (op) {
    case '>=': return [lo, true, INF, false];
    case '>': return top ? [top, true, INF, false] : [lo, false, INF, false];
    case '<': return [[0, 0, 0], true, lo, false];
    case '<=': return top ? [[0, 0, 0], true, top, false] : [[0, 0, 0], true, lo, true];
    case '~': return [lo, true, free >= 2 ? bump(1) : bump(0), false];
    case '^': {
      const i = lo[0] !== 0 || free === 1 ? 0 : lo[1] !== 0 || free === 2 ? 1 : 2;
      return [lo, true, bump(i), false];
    }
    default: return top ? [lo, true, top, false] : [lo, true, lo, true];
  }
}

function within(v, [lo, loIn, hi, hiIn]) {
  const a = cmp(v, lo), b = cmp(v, hi);
  return (a > 0 || (a === 0 && loIn)) && (b < 0 || (b === 0 && hiIn));
}

function satisfies(version, range) {
  const v = partial(version).map((n) => n || 0);
  return range.split('||').some((alt) => {
    const text = alt.trim().replace(/(<=|>=|<|>|=|\^|~)\s+/g, '$1');
    if (text === '' || text === '*' || text === 'x') return true;
    const hyphen = text.match(/^(\S+)\s+-\s+(\S+)$/);
    if (hyphen) return within(v, bounds('>=', hyphen[1])) && within(v, bounds('<=', hyphen[2]));
    return text.split(/\s+/).every((c) => {
      const m = c.match(/^(<=|>=|<|>|=|\^|~)?(.+)$/);
      return within(v, bounds(m[1] || '', m[2]));
    });
  });
}

function engines(path) {
  const wanted = ((readPackage(path) || {}).engines || {}).node;
  if (typeof wanted !== 'string' || wanted.trim() === '') return;
  let ok;
  try {
    ok = satisfies(process.version, wanted);
  } catch (e) {
    fail(`package.json engines.node ${JSON.stringify(wanted)} is not a version range this pack understands`);
  }
  if (!ok) {
    fail(`package.json asks for Node.js ${wanted} (engines.node), but this node has ` +
         `${process.version}: change engines.node to a range that includes ${process.version.slice(1)}`);
  }
  console.log(`-----> engines.node ${wanted} is satisfied by ${process.version}`);
}

function release(path) {
  const pkg = readPackage(path) || {};
  const start = (pkg.scripts || {}).start;
  const dir = require('path').dirname(path);
  let web = null;
  if (typeof start === 'string' && start.trim() !== '') web = start.trim();
  else if (fs.existsSync(require('path').join(dir, 'server.js'))) web = 'node server.js';
  console.log('---');
  if (web === null) { console.log('{}'); return; }
  console.log('default_process_types:');
  console.log('  web: ' + JSON.stringify(web));
}

if (require.main === module) {
  const [command, path] = process.argv.slice(2);
  if (command === 'engines') engines(path);
  else if (command === 'release') release(path);
  else if (command === 'satisfies') process.exit(satisfies(path, process.argv[4]) ? 0 : 1);
  else fail('usage: pkg.js engines|release PACKAGE_JSON');
}

module.exports = { satisfies };
