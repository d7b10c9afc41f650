// graphql-http's auditServer against a live `nexes serve` (tests/test_conformance.py runs it).
// NEXES_AUDIT_URL is the endpoint, NEXES_AUDIT_TOKEN an analyst's bearer token, which
// fetchFn adds to every request. Prints one JSON line per audit: {id, name, status, reason}.
import { auditServer } from 'graphql-http';

const url = process.env.NEXES_AUDIT_URL;
const token = process.env.NEXES_AUDIT_TOKEN;
if (!url || !token) {
  console.error('set NEXES_AUDIT_URL and NEXES_AUDIT_TOKEN');
  process.exit(2);
}

function fetchFn(input, init = {}) {
  const headers = new Headers(init.headers);
  headers.set('authorization', `Bearer ${token}`);
  return fetch(input, { ...init, headers });
}

const results = await auditServer({ url, fetchFn });
for (const result of results) {
  const { id, name, status } = result;
  const reason = result.status === 'ok' ? '' : result.reason;
  console.log(JSON.stringify({ id, name, status, reason }));
}
