// Test-only oracle: Twilio's official Node SDK (the npm package twilio,
// pinned in package.json / package-lock.json) computes webhook signatures
// for test/t/016_signature_oracle.pl, independently of twilio_outbox's C.
//
// Reads one JSON object a line on stdin: {"token", "url", "body"[, "header",
// "check_url"]}; the body is the raw form body, parsed as an Express
// endpoint would (querystring: repeated names become arrays).  Writes one
// JSON object a line: {"signature": getExpectedTwilioSignature(token, url,
// params), "valid": validateRequest(token, header, check_url, params)}.
"use strict";
const readline = require("readline");
const querystring = require("querystring");
const webhooks = require("twilio/lib/webhooks/webhooks");

const rl = readline.createInterface({ input: process.stdin });
rl.on("line", (line) => {
  if (!line.trim()) return;
  const c = JSON.parse(line);
  const params = querystring.parse(c.body);
  const signature = webhooks.getExpectedTwilioSignature(c.token, c.url, params);
  const header = c.header === undefined ? signature : c.header;
  const valid = webhooks.validateRequest(c.token, header, c.check_url || c.url, params);
  process.stdout.write(JSON.stringify({ signature, valid }) + "\n");
});
