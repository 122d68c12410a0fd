<?php
// The PHP app of the live preset test (tests/integration/test_framework_php.py): native
// file sessions (session.save_path given with -d), users in the app's own SQLite table.
//   php index.php setup DB USERNAME PASSWORD   creates the table and the user
//   APP_DB=DB php -S 127.0.0.1:PORT index.php  serves (the built-in server's router)
// Routes: POST /login/ (username, password) -> 302 /account/; GET /account/ ->
// "hello <username>" or "anonymous"; POST /logout/ -> 302 /.
declare(strict_types=1);

function db(string $path): PDO
{
    $pdo = new PDO('sqlite:' . $path);
    $pdo->setAttribute(PDO::ATTR_ERRMODE, PDO::ERRMODE_EXCEPTION);
    return $pdo;
}

if (PHP_SAPI === 'cli') {
    [, $command, $path, $username, $password] = $argv;
    $pdo = db($path);
    $pdo->exec('CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, password_hash TEXT NOT NULL)');
    // Another user first: the shipper's query must pick the session's user_id.
    $pdo->prepare('INSERT INTO users (id, name, password_hash) VALUES (1, ?, ?)')
        ->execute(['bob', password_hash(bin2hex(random_bytes(8)), PASSWORD_DEFAULT)]);
    $pdo->prepare('INSERT INTO users (id, name, password_hash) VALUES (42, ?, ?)')
        ->execute([$username, password_hash($password, PASSWORD_DEFAULT)]);
    exit(0);
}

$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
$method = $_SERVER['REQUEST_METHOD'];

if ($path === '/login/' && $method === 'POST') {
    $find = db(getenv('APP_DB'))->prepare('SELECT id, password_hash FROM users WHERE name = ?');
    $find->execute([$_POST['username'] ?? '']);
    $user = $find->fetch(PDO::FETCH_ASSOC);
    if (!$user || !password_verify($_POST['password'] ?? '', $user['password_hash'])) {
        echo "wrong password\n";
        exit;
    }
    session_start();
    if (isset($_COOKIE[session_name()])) {
        session_regenerate_id(true);  // never keep a session id from before the login
    }
    $_SESSION['user_id'] = (int) $user['id'];
    header('Location: /account/', true, 302);
    exit;
}
if ($path === '/account/') {
    session_start(['read_and_close' => true]);
    if (isset($_SESSION['user_id'])) {
        $find = db(getenv('APP_DB'))->prepare('SELECT name FROM users WHERE id = ?');
        $find->execute([$_SESSION['user_id']]);
        echo 'hello ' . $find->fetchColumn() . "\n";
    } else {
        echo "anonymous\n";
    }
    exit;
}
if ($path === '/logout/' && $method === 'POST') {
    session_start();
    $_SESSION = [];
    session_destroy();
    setcookie(session_name(), '', ['expires' => 1, 'path' => '/']);
    header('Location: /', true, 302);
    exit;
}
if ($path === '/') {
    echo "home\n";
    exit;
}
http_response_code(404);
echo "not found\n";
