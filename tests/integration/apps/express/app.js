// The Express app of the live preset test (tests/integration/test_framework_express.py):
// express-session with connect-pg-simple, passport's req.login/req.logout, users in the
// app's own PostgreSQL table. Environment: PORT, APP_DB (database on 127.0.0.1:5432,
// user postgres), APP_SECRET. Routes: POST /login/ (username, password) -> 302 /account/;
// GET /account/ -> "hello <username>" or "anonymous"; POST /logout/ -> 302 /.
"use strict";
const crypto = require("crypto");
const express = require("express");
const session = require("express-session");
const passport = require("passport");
const pg = require("pg");
const PgStore = require("connect-pg-simple")(session);

const pool = new pg.Pool({ host: "127.0.0.1", port: 5432, user: "postgres", database: process.env.APP_DB });

// The stored hash: scrypt(password, salt), as an application would keep it.
function hash(password, salt) {
  return crypto.scryptSync(password, salt, 32).toString("hex");
}

passport.serializeUser((user, done) => done(null, user.id));
passport.deserializeUser((id, done) => {
  pool.query("SELECT id, username FROM users WHERE id = $1", [id]).then(
    ({ rows }) => done(null, rows[0] || false),
    done,
  );
});

const app = express();
app.use(express.urlencoded({ extended: false }));
app.use(
  session({
    secret: process.env.APP_SECRET,
    store: new PgStore({ pool, createTableIfMissing: true }),
    resave: false,
    saveUninitialized: false,
  }),
);
app.use(passport.session());

app.get("/", (req, res) => res.send("home\n"));
app.post("/login/", async (req, res, next) => {
  try {
    const { rows } = await pool.query(
      "SELECT id, username, salt, password_hash FROM users WHERE username = $1",
      [req.body.username || ""],
    );
    const user = rows[0];
    if (!user || hash(req.body.password || "", user.salt) !== user.password_hash) {
      return res.send("wrong password\n");
    }
    // passport 0.6+ regenerates the session here: the response carries a new connect.sid.
    req.login({ id: user.id, username: user.username }, (err) =>
      err ? next(err) : res.redirect(302, "/account/"),
    );
  } catch (err) {
    next(err);
  }
});
app.get("/account/", (req, res) =>
  res.send(req.user ? `hello ${req.user.username}\n` : "anonymous\n"),
);
app.post("/logout/", (req, res, next) =>
  req.logout((err) => (err ? next(err) : res.redirect(302, "/"))),
);

app.listen(Number(process.env.PORT), "127.0.0.1");
