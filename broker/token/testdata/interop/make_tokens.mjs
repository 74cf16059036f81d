// make_tokens.mjs writes tokens.json: tokens made by JavaScript, for
// TestOpenJavaScriptTokens. Two makers, both independent of Go and go-jose:
// the "jose" npm package (panva/jose, what a Node platform would use), and
// RFC 7516/7518 done by hand with node:crypto and node:zlib (what an old
// PHP or Python library does, zip DEF included).
//
// The keys are made afresh and are for these tests only. To regenerate:
//   mkdir /tmp/js && cd /tmp/js && npm install jose@6
//   cp .../testdata/interop/make_tokens.mjs . && node make_tokens.mjs > .../testdata/interop/tokens.json
import * as jose from 'jose';
import {
  generateKeyPairSync, publicEncrypt, constants, randomBytes, createCipheriv, createHmac,
} from 'node:crypto';
import { deflateRawSync } from 'node:zlib';

const now = 1800000000;
const broker = generateKeyPairSync('rsa', { modulusLength: 2048 });
const platform = generateKeyPairSync('rsa', { modulusLength: 2048 });
const b64url = (b) => Buffer.from(b).toString('base64url');

// The broker's kid, as a platform reading GET /v1/keys would find it.
const brokerKid = await jose.calculateJwkThumbprint(await jose.exportJWK(broker.publicKey), 'sha256');

async function withLibrary(claims, header) {
  const jws = await new jose.SignJWT(claims)
    .setProtectedHeader({ alg: 'RS512', kid: 'france-ioi', typ: 'JWT' })
    .sign(platform.privateKey);
  return new jose.CompactEncrypt(new TextEncoder().encode(jws))
    .setProtectedHeader(header)
    .encrypt(broker.publicKey);
}

function byHand(header, plaintext) {
  const prot = b64url(JSON.stringify(header));
  let pt = Buffer.from(plaintext);
  if (header.zip === 'DEF') pt = deflateRawSync(pt);
  const cek = randomBytes(64);
  const iv = randomBytes(16);
  const ek = publicEncrypt(
    { key: broker.publicKey, padding: constants.RSA_PKCS1_OAEP_PADDING, oaepHash: 'sha256' }, cek);
  const cipher = createCipheriv('aes-256-cbc', cek.subarray(32), iv);
  const ct = Buffer.concat([cipher.update(pt), cipher.final()]);
  const aad = Buffer.from(prot, 'ascii');
  const al = Buffer.alloc(8);
  al.writeBigUInt64BE(BigInt(aad.length * 8));
  const tag = createHmac('sha512', cek.subarray(0, 32))
    .update(Buffer.concat([aad, iv, ct, al])).digest().subarray(0, 32);
  return [prot, b64url(ek), b64url(iv), b64url(ct), b64url(tag)].join('.');
}

const tokens = [];
tokens.push({
  name: 'jose library, cty JWT, kid, aud array',
  request: 'test',
  token: await withLibrary(
    { request: 'test', jti: 'js-1', iat: now, exp: now + 300, aud: ['gradebroker-test'] },
    { alg: 'RSA-OAEP-256', enc: 'A256CBC-HS512', cty: 'JWT', kid: brokerKid }),
});
tokens.push({
  name: 'jose library, no cty, no kid, aud string',
  request: 'sendjob',
  token: await withLibrary(
    { request: 'sendjob', jti: 'js-2', iat: now - 10, exp: now + 590, aud: 'gradebroker-test',
      jobdata: { source: 'print(1)' }, tags: 'python3' },
    { alg: 'RSA-OAEP-256', enc: 'A256CBC-HS512' }),
});
const phpJWS = await new jose.CompactSign(Buffer.from(JSON.stringify({
  request: 'getjob', jobid: '17', jti: 'php-1', iat: String(now), exp: now + 300.5,
}))).setProtectedHeader({ alg: 'RS512', kid: 'france-ioi' }).sign(platform.privateKey);
tokens.push({
  name: 'by hand, zip DEF, numeric strings, float exp',
  request: 'getjob',
  token: byHand({ alg: 'RSA-OAEP-256', enc: 'A256CBC-HS512', zip: 'DEF' }, phpJWS),
});

process.stdout.write(JSON.stringify({
  now,
  broker_private_key: broker.privateKey.export({ type: 'pkcs8', format: 'pem' }),
  platform_public_key: platform.publicKey.export({ type: 'spki', format: 'pem' }),
  broker_kid: brokerKid,
  tokens,
}, null, 2) + '\n');
