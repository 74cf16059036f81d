<?php
// A graderqueue platform in PHP, moved to gradebroker: its requests go to
// the broker's api.php as graderqueue's did (a form POST of sToken and
// sPlatform), with full tokens (kid, iat, exp, jti) made by gradebroker.php.
//
//   php client.php --url https://127.0.0.1:18443 --ca dev/ca.crt --platform demo \
//       --key dev/demo-token.key --broker-key dev/broker-token.pub \
//       --jobdata '{"task": "sum", "lang": "python3", "solution": "print(1)"}' --tags python3 \
//       --jobname sum --callbacks /tmp/demo-callbacks/callbacks.jsonl
//
// It tests the connection, sends the job (sendjob, its jobdata a JSON
// string as graderqueue's platforms send it), asks getjob until the job is
// done, waits for its callback to appear in the file callback.php writes,
// and prints {"jobid", "getjob", "callback"} as JSON. See README.md.

declare(strict_types=1);

require_once __DIR__ . '/gradebroker.php';

$opts = getopt('', ['url:', 'ca:', 'platform:', 'key:', 'broker-key:', 'broker:', 'jobdata:', 'jobname:', 'tags:',
    'callbacks:', 'timeout:']);
foreach (['url', 'ca', 'platform', 'key', 'broker-key', 'jobdata', 'callbacks'] as $required) {
    if (!isset($opts[$required])) {
        fwrite(STDERR, "client.php: --$required is required\n");
        exit(2);
    }
}
$broker = $opts['broker'] ?? 'gradebroker';
$key = file_get_contents($opts['key']);
$brokerKey = file_get_contents($opts['broker-key']);
$deadline = time() + (int)($opts['timeout'] ?? 60);

/** Posts one request to api.php and returns graderqueue's envelope, or
 * exits saying what the broker refused. */
function api(string $request, array $fields): array
{
    global $opts, $key, $brokerKey, $broker;
    $form = ['sToken' => gb_token($request, $fields, $opts['platform'], $key, $brokerKey, $broker), 'sPlatform' => $opts['platform']];
    $ctx = stream_context_create([
        'http' => ['method' => 'POST', 'header' => "Content-Type: application/x-www-form-urlencoded\r\n",
            'content' => http_build_query($form), 'timeout' => 90, 'ignore_errors' => true],
        'ssl' => ['cafile' => $opts['ca'], 'verify_peer' => true, 'verify_peer_name' => true],
    ]);
    $body = file_get_contents(rtrim($opts['url'], '/') . '/api.php', false, $ctx);
    $answer = is_string($body) ? json_decode($body, true) : null;
    if (!is_array($answer)) {
        fwrite(STDERR, "client.php: $request: no answer from the broker\n");
        exit(1);
    }
    if ($answer['errorcode'] !== 0) {
        fwrite(STDERR, "client.php: $request: errorcode {$answer['errorcode']}: {$answer['errormsg']}\n");
        exit(1);
    }
    return $answer;
}

api('test', []);
$sent = api('sendjob', ['jobdata' => $opts['jobdata'], 'jobname' => $opts['jobname'] ?? '', 'tags' => $opts['tags'] ?? '',
    'priority' => 1]);
$jobid = $sent['jobid'];
do {
    // wait_seconds makes the broker answer once the job is final, or after
    // that many seconds (graderqueue had no such thing: its platforms polled).
    $job = api('getjob', ['jobid' => $jobid, 'wait_seconds' => 10]);
} while ($job['origin'] !== 'done' && time() < $deadline);
$callback = null;
while ($callback === null && time() < $deadline) {
    foreach (@file($opts['callbacks'], FILE_IGNORE_NEW_LINES) ?: [] as $line) {
        $c = json_decode($line, true);
        if (($c['job_id'] ?? null) === $jobid) {
            $callback = $c;
        }
    }
    if ($callback === null) {
        usleep(100000);
    }
}
if ($job['origin'] !== 'done' || $callback === null) {
    fwrite(STDERR, "client.php: job $jobid: no result within the time-out\n");
    exit(1);
}
echo gb_json(['jobid' => $jobid, 'getjob' => $job, 'callback' => $callback]), "\n";
