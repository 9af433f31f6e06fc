// A real OpenID Connect provider (panva's certified oidc-provider) on 127.0.0.1 for the tests.
// Usage: node provider.mjs CONFIG.json   (prints "listening <issuer>" once it serves)
//   CONFIG: {"clients": [...oidc-provider client metadata], "accounts_file": "accounts.json"}
//   accounts.json: {"<login>": {claims...}}, read at each login so a test can change it.
// POST /_test/rotate swaps in a new signing key (the old one leaves the JWKS).
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const cookieKeys = [randomBytes(32).toString('hex')];

function signingKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' };
}

function accounts() {
  return JSON.parse(readFileSync(config.accounts_file, 'utf8'));
}

async function findAccount(ctx, id) {
  const claims = accounts()[id];
  if (!claims) return undefined;
  return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
}

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: { keys: [signingKey()] },
    cookies: { keys: cookieKeys },
    findAccount,
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['preferred_username', 'name'],
      groups: ['groups'],
    },
    scopes: ['openid', 'email', 'profile', 'groups', 'offline_access'],
    features: {
      devInteractions: { enabled: true },
      rpInitiatedLogout: { enabled: true },
    },
    pkce: { required: () => true },
    ttl: { AuthorizationCode: 60, IdToken: 300, AccessToken: 300, Interaction: 300,
           Session: 600, Grant: 600 },
  });
  provider.proxy = false;
  return provider;
}

let current = null;
let issuer = null;

const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/_test/rotate') {
    current = makeProvider(issuer).callback();
    res.writeHead(204).end();
    return;
  }
  current(req, res);
});

server.listen(0, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  current = makeProvider(issuer).callback();
  process.stdout.write(`listening ${issuer}\n`);
});

process.on('SIGTERM', () => process.exit(0));
