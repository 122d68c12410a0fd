-- A small Django database for the example configuration (framework: django): Django's
-- own auth_user and django_session tables. session_data is what Django writes: the
-- session dict, JSON, zlib-compressed, signed with SECRET_KEY
-- "example-django-secret-key-for-the-dry-run" (signing.dumps, salt
-- "django.contrib.sessions.SessionStore"), as config.example.yaml's users.secret says.
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
    session_key VARCHAR(40) PRIMARY KEY,
    session_data TEXT NOT NULL,
    expire_date TEXT NOT NULL
);
INSERT INTO auth_user VALUES
    (1, 'alice', 'alice@example.com', 'Alice', 'Martin', '2025-03-01 09:12:00'),
    (2, 'bob', 'bob@example.org', 'Bob', NULL, '2025-06-17 18:40:05'),
    (3, 'zoe', 'zoe@example.net', 'Zoë', 'Łukasiewicz', '2026-01-09 07:00:00'),
    (4, 'yamada', NULL, '太郎', '山田', '2026-02-02 02:02:02');
INSERT INTO django_session VALUES
    ('s1alicesession00000000000000000a',
     '.eJyrVopPLC3JiC8tTi2Kz0xRslIyVNJBFktKTM5OzQNJpGQl5qXn6yXn55UUZSbpgZToQWWL9XzzU1JznKBqUQzISCzOAOo2oBAo1QIAIvYyTQ:1xXpdw:PkXUxkheeJffaTmjipiG81FIBs_xB06ZDdQ_JM48NCU',
     '2030-01-01 00:00:00'),
    ('s2bobsession0000000000000000000b',
     '.eJyrVopPLC3JiC8tTi2Kz0xRslIyUtJBFktKTM5OzQNJpGQl5qXn6yXn55UUZSbpgZToQWWL9XzzU1JznKBqUQzISCzOAOo2oBAo1QIAI48yTg:1xXpdw:fzT4AtFl5yKoFfOpBP9Zk-ZDgpAy4KFG-oNlP9oEwYk',
     '2030-01-01 00:00:00'),
    ('s3zoesession0000000000000000000c',
     '.eJyrVopPLC3JiC8tTi2Kz0xRslIyVtJBFktKTM5OzQNJpGQl5qXn6yXn55UUZSbpgZToQWWL9XzzU1JznKBqUQzISCzOAOo2oBAo1QIAJCgyTw:1xXpdw:uQCbIexLDUEqvMV6-S2cvAbhOBJgno7kTFDYx2nnrpg',
     '2030-01-01 00:00:00'),
    ('s4yamadasession000000000000000d',
     '.eJyrVopPLC3JiC8tTi2Kz0xRslIyUdJBFktKTM5OzQNJpGQl5qXn6yXn55UUZSbpgZToQWWL9XzzU1JznKBqUQzISCzOAOo2oBAo1QIAJMEyUA:1xXpdw:eMpoFbqk7dRCe4hs88zsvG4BFchalBukoL37VVNDvaE',
     '2030-01-01 00:00:00');
