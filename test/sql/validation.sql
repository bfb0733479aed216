-- Every bad input: a clear error with its SQLSTATE, and nothing inserted.
-- Its own database and fixtures: this file depends on no other.
\set db outbox_validation
\i test/sql/include/fresh_database.sql
SET client_min_messages = warning;
TRUNCATE twilio_outbox.messages;
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.accounts (name, account_sid)
	VALUES ('nosender', 'AC0123456789abcdef0123456789abcdee') ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true) ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.senders (account, messaging_service_sid, kind)
	VALUES ('main', 'MG0123456789abcdef0123456789abcdef', 'messaging_service') ON CONFLICT DO NOTHING;
INSERT INTO twilio_outbox.suppressed_recipients (account, to_number, reason)
	VALUES ('main', '+14155550199', 'replied STOP');
RESET client_min_messages;

SELECT try(sql) AS result, sql FROM (VALUES
	-- recipient
	($$SELECT twilio_enqueue(NULL, 'x')$$),
	($$SELECT twilio_enqueue('', 'x')$$),
	($$SELECT twilio_enqueue('4155552671', 'x')$$),
	($$SELECT twilio_enqueue('+04155552671', 'x')$$),
	($$SELECT twilio_enqueue('+1', 'x')$$),
	($$SELECT twilio_enqueue('+1234567890123456', 'x')$$),
	($$SELECT twilio_enqueue('+1415555 2671', 'x')$$),
	($$SELECT twilio_enqueue(E'+14155552671\r\nX-Evil: 1', 'x')$$),
	($$SELECT twilio_enqueue('fax:+14155552671', 'x')$$),
	($$SELECT twilio_enqueue('whatsapp:14155552671', 'x')$$),
	-- sender
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '+15005550006', messaging_service_sid => 'MG0123456789abcdef0123456789abcdef')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => 'MG123')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => 'PN0123456789abcdef0123456789abcdef')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '+15005550000')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => 'MGffffffffffffffffffffffffffffffff')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'nosender')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => 'nope')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', account => '')$$),
	($$SELECT twilio_enqueue('whatsapp:+14155552671', 'x')$$),
	-- content
	($$SELECT twilio_enqueue('+14155552671')$$),
	($$SELECT twilio_enqueue('+14155552671', '')$$),
	($$SELECT twilio_enqueue('+14155552671', NULL, media_urls => '{}')$$),
	($$SELECT twilio_enqueue('+14155552671', repeat('a', 1601))$$),
	($$SELECT twilio_enqueue('+14155552671', repeat('é', 1601))$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX12')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', content_variables => '{"1": "a"}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '[1]')$$),
	-- media
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => array_fill('https://example.com/a.png'::text, ARRAY[11]))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['ftp://example.com/a.png'])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['https://example.com/a b.png'])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['https://'])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['https://example.com/a.png', NULL])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY[ARRAY['https://a.example/1'], ARRAY['https://a.example/2']])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY[E'https://example.com/a\r\n.png'])$$),
	-- callback
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'javascript:alert(1)')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => E'https://app.example.com/cb\nX: y')$$),
	-- time
	($$SELECT twilio_enqueue('+14155552671', 'x', expires_at => now() - interval '1 second')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => now() + interval '2 hours', expires_at => now() + interval '1 hour')$$),
	-- dedupe key
	($$SELECT twilio_enqueue('+14155552671', 'x', dedupe_key => '')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', dedupe_key => repeat('k', 256))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', dedupe_key => E'order-1\r\nX: y')$$),
	-- suppression
	($$SELECT twilio_enqueue('+14155550199', 'x')$$),
	-- params
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '[]')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '"ValidityPeriod"')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"Foo": 1}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"To": "+14155550000"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 0}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 36001}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 1.5}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": "600"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SmartEncoded": "yes"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"RiskCheck": "maybe"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ApplicationSid": "AP1"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": "geo:1,2"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": [["a"]]}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": {"a": 1}}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => E'{"FallbackFrom": "+1\\r\\n"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "tomorrow at noon", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2020-01-01T00:00:00Z", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2099-01-01T00:00:00Z", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-01-01T00:00:00", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => pg_catalog.jsonb_build_object('ScheduleType', 'fixed', 'SendAt', to_char(now() AT TIME ZONE 'UTC' + interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))$$),
	-- and a valid one, so that the harness itself is shown to work
	($$SELECT twilio_enqueue('+14155552671', 'fine', params => '{"ValidityPeriod": 36000, "RiskCheck": "disable", "ApplicationSid": "AP0123456789abcdef0123456789abcdef"}')$$)
) AS t(sql);

-- Nothing but the one valid message was inserted.
SELECT count(*) AS messages FROM twilio_outbox.messages;

-- Blank bodies: empty is no body (media or a template alone), but a body of
-- nothing but white space or invisible characters (Unicode's too) is refused,
-- as are control characters other than tab, LF, CR and form feed.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', '   ')$$),
	($$SELECT twilio_enqueue('+14155552671', E' \t\r\n ')$$),
	($$SELECT twilio_enqueue('+14155552671', U&'\00A0\2003\3000')$$),
	($$SELECT twilio_enqueue('+14155552671', U&'\200B\FEFF\2060')$$),
	($$SELECT twilio_enqueue('+14155552671', ' ', media_urls => ARRAY['https://example.com/a.png'])$$),
	($$SELECT twilio_enqueue('+14155552671', E'code\x01 123')$$),
	($$SELECT twilio_enqueue('+14155552671', E'esc \x1b[31m')$$),
	($$SELECT twilio_enqueue('+14155552671', U&'c1 \0085 is a newline, \0090 is not')$$)
) AS t(sql);

-- Times: every message accepted must be able to end, so no infinity, nothing
-- more than 366 days ahead, and expires_at after send_after.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => 'infinity')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => '-infinity')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', expires_at => 'infinity')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', expires_at => '-infinity')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => now() + interval '367 days')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', expires_at => now() + interval '367 days')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => now() + interval '1 day', expires_at => now() + interval '1 day')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', send_after => '-infinity', expires_at => now() + interval '1 day')$$)
) AS t(sql);

-- Senders are phone-number formats: E.164, a channel address, a short code
-- or an alphanumeric sender ID.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => 'not a sender!')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '+1')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '12')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => 'ABCDEFGHIJKL')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => ' ACME')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => 'whatsapp:+1')$$),
	-- well-formed, but no such sender
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => 'ACME Inc')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', from_number => '12345')$$)
) AS t(sql);

-- URLs: RFC 3986 (ASCII), a real host name or address (no underscore, as
-- Twilio requires of callbacks), an optional user:password@ and port.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://my_app.example.com/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://app.example.com/cb?q=<script>')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://app.example.com/café')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://app.example.com:99999/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://app.example.com:x/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://app.example.com:/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://user:pw@/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://-app.example.com/cb')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['https://[::1/a.png'])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => ARRAY['https://example.com/' || repeat('a', 2048)])$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', media_urls => array_fill('https://example.com/a.png'::text, ARRAY[100000]))$$),
	-- accepted
	($$SELECT twilio_enqueue('+14155552671', 'url ok 1', status_callback => 'HTTPS://user:pw@app.example.com:8443/cb?a=1&b=%20#f')$$),
	($$SELECT twilio_enqueue('+14155552671', 'url ok 2', media_urls => ARRAY['https://[2001:db8::1]:8443/a.png', 'http://192.0.2.1/b.png'])$$)
) AS t(sql);

-- content_variables: what the Content API takes, a flat object of at most
-- 100 variables with names of 1 to 16 characters (no spaces) and non-empty
-- string values of at most 1,600 characters.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": {"a": "b"}}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": ["a"]}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": 7}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": true}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": null}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": ""}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": "  "}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": "a\u0007b"}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '"1"')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"first name": "Ada"}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"": "Ada"}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"ABCDEFGHIJKLMNOPQ": "Ada"}')$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => jsonb_build_object('1', repeat('a', 1601)))$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => (SELECT jsonb_object_agg(i::text, 'v') FROM generate_series(1, 101) i))$$),
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => jsonb_build_object(repeat('k', 100000), 'v'))$$),
	-- accepted: 100 variables, a 1,600-character value
	($$SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => (SELECT jsonb_object_agg(i::text, repeat('v', 1600)) FROM generate_series(1, 100) i))$$)
) AS t(sql);

-- params, field by field as Twilio's spec types them: bounds without casts
-- that throw their own SQLSTATE, phone numbers, enums (case matters),
-- arrays of strings, and what needs a Messaging Service.
SELECT try(sql) AS result, sql FROM (VALUES
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 1e20}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": -1}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 600.0000000000000000001}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 1.0}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": null}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": true}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"Attempt": 0}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"Attempt": 2147483648}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"MaxPrice": -0.5}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"MaxPrice": 1e1000}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"MaxPrice": 0.0000000000000000000000000000000001}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"MaxPrice": "0.5"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ForceDelivery": "true"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"AddressRetention": "RETAIN"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ContentRetention": "obfuscate"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"TrafficType": "paid"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ScheduleType": "Fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ApplicationSid": "PN0123456789abcdef0123456789abcdef"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"FallbackFrom": "call me maybe"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"FallbackFrom": "whatsapp:+15005550006"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"FallbackFrom": "+15005550006"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"ShortenUrls": true}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-02-30T00:00:00Z", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-01-01T25:00:00Z", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-01-01T00:00:00+99:00", "ScheduleType": "fixed"}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => 'MG0123456789abcdef0123456789abcdef', params => jsonb_build_object('ScheduleType', 'fixed', 'SendAt', to_char(now() AT TIME ZONE 'UTC' + interval '4 minutes', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => 'MG0123456789abcdef0123456789abcdef', send_after => now() + interval '2 days', params => jsonb_build_object('ScheduleType', 'fixed', 'SendAt', to_char(now() AT TIME ZONE 'UTC' + interval '1 day', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": []}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": [1]}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": [""]}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => '{"PersistentAction": [null]}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => jsonb_build_object('PersistentAction', to_jsonb(array_fill('geo:1,2'::text, ARRAY[11]))))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => jsonb_build_object('PersistentAction', jsonb_build_array(repeat('a', 1025))))$$),
	($$SELECT twilio_enqueue('+14155552671', 'x', params => jsonb_build_object(repeat('K', 100000), 1))$$),
	-- accepted
	($$SELECT twilio_enqueue('+14155552671', 'params ok 1', params => '{"PersistentAction": ["geo:37.787890,-122.391664|375 Beale St", "mailto:a@example.com"], "MaxPrice": 0.75, "Attempt": 2147483647, "TrafficType": "free", "ForceDelivery": false}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'params ok 2', messaging_service_sid => 'MG0123456789abcdef0123456789abcdef', params => '{"ShortenUrls": true, "FallbackFrom": "ACME", "ContentRetention": "discard", "AddressRetention": "obfuscate", "SendAsMms": true}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'params ok 3', params => '{"ShortenUrls": false, "ValidityPeriod": 1e2}')$$),
	($$SELECT twilio_enqueue('+14155552671', 'params ok 4', messaging_service_sid => 'MG0123456789abcdef0123456789abcdef', send_after => now() + interval '1 day', params => jsonb_build_object('ScheduleType', 'fixed', 'SendAt', to_char(now() AT TIME ZONE 'UTC' + interval '2 days', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')))$$)
) AS t(sql);

-- No error quotes more than a short prefix of what it was given: a 1 MB
-- argument gives an error of a line, cut on a character boundary.
SELECT length(r) < 300 AS short, r ~ '\.\.\."' AS marked_cut, sql FROM (
	SELECT try(sql) AS r, sql FROM (VALUES
		($$SELECT twilio_enqueue(repeat('€', 1000000), 'x')$$),
		($$SELECT twilio_enqueue('+14155552671', 'x', from_number => repeat('9', 1000000))$$),
		($$SELECT twilio_enqueue('+14155552671', 'x', messaging_service_sid => repeat('M', 1000000))$$),
		($$SELECT twilio_enqueue('+14155552671', content_sid => repeat('H', 1000000))$$),
		($$SELECT twilio_enqueue('+14155552671', 'x', status_callback => 'https://' || repeat('é', 1000000))$$),
		($$SELECT twilio_enqueue('+14155552671', 'x', account => repeat('a', 1000000))$$),
		($$SELECT twilio_enqueue('+14155552671', 'x', params => jsonb_build_object(repeat('€', 1000000), 1))$$)
	) AS t(sql)) AS r;
SELECT try($$SELECT twilio_enqueue(repeat('€', 1000000), 'x')$$) AS cut_on_a_character;

-- A table constraint stricter than these checks (an administrator's, or a
-- later version's) gives 22023 naming it, never PostgreSQL's "Failing row
-- contains ..." with the whole message in it.
ALTER TABLE twilio_outbox.messages ADD CONSTRAINT test_short_bodies
	CHECK (length(body) < 100) NOT VALID;
SELECT twilio_enqueue('+14155552671', repeat('long body ', 100));
ALTER TABLE twilio_outbox.messages DROP CONSTRAINT test_short_bodies;

-- The valid ones above went in, nothing else.
SELECT count(*) AS messages FROM twilio_outbox.messages;

-- Errors carry detail and hint for the user; one shown in full.
SELECT twilio_enqueue('+14155552671', 'x', from_number => '+15005550006',
	messaging_service_sid => 'MG0123456789abcdef0123456789abcdef');
SELECT twilio_enqueue('+14155550199', 'x');
-- A cast that would fail on its own (out of range, no such date, bad zone)
-- is the same 22023 naming the field, with what it must be.
SELECT twilio_enqueue('+14155552671', 'x', params => '{"ValidityPeriod": 1e20}');
SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-02-30T00:00:00Z", "ScheduleType": "fixed"}');
SELECT twilio_enqueue('+14155552671', 'x', params => '{"SendAt": "2030-01-01T00:00:00+99:00", "ScheduleType": "fixed"}');
SELECT twilio_enqueue('+14155552671', 'x', params => '{"FallbackFrom": "whatsapp:+15005550006"}');
SELECT twilio_enqueue('+14155552671', content_sid => 'HX0123456789abcdef0123456789abcdef', content_variables => '{"1": {"a": "b"}}');
SELECT twilio_enqueue('+14155552671', ' ');
SELECT twilio_enqueue('+14155552671', 'x', send_after => 'infinity');
