-- A small Django-shaped user database for the example configuration.
-- Rebuild examples/users.sqlite with: sqlite3 examples/users.sqlite < examples/users.sql
-- (or python3 -c "import sqlite3; sqlite3.connect('examples/users.sqlite').executescript(open('examples/users.sql').read())")
DROP TABLE IF EXISTS django_session;
DROP TABLE IF EXISTS auth_user;
CREATE TABLE auth_user (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL,
    email TEXT,
    first_name TEXT,
    last_name TEXT,
    date_joined TEXT
);
CREATE TABLE django_session (
    session_key TEXT PRIMARY KEY,
    user_id INTEGER REFERENCES auth_user(id),
    expire_date TEXT
);
INSERT INTO auth_user VALUES
    (1, 'alice', 'alice@example.com', 'Alice', 'Martin', '2025-03-01 09:12:00'),
    (2, 'bob', 'bob@example.org', 'Bob', NULL, '2025-06-17 18:40:05'),
    (3, 'zoe', 'zoe@example.net', 'Zoë', 'Łukasiewicz', '2026-01-09 07:00:00'),
    (4, 'yamada', NULL, '太郎', '山田', '2026-02-02 02:02:02');
INSERT INTO django_session VALUES
    ('s1alicesession00000000000000000a', 1, '2030-01-01 00:00:00'),
    ('s2bobsession0000000000000000000b', 2, '2030-01-01 00:00:00'),
    ('s3zoesession0000000000000000000c', 3, '2030-01-01 00:00:00'),
    ('s4yamadasession000000000000000d', 4, '2030-01-01 00:00:00');
