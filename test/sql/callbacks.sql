-- Webhooks from Twilio: signature checks and their SQLSTATEs, status
-- callbacks (dedupe, ranks, out of order, a lost 201, delivery errors),
-- inbound opt-outs, the webhook role.  Signatures here come from
-- webhook_signature(); test/t/016_signature_oracle.pl checks that function
-- against Twilio's own Node SDK.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_callbacks
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
-- the default account 'main'
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.accounts (name, account_sid, status_callback_url)
	VALUES ('cb', 'AC11111111111111111111111111111111', 'https://hooks.example.com/twilio/status');
INSERT INTO twilio_outbox.account_credentials (account, secret) VALUES ('cb', 'cb-auth-token');
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('cb', '+15005550101', 'long_code', true);
-- an account that sends with an API key and names no auth token
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('keyed', 'AC22222222222222222222222222222222');
INSERT INTO twilio_outbox.account_credentials (account, api_key_sid, secret)
	VALUES ('keyed', 'SK22222222222222222222222222222222', 'key-secret');
RESET client_min_messages;
CREATE TEMP TABLE counters_before AS SELECT * FROM twilio_outbox.webhook_counters();
SELECT count(*) AS events_before FROM twilio_outbox.status_events \gset
CREATE FUNCTION sign(url text, body text) RETURNS text LANGUAGE sql
	AS $$ SELECT twilio_outbox.webhook_signature('cb-auth-token', url, body) $$;
-- a status callback body for message sid SM<n> with this status
CREATE FUNCTION cb_body(n int, status text, extra text DEFAULT '') RETURNS text LANGUAGE sql
	AS $$ SELECT 'AccountSid=AC11111111111111111111111111111111&ApiVersion=2010-04-01'
		|| '&From=%2B15005550101&MessageSid=SM' || lpad(n::text, 32, '0')
		|| '&MessageStatus=' || status || '&SmsSid=SM' || lpad(n::text, 32, '0')
		|| '&SmsStatus=' || status || '&To=%2B14155550100' || extra $$;
CREATE FUNCTION status(url text, body text) RETURNS text LANGUAGE sql
	AS $$ SELECT twilio_outbox.receive_status(url, body, sign(url, body)) $$;

-- The signature: URL plus sorted names and values; the URL with and
-- without its default port; a repeated name's values sorted.
-- Twilio's documented example (token 12345): its SDK says 0/KCTR6DLpKmkAf8muzZqo1nDgQ=
SELECT twilio_outbox.webhook_signature('12345', 'https://mycompany.com/myapp.php?foo=1&bar=2',
	'CallSid=CA1234567890ABCDE&Caller=%2B12349013030&Digits=1234&From=%2B12349013030&To=%2B18005551212') AS docs_example;
SELECT sign('https://h.example/p', 'b=2&a=1') = sign('https://h.example/p', 'a=1&b=2') AS order_free,
	   sign('https://h.example/p', 'a=2&a=1') = sign('https://h.example/p', 'a=1&a=2') AS repeated_sorted,
	   sign('https://h.example/p', 'a=1') <> sign('https://h.example/p', 'a=1&b=') AS empty_field_counts,
	   sign('https://h.example/p', 'a=x+y') = sign('https://h.example/p', 'a=x%20y') AS plus_is_space;

-- Every refusal: its SQLSTATE, nothing recorded.
SELECT try(sql) AS refused, sql FROM (VALUES
	($$SELECT twilio_outbox.receive_status(NULL, 'a=1', 'x')$$),
	($$SELECT twilio_outbox.receive_status('ftp://h.example/p', cb_body(1, 'sent'), 'x')$$),
	($$SELECT twilio_outbox.receive_status('https:///p', cb_body(1, 'sent'), 'x')$$),
	($$SELECT twilio_outbox.receive_status(E'https://h.example/p\n', cb_body(1, 'sent'), 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'a=%zz', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'a=%00', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'a=%ff', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', '=1', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'MessageSid=SM1', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'AccountSid=ACnope', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'AccountSid=AC99999999999999999999999999999999&MessageSid=SM1', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'AccountSid=AC22222222222222222222222222222222&MessageSid=SM1', 'x')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(1, 'sent'), 'AAAAAAAAAAAAAAAAAAAAAAAAAAA=')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(1, 'sent'), NULL)$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(1, 'sent'), '')$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(1, 'sent'), sign('https://h.example/p', cb_body(1, 'sent') || '&Extra=1'))$$),
	($$SELECT twilio_outbox.receive_status('https://h.example/p?x=1', cb_body(1, 'sent'), sign('https://h.example/p', cb_body(1, 'sent')))$$),
	($$SELECT status('https://h.example/p', 'AccountSid=AC11111111111111111111111111111111&MessageSid=SM1')$$),
	($$SELECT status('https://h.example/p', 'AccountSid=AC11111111111111111111111111111111&MessageSid=SM1&MessageStatus=sent')$$),
	($$SELECT status('https://h.example/p', cb_body(1, 'sent%20now'))$$),
	($$SELECT status('https://h.example/p', cb_body(1, 'failed', '&ErrorCode=3000x'))$$)
) AS t(sql);
SELECT count(*) - :events_before AS events_recorded FROM twilio_outbox.status_events;
-- counted, although each refusal rolled back its statement
SELECT c.verdict, c.webhooks - b.webhooks AS counted, c.last_refused_at IS NOT NULL AS last_refused_set
FROM twilio_outbox.webhook_counters() c JOIN counters_before b USING (verdict) ORDER BY verdict;

-- The URL with and without its default port, either way round.
SELECT status('https://h.example:443/p', cb_body(2, 'sent')) AS signed_with_port;
SELECT twilio_outbox.receive_status('https://h.example:443/p', cb_body(3, 'sent'),
	sign('https://h.example/p', cb_body(3, 'sent'))) AS signed_without_port;
SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(4, 'sent'),
	sign('https://h.example:443/p', cb_body(4, 'sent'))) AS received_without_port;
SELECT twilio_outbox.receive_status('http://h.example/p', cb_body(5, 'sent'),
	sign('http://h.example:80/p', cb_body(5, 'sent'))) AS http_port_80;
SELECT try($$SELECT twilio_outbox.receive_status('https://h.example/p', cb_body(6, 'sent'),
	sign('https://h.example:8443/p', cb_body(6, 'sent')))$$) AS other_port_is_not_default;

-- A sent message: forward only, each pair once, read after delivered.
SELECT twilio_enqueue('+14155550100', 'hello', account => 'cb') AS m1 \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_status = 'queued',
	twilio_sid = 'SM' || lpad('10', 32, '0'), sent_at = now(), finished_at = now() WHERE id = :m1;
SELECT s AS callback, status('https://hooks.example.com/twilio/status?outbox_id=' || :m1, cb_body(10, s)) AS verdict
FROM unnest(ARRAY['sent', 'delivered', 'delivered', 'sent', 'sending', 'failed', 'read', 'delivered', 'read', 'partially_delivered']) AS s;
SELECT state, twilio_status FROM twilio_outbox.messages WHERE id = :m1;
SELECT message_status, verdict, message_id = :m1 AS matched, signature_verified, payload->>'To' AS to
FROM twilio_outbox.status_events WHERE message_sid = 'SM' || lpad('10', 32, '0') ORDER BY id;

-- Out of order: delivered before sent; the message ends delivered.
SELECT twilio_enqueue('+14155550100', 'second', account => 'cb') AS m2 \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_status = 'accepted',
	twilio_sid = 'SM' || lpad('11', 32, '0') WHERE id = :m2;
SELECT status('https://hooks.example.com/twilio/status', cb_body(11, 'delivered')) AS delivered_first,
	   status('https://hooks.example.com/twilio/status', cb_body(11, 'sent')) AS sent_later;
SELECT state, twilio_status, finished_at IS NOT NULL AS finished FROM twilio_outbox.messages WHERE id = :m2;

-- The 201 was lost: the message is queued again after an ambiguous
-- attempt, without a SID.  The callback names it by outbox_id; it gets its
-- SID and is never sent again.  Another account's id is not matched.
SELECT twilio_enqueue('+14155550100', 'lost 201', account => 'cb') AS m3 \gset
UPDATE twilio_outbox.messages SET attempts = 1, ambiguous_attempts = 1 WHERE id = :m3;
SELECT status('https://hooks.example.com/twilio/status?outbox_id=' || :m3, cb_body(12, 'sent')) AS lost_201;
SELECT state, twilio_sid = 'SM' || lpad('12', 32, '0') AS sid_from_callback, twilio_status
FROM twilio_outbox.messages WHERE id = :m3;
-- the same row answering for a second SID: Twilio created two messages
SELECT status('https://hooks.example.com/twilio/status?outbox_id=' || :m3, cb_body(13, 'sent')) AS second_sid;
SELECT twilio_enqueue('+14155550100', 'of main') AS m_main \gset
UPDATE twilio_outbox.messages SET attempts = 1 WHERE id = :m_main;
SELECT status('https://hooks.example.com/twilio/status?outbox_id=' || :m_main, cb_body(14, 'sent')) AS other_account;
SELECT state, twilio_sid FROM twilio_outbox.messages WHERE id = :m_main;
-- never sent at all, canceled, unknown SID
SELECT twilio_enqueue('+14155550100', 'waiting', account => 'cb') AS m4 \gset
SELECT status('https://hooks.example.com/twilio/status?outbox_id=' || :m4, cb_body(15, 'sent')) AS never_sent;
SELECT status('https://hooks.example.com/twilio/status', cb_body(16, 'delivered')) AS unknown_sid;

-- Delivery errors through the error policy: 30003 dead -> a dead letter
-- 'undelivered'; 21610 suppress -> the recipient suppressed too, and what
-- is queued to it dead-lettered as 'suppressed'; 30001 (no policy row)
-- -> only the final state.
SELECT twilio_enqueue('+14155550111', 'to fail', account => 'cb') AS m5 \gset
SELECT twilio_enqueue('+14155550112', 'to be unsubscribed', account => 'cb') AS m6 \gset
SELECT twilio_enqueue('+14155550112', 'queued behind', account => 'cb') AS m7 \gset
SELECT twilio_enqueue('+14155550113', 'overflow', account => 'cb') AS m8 \gset
UPDATE twilio_outbox.messages SET state = 'sent', attempts = 1, twilio_status = 'queued',
	twilio_sid = 'SM' || lpad((id + 1000)::text, 32, '0') WHERE id IN (:m5, :m6, :m8);
SELECT status('https://hooks.example.com/twilio/status', cb_body(:m5 + 1000, 'undelivered', '&ErrorCode=30003&ErrorMessage=Unreachable')) AS e30003,
	   status('https://hooks.example.com/twilio/status', cb_body(:m6 + 1000, 'failed', '&ErrorCode=21610')) AS e21610,
	   status('https://hooks.example.com/twilio/status', cb_body(:m8 + 1000, 'failed', '&ErrorCode=30001')) AS e30001;
SELECT id - :m5 AS msg, state, last_error_code, last_error_message FROM twilio_outbox.messages
WHERE id IN (:m5, :m6, :m7, :m8) ORDER BY id;
SELECT message_id - :m5 AS msg, reason, twilio_code, error_message FROM twilio_outbox.dead_letters
WHERE message_id IN (:m5, :m6, :m7, :m8) ORDER BY id;
SELECT account, to_number, reason, twilio_code, message_id - :m5 AS msg FROM twilio_outbox.suppressed_recipients
WHERE to_number = '+14155550112';
-- read is the top rank: it proves delivery, even after failed
SELECT status('https://hooks.example.com/twilio/status', cb_body(:m6 + 1000, 'read')) AS read_after_failed;
SELECT state, twilio_status FROM twilio_outbox.messages WHERE id = :m6;
-- a dead-lettered message stays dead whatever Twilio says about it
SELECT status('https://hooks.example.com/twilio/status?outbox_id=' || :m7, cb_body(:m7 + 1000, 'delivered')) AS dead_stays;
SELECT state FROM twilio_outbox.messages WHERE id = :m7;

-- Inbound: STOP suppresses and dead-letters what is queued; enqueueing to
-- the number then fails with TW001; START releases it.
CREATE FUNCTION inbound(body text) RETURNS text LANGUAGE sql
	AS $$ SELECT twilio_outbox.receive_inbound('https://hooks.example.com/twilio/sms', body,
		sign('https://hooks.example.com/twilio/sms', body)) $$;
SELECT twilio_enqueue('+14155550120', 'before stop', account => 'cb') AS m9 \gset
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550120&To=%2B15005550101&Body=Stop&MessageSid=SM' || lpad('30', 32, '0')) AS stop;
SELECT state FROM twilio_outbox.messages WHERE id = :m9;
SELECT reason FROM twilio_outbox.dead_letters WHERE message_id = :m9;
SELECT account, reason FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550120';
SELECT try($$SELECT twilio_enqueue('+14155550120', 'after stop', account => 'cb')$$) AS enqueue_after_stop;
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550120&Body=help') AS help;
SELECT count(*) AS still_suppressed FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550120';
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550120&Body=+start+') AS start;
SELECT count(*) AS suppressed_after_start FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550120';
SELECT try($$SELECT twilio_enqueue('+14155550120', 'after start', account => 'cb')$$) AS enqueue_after_start;
-- Advanced Opt-Out names the type: a custom keyword counts, and a plain
-- STOP body with OptOutType HELP does not
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550121&Body=arret&OptOutType=STOP') AS custom_stop;
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550122&Body=stop&OptOutType=HELP') AS typed_help;
SELECT to_number, reason FROM twilio_outbox.suppressed_recipients WHERE to_number IN ('+14155550121', '+14155550122');
SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=%2B14155550122&Body=STOP+please') AS not_a_keyword;
SELECT count(*) AS not_suppressed FROM twilio_outbox.suppressed_recipients WHERE to_number = '+14155550122';
SELECT try(sql) AS inbound_refused, sql FROM (VALUES
	($$SELECT inbound('AccountSid=AC11111111111111111111111111111111&Body=STOP')$$),
	($$SELECT inbound('AccountSid=AC11111111111111111111111111111111&From=client%3Aalice&Body=STOP')$$),
	($$SELECT twilio_outbox.receive_inbound('https://hooks.example.com/twilio/sms', 'AccountSid=AC11111111111111111111111111111111&From=%2B14155550123&Body=STOP', 'bad')$$)
) AS t(sql);

-- The StatusCallback the dispatcher sends: the message's own, else the
-- account's base URL with outbox_id (an & when it has a query already).
SELECT twilio_outbox.status_callback_for(NULL, 'cb', 42) AS account_default,
	   twilio_outbox.status_callback_for('https://app.example/cb', 'cb', 42) AS own,
	   twilio_outbox.status_callback_for(NULL, 'main', 42) AS none;
UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/s?k=v' WHERE name = 'cb';
SELECT twilio_outbox.status_callback_for(NULL, 'cb', 42) AS with_query;
SELECT try(sql) AS callback_url, sql FROM (VALUES
	($$UPDATE twilio_outbox.accounts SET status_callback_url = 'http://hooks.example.com/s' WHERE name = 'cb'$$),
	($$UPDATE twilio_outbox.accounts SET status_callback_url = 'http://127.0.0.1:8080/s' WHERE name = 'cb'$$),
	($$UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/a b' WHERE name = 'cb'$$),
	($$UPDATE twilio_outbox.accounts SET status_callback_url = 'https://hooks.example.com/s#f' WHERE name = 'cb'$$)
) AS t(sql);

-- Credentials: an API-key account names its auth token to validate with.
SELECT try(sql) AS auth_token, sql FROM (VALUES
	($$UPDATE twilio_outbox.account_credentials SET auth_token = 'keyed-token' WHERE account = 'keyed'$$),
	($$UPDATE twilio_outbox.account_credentials SET auth_token_env = 'TWILIO_X' WHERE account = 'keyed'$$),
	($$UPDATE twilio_outbox.account_credentials SET auth_token = NULL, auth_token_env = 'PATH' WHERE account = 'keyed'$$),
	($$UPDATE twilio_outbox.account_credentials SET auth_token_env = NULL, auth_token_file = '../x' WHERE account = 'keyed'$$)
) AS t(sql);
UPDATE twilio_outbox.account_credentials SET auth_token = 'keyed-token', auth_token_env = NULL, auth_token_file = NULL WHERE account = 'keyed';
SELECT twilio_outbox.receive_status('https://h.example/k',
	'AccountSid=AC22222222222222222222222222222222&MessageSid=SM' || lpad('40', 32, '0') || '&MessageStatus=sent',
	twilio_outbox.webhook_signature('keyed-token', 'https://h.example/k',
		'AccountSid=AC22222222222222222222222222222222&MessageSid=SM' || lpad('40', 32, '0') || '&MessageStatus=sent')) AS keyed_validates;
SELECT try($$SELECT twilio_outbox.receive_status('https://h.example/k',
	'AccountSid=AC22222222222222222222222222222222&MessageSid=SM' || lpad('41', 32, '0') || '&MessageStatus=sent',
	twilio_outbox.webhook_signature('key-secret', 'https://h.example/k',
		'AccountSid=AC22222222222222222222222222222222&MessageSid=SM' || lpad('41', 32, '0') || '&MessageStatus=sent'))$$) AS api_key_secret_does_not;

-- Twilio's debugger webhook: recorded once per Sid, shown in twilio_errors.
CREATE FUNCTION debugger(body text) RETURNS text LANGUAGE sql
	AS $$ SELECT twilio_outbox.receive_debugger('https://hooks.example.com/twilio/debugger', body,
		sign('https://hooks.example.com/twilio/debugger', body)) $$;
SELECT debugger('AccountSid=AC11111111111111111111111111111111&Sid=NO0123456789abcdef0123456789abcdef'
	|| '&Level=Error&PayloadType=application%2Fjson&Timestamp=2026-11-29T09%3A00%3A00Z'
	|| '&Payload=%7B%22error_code%22%3A%2230001%22%2C%22more_info%22%3A%7B%22msg%22%3A%22Queue+overflow%22%7D%2C'
	|| '%22webhook%22%3A%7B%22request%22%3A%7B%22url%22%3A%22https%3A%2F%2Fapp.example.com%2Fsms%22%7D%7D%7D') AS first,
	   debugger('AccountSid=AC11111111111111111111111111111111&Sid=NO0123456789abcdef0123456789abcdef'
	|| '&Level=Error&PayloadType=application%2Fjson&Timestamp=2026-11-29T09%3A00%3A00Z'
	|| '&Payload=%7B%22error_code%22%3A%2230001%22%2C%22more_info%22%3A%7B%22msg%22%3A%22Queue+overflow%22%7D%2C'
	|| '%22webhook%22%3A%7B%22request%22%3A%7B%22url%22%3A%22https%3A%2F%2Fapp.example.com%2Fsms%22%7D%7D%7D') AS again,
	   debugger('AccountSid=AC11111111111111111111111111111111&Sid=NO1&Level=Warning&Payload=not+json') AS not_json;
SELECT account, level, error_code, more_info, request_url, occurred_at, sid FROM twilio_outbox.twilio_errors ORDER BY sid;
SELECT try($$SELECT debugger('AccountSid=AC11111111111111111111111111111111&Level=Error')$$) AS no_sid;

-- The webhook role: the entry points, nothing else.
SET client_min_messages = warning;
DROP ROLE IF EXISTS hook_user;
DROP ROLE IF EXISTS hook_admin;
RESET client_min_messages;
CREATE ROLE hook_user LOGIN IN ROLE twilio_outbox_webhook;
CREATE ROLE hook_admin LOGIN IN ROLE twilio_outbox_admin;
SELECT sign('https://hooks.example.com/twilio/status', cb_body(50, 'sent')) AS sig50 \gset
SET ROLE hook_user;
SELECT twilio_outbox.receive_status('https://hooks.example.com/twilio/status', cb_body(50, 'sent'), :'sig50') AS as_webhook_role;
SELECT try(sql) AS hook_user, sql FROM (VALUES
	($$SELECT twilio_outbox.receive_status('https://h.example/p', 'a=1', 'x')$$),
	($$SELECT twilio_outbox.receive_inbound('https://h.example/p', 'a=1', 'x')$$),
	($$SELECT twilio_outbox.receive_debugger('https://h.example/p', 'a=1', 'x')$$),
	($$SELECT count(*) FROM twilio_outbox.twilio_errors$$),
	($$SELECT twilio_outbox.webhook_signature('t', 'https://h.example/p', 'a=1')$$),
	($$SELECT twilio_outbox.webhook_verify('https://h.example/p', 'a=1', 'x', NULL)$$),
	($$SELECT twilio_outbox.webhook_counters()$$),
	($$SELECT count(*) FROM twilio_outbox.status_events$$),
	($$SELECT count(*) FROM twilio_outbox.messages$$),
	($$SELECT auth_token FROM twilio_outbox.account_credentials$$),
	($$SELECT twilio_outbox.suppress_recipient('AC11111111111111111111111111111111', '+1', 'x', NULL, NULL)$$),
	($$SELECT twilio_enqueue('+14155550100', 'x')$$)
) AS t(sql);
RESET ROLE;
SET ROLE hook_admin;
SELECT try(sql) AS hook_admin, sql FROM (VALUES
	($$SELECT account, auth_token_env, auth_token_file FROM twilio_outbox.account_credentials WHERE account = 'keyed'$$),
	($$SELECT auth_token FROM twilio_outbox.account_credentials$$),
	($$SELECT verdict, message_status FROM twilio_outbox.status_events LIMIT 1$$),
	($$SELECT count(*) FROM twilio_outbox.webhook_counters()$$)
) AS t(sql);
RESET ROLE;
DROP ROLE hook_user;
DROP ROLE hook_admin;
