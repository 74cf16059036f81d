<?php
// A graderqueue platform's return URL: the broker POSTs each result as the
// form field sToken, a token holding {"sTaskName", "sResultData", "date",
// "job_id", "status", "delivery_id", ...}. This script decrypts and verifies
// it, drops a delivery seen before (the broker retries until it gets a 2xx,
// with the same delivery_id), appends the payload to callbacks.jsonl and
// answers {"bSuccess": true}, as France-ioi's platforms answer graderqueue;
// anything else gets HTTP 400 and {"bSuccess": false, "sError": ...}.
//
// Its settings come from the environment: GB_PLATFORM (the platform's
// name), GB_PLATFORM_KEY (its private key, PEM file), GB_BROKER_KEY (the
// broker's token public key, PEM file: broker-token.pub), GB_BROKER (the
// broker's name, default gradebroker) and GB_STATE_DIR (where jtis,
// deliveries and callbacks.jsonl are kept). To try it:
//
//   GB_PLATFORM=demo GB_PLATFORM_KEY=dev/demo-token.key GB_BROKER_KEY=dev/broker-token.pub \
//   GB_STATE_DIR=/tmp/demo-callbacks php -S 127.0.0.1:9998 examples/platform-php/callback.php

declare(strict_types=1);

require_once __DIR__ . '/gradebroker.php';

header('Content-Type: application/json');

/** Creates $path unless it exists: false when it did. */
function gb_first(string $path): bool
{
    $f = @fopen($path, 'x');
    if ($f === false) {
        return false;
    }
    fclose($f);
    return true;
}

$state = getenv('GB_STATE_DIR');
try {
    if ($_SERVER['REQUEST_METHOD'] !== 'POST' || !isset($_POST['sToken']) || !is_string($_POST['sToken'])) {
        throw new GbRefused('POST the form field sToken');
    }
    $claims = gb_open_callback($_POST['sToken'], getenv('GB_PLATFORM'), file_get_contents(getenv('GB_PLATFORM_KEY')),
        file_get_contents(getenv('GB_BROKER_KEY')), getenv('GB_BROKER') ?: 'gradebroker',
        // A jti is remembered as a file; a real platform keeps it in its
        // database until exp, and deletes it then.
        fn(string $jti, int $exp): bool => gb_first($state . '/jti-' . hash('sha256', $jti)));
    if (gb_first($state . '/delivery-' . (int)($claims['delivery_id'] ?? 0))) {
        // Here a platform stores the grade of submission sTaskName.
        file_put_contents($state . '/callbacks.jsonl', gb_json($claims) . "\n", FILE_APPEND | LOCK_EX);
    }
    echo gb_json(['bSuccess' => true]);
} catch (GbRefused $e) {
    http_response_code(400);
    echo gb_json(['bSuccess' => false, 'sError' => $e->getMessage()]);
}
