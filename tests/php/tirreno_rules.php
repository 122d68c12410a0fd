<?php
// tirreno v0.10.0's field rules, run by PHP itself, to give the expected outputs of
// tests/test_tirreno.py's conformance table and differential tests.
//
// Each case is [rule, base64 of the input bytes]; the answer is one JSON object per
// case: {"out": base64 of what tirreno keeps, "utf8": whether it is valid UTF-8
// without NUL (else PostgreSQL refuses the insert), "ok": filter results}.
// The one-line bodies restate the calls of the named tirreno files (not copied).
// Usage: php tests/php/tirreno_rules.php < cases.json

declare(strict_types=1);

$cases = json_decode(stream_get_contents(STDIN), true, 512, JSON_THROW_ON_ERROR);
$answers = [];
foreach ($cases as [$rule, $b64]) {
    $v = base64_decode($b64, true);
    $ok = null;
    switch (true) {
        // Model/Validated/Length.php: strlen, then substr at the byte.
        case str_starts_with($rule, 'length:'):
            $limit = intval(substr($rule, 7));
            $out = strlen($v) > $limit ? substr($v, 0, $limit) : $v;
            break;
        // Model/Validated/HttpReferer.php: Length 2047, then urldecode.
        case $rule === 'referer':
            $out = urldecode(strlen($v) > 2047 ? substr($v, 0, 2047) : $v);
            break;
        case $rule === 'urldecode':
            $out = urldecode($v);
            break;
        // Model/Validated/Email.php.
        case $rule === 'email':
            $norm = strtolower(str_replace(' ', '', $v));
            $out = filter_var($norm, FILTER_VALIDATE_EMAIL) === false ? 'broken@user.local' : $norm;
            break;
        case $rule === 'filter_email':
            $ok = filter_var($v, FILTER_VALIDATE_EMAIL) !== false;
            $out = '';
            break;
        // Model/Validated/Phone.php.
        case $rule === 'phone':
            $p = str_replace(' ', '', $v);
            $out = strlen($p) > 19 ? substr($p, 0, 19) : $p;
            break;
        // Model/Validated/IpAddress.php.
        case $rule === 'ip':
            $ip = str_replace(' ', '', $v);
            $out = filter_var($ip, FILTER_VALIDATE_IP, FILTER_FLAG_IPV4 | FILTER_FLAG_IPV6) === false ? '0.0.0.0' : $ip;
            break;
        // Model/Validated/HttpCode.php.
        case $rule === 'httpCode':
            $out = strval(intval(ctype_digit($v) ? $v : '0'));
            break;
        // Model/Http/Request.php: every received value.
        case $rule === 'clean':
            $out = mb_convert_encoding($v, 'UTF-8', 'UTF-8');
            break;
        default:
            throw new RuntimeException("unknown rule $rule");
    }
    $answers[] = [
        'out' => base64_encode($out),
        'utf8' => mb_check_encoding($out, 'UTF-8') && !str_contains($out, "\0"),
        'ok' => $ok,
    ];
}
echo json_encode($answers), "\n";
