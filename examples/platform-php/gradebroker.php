<?php
// gradebroker's tokens in PHP: a compact JWE (RSA-OAEP-256, A256CBC-HS512,
// optional zip DEF) holding a compact JWS (RS512), both ways.
//
// Debian packages no JOSE library for PHP, and PHP 8.2's openssl extension
// has no RSA-OAEP with SHA-256 (openssl_public_encrypt's OAEP is SHA-1's).
// So the layers are put together here from RFC 7515, 7516 and 7518 with
// PHP's openssl extension (RS512, AES-256-CBC), hash_hmac (HMAC-SHA-512),
// zlib (DEF), and Debian's php-phpseclib3 for RSA-OAEP-256 alone: a
// maintained implementation of the one primitive PHP lacks, rather than an
// OAEP decoder written here, which a platform's return URL would expose to
// whoever can post to it.
//
//   apt-get install php-cli php-phpseclib3
//
// See README.md beside this file.

declare(strict_types=1);

require_once '/usr/share/php/phpseclib3/autoload.php';

use phpseclib3\Crypt\PublicKeyLoader;
use phpseclib3\Crypt\RSA;

const GB_JWE_ALG = 'RSA-OAEP-256';
const GB_JWE_ENC = 'A256CBC-HS512';
const GB_JWS_ALG = 'RS512';
const GB_LIFETIME = 300;       // exp - iat of our tokens (the broker accepts 600)
const GB_SKEW = 60;            // clock difference tolerated on callbacks
const GB_MAX_LIFETIME = 600;   // the longest exp - iat of a callback
const GB_MAX_PLAINTEXT = 16 << 20;

/** A token that must not be trusted. */
class GbRefused extends Exception {}

function gb_b64(string $b): string
{
    return rtrim(strtr(base64_encode($b), '+/', '-_'), '=');
}

function gb_unb64(string $s): string
{
    if (preg_match('/^[A-Za-z0-9_-]*$/', $s) !== 1) {
        throw new GbRefused('not base64url');
    }
    $b = base64_decode(strtr($s, '-_', '+/'), true);
    if ($b === false) {
        throw new GbRefused('not base64url');
    }
    return $b;
}

function gb_json(array $v): string
{
    return json_encode($v, JSON_UNESCAPED_SLASHES | JSON_THROW_ON_ERROR);
}

/** RSA-OAEP with SHA-256 and MGF1-SHA-256 (RFC 7518 4.3), by phpseclib. */
function gb_oaep($key)
{
    return $key->withPadding(RSA::ENCRYPTION_OAEP)->withHash('sha256')->withMGFHash('sha256');
}

/** The A256CBC-HS512 tag (RFC 7518 5.2.2.1): HMAC-SHA-512 of AAD, IV,
 * ciphertext and AAD's length in bits, cut to 32 bytes. */
function gb_tag(string $macKey, string $aad, string $iv, string $ct): string
{
    $al = pack('J', strlen($aad) * 8);
    return substr(hash_hmac('sha512', $aad . $iv . $ct . $al, $macKey, true), 0, 32);
}

/** Encrypts $plaintext to the RSA public key $recipientPem as a compact JWE. */
function gb_jwe_encrypt(string $plaintext, string $recipientPem, ?string $kid = null): string
{
    $header = ['alg' => GB_JWE_ALG, 'enc' => GB_JWE_ENC, 'cty' => 'JWT'];
    if ($kid !== null) {
        $header['kid'] = $kid;
    }
    $aad = gb_b64(gb_json($header));
    $cek = random_bytes(64); // MAC key, then AES-256 key
    $iv = random_bytes(16);
    $ct = openssl_encrypt($plaintext, 'aes-256-cbc', substr($cek, 32), OPENSSL_RAW_DATA, $iv);
    if ($ct === false) {
        throw new RuntimeException('AES-256-CBC: ' . openssl_error_string());
    }
    $ek = gb_oaep(PublicKeyLoader::loadPublicKey($recipientPem))->encrypt($cek);
    return implode('.', [$aad, gb_b64($ek), gb_b64($iv), gb_b64($ct), gb_b64(gb_tag(substr($cek, 0, 32), $aad, $iv, $ct))]);
}

/** Decrypts a compact JWE with the RSA private key $keyPem, accepting only
 * RSA-OAEP-256, A256CBC-HS512 and zip DEF. Every failure is a GbRefused. */
function gb_jwe_decrypt(string $compact, string $keyPem): string
{
    $parts = explode('.', $compact);
    if (count($parts) !== 5) {
        throw new GbRefused('not a compact JWE');
    }
    [$aad, $ek, $iv, $ct, $tag] = $parts;
    $header = json_decode(gb_unb64($aad), true);
    if (!is_array($header) || ($header['alg'] ?? null) !== GB_JWE_ALG || ($header['enc'] ?? null) !== GB_JWE_ENC
        || isset($header['crit']) || (isset($header['zip']) && $header['zip'] !== 'DEF')) {
        throw new GbRefused('JWE header: only RSA-OAEP-256, A256CBC-HS512 and zip DEF are accepted');
    }
    try {
        $cek = gb_oaep(PublicKeyLoader::loadPrivateKey($keyPem))->decrypt(gb_unb64($ek));
    } catch (Throwable $e) {
        $cek = false;
    }
    $iv = gb_unb64($iv);
    $ct = gb_unb64($ct);
    // The tag is checked, in constant time, before anything is decrypted.
    if (!is_string($cek) || strlen($cek) !== 64 || strlen($iv) !== 16
        || !hash_equals(gb_tag(substr($cek, 0, 32), $aad, $iv, $ct), gb_unb64($tag))) {
        throw new GbRefused('cannot decrypt: not for this key, or altered');
    }
    $plain = openssl_decrypt($ct, 'aes-256-cbc', substr($cek, 32), OPENSSL_RAW_DATA, $iv);
    if ($plain === false) {
        throw new GbRefused('cannot decrypt');
    }
    if (isset($header['zip'])) {
        $plain = @gzinflate($plain, GB_MAX_PLAINTEXT);
        if ($plain === false) {
            throw new GbRefused('DEF content does not inflate within the size limit');
        }
    }
    return $plain;
}

/** Signs $payload (JSON) as a compact JWS, RS512, kid $kid. */
function gb_jws_sign(string $payload, string $keyPem, string $kid): string
{
    $input = gb_b64(gb_json(['alg' => GB_JWS_ALG, 'kid' => $kid])) . '.' . gb_b64($payload);
    if (!openssl_sign($input, $sig, $keyPem, OPENSSL_ALGO_SHA512)) {
        throw new RuntimeException('RS512: ' . openssl_error_string());
    }
    return $input . '.' . gb_b64($sig);
}

/** Verifies a compact JWS: RS512 only, kid $kid, signed by $pubPem; returns
 * its payload. */
function gb_jws_verify(string $compact, string $pubPem, string $kid): string
{
    $parts = explode('.', $compact);
    if (count($parts) !== 3) {
        throw new GbRefused('not a compact JWS');
    }
    $header = json_decode(gb_unb64($parts[0]), true);
    if (!is_array($header) || ($header['alg'] ?? null) !== GB_JWS_ALG || isset($header['crit'])) {
        throw new GbRefused('JWS header: only RS512 is accepted');
    }
    if (($header['kid'] ?? null) !== $kid) {
        throw new GbRefused('JWS kid is not ' . $kid);
    }
    if (openssl_verify($parts[0] . '.' . $parts[1], gb_unb64($parts[2]), $pubPem, OPENSSL_ALGO_SHA512) !== 1) {
        throw new GbRefused('bad signature');
    }
    return gb_unb64($parts[1]);
}

/** A request token of platform $platform: the request's fields and fresh
 * iat, exp, jti, aud, signed with the platform's key, encrypted to the
 * broker's. */
function gb_token(string $request, array $fields, string $platform, string $keyPem, string $brokerPem, string $broker): string
{
    $now = time();
    $claims = array_merge($fields, ['request' => $request, 'iat' => $now, 'exp' => $now + GB_LIFETIME,
        'jti' => bin2hex(random_bytes(16)), 'aud' => $broker]);
    return gb_jwe_encrypt(gb_jws_sign(gb_json($claims), $keyPem, $platform), $brokerPem);
}

/** Opens a callback token for platform $platform, signed by broker $broker
 * with $brokerPem: its claims, once aud, iat, exp and jti are checked. $seen
 * is called with the jti and must return false when it saw it before. */
function gb_open_callback(string $token, string $platform, string $keyPem, string $brokerPem, string $broker, callable $seen): array
{
    $claims = json_decode(gb_jws_verify(gb_jwe_decrypt($token, $keyPem), $brokerPem, $broker), true);
    if (!is_array($claims)) {
        throw new GbRefused('the payload is not a JSON object');
    }
    $aud = $claims['aud'] ?? null;
    if ($aud !== $platform && !(is_array($aud) && in_array($platform, $aud, true))) {
        throw new GbRefused('aud is not ' . $platform);
    }
    if (isset($claims['request'])) {
        throw new GbRefused('a request, not a callback');
    }
    $iat = $claims['iat'] ?? null;
    $exp = $claims['exp'] ?? null;
    $jti = $claims['jti'] ?? null;
    $now = time();
    if (!is_int($iat) || !is_int($exp) || !is_string($jti) || $jti === '') {
        throw new GbRefused('iat, exp and jti are required');
    }
    if ($exp < $now - GB_SKEW || $iat > $now + GB_SKEW || $exp - $iat > GB_MAX_LIFETIME) {
        throw new GbRefused('stale or too long-lived');
    }
    if (!$seen($jti, $exp)) {
        throw new GbRefused('replayed jti');
    }
    return $claims;
}
