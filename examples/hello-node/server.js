// A tiny HTTP server: says which app and which instance answered.
'use strict';
const http = require('http');

const name = process.env.FOUNDRY_APP_NAME || 'hello-node';
const index = process.env.FOUNDRY_INSTANCE_INDEX || '?';

const server = http.createServer((req, res) => {
  const body = req.url === '/env'
    ? `NODE_ENV=${process.env.NODE_ENV}\n`
    : `Hello from ${name} (Node.js ${process.version}), instance ${index}\n`;
  res.writeHead(200, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body) });
  res.end(body);
});

server.listen(Number(process.env.PORT || 3000), '0.0.0.0');
process.on('SIGTERM', () => server.close(() => process.exit(0)));
