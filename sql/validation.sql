-- Every bad input: a clear error with its SQLSTATE, and nothing inserted.
CREATE EXTENSION IF NOT EXISTS twilio_outbox;
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

-- Errors carry detail and hint for the user; one shown in full.
SELECT twilio_enqueue('+14155552671', 'x', from_number => '+15005550006',
	messaging_service_sid => 'MG0123456789abcdef0123456789abcdef');
SELECT twilio_enqueue('+14155550199', 'x');
