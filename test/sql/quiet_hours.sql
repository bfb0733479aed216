-- Quiet hours and recipients' time zones: zone names, the quiet window
-- across daylight saving changes, the prefix table and its seed, and where
-- twilio_enqueue puts a message that falls in the recipient's quiet hours.
\set db outbox_quiet_hours
\i test/sql/include/fresh_database.sql
SET timezone = 'UTC';

-- Zone names: the IANA database's, any case; not POSIX rules or paths.
SELECT z, twilio_outbox.time_zone_known(z) AS known
FROM unnest(ARRAY['America/New_York', 'america/new_york', 'UTC', 'Europe/London',
	'Asia/Kolkata', 'EST5EDT', 'Etc/GMT+5', 'Mars/Olympus', 'ABC-3', 'UTC+3', '',
	'../etc/passwd', 'America/New_York/', 'America//New_York']) AS z;
SELECT twilio_outbox.time_zone_name('america/new_york') AS canonical;
SELECT try($$SELECT twilio_outbox.time_zone_name('Mars/Olympus')$$);

-- The window 21:00-08:00 in New York around the spring change (8 March
-- 2026, 02:00 EST -> 03:00 EDT): it ends at 08:00 EDT, 12:00 UTC.
SELECT at, twilio_outbox.quiet_until('America/New_York', '21:00', '08:00', at) AS until
FROM unnest(ARRAY[
	'2026-03-07 16:00+00',	-- 11:00 EST: outside
	'2026-03-08 01:59+00',	-- 20:59 EST: outside
	'2026-03-08 02:00+00',	-- 21:00 EST: starts (inclusive)
	'2026-03-08 05:00+00',	-- 00:00 EST: ends 08:00 EDT = 12:00 UTC
	'2026-03-08 07:30+00',	-- 03:30 EDT, just after the jump
	'2026-03-08 11:59+00',	-- 07:59 EDT
	'2026-03-08 12:00+00'	-- 08:00 EDT: over (exclusive)
	]::timestamptz[]) AS at;
-- ... and the autumn change (1 November 2026, 02:00 EDT -> 01:00 EST):
-- the night is an hour longer, it ends at 08:00 EST, 13:00 UTC.
SELECT at, twilio_outbox.quiet_until('America/New_York', '21:00', '08:00', at) AS until
FROM unnest(ARRAY[
	'2026-11-01 01:00+00',	-- 21:00 EDT on 31 October
	'2026-11-01 05:30+00',	-- 01:30 EDT, the first one
	'2026-11-01 06:30+00',	-- 01:30 EST, the second one
	'2026-11-01 12:30+00',	-- 07:30 EST
	'2026-11-01 13:00+00'	-- 08:00 EST: over
	]::timestamptz[]) AS at;
-- London (clocks forward 29 March 2026), Sydney (back on 5 April 2026,
-- southern hemisphere), Kolkata (UTC+05:30), and a window that does not
-- wrap past midnight.
SELECT zone, at, twilio_outbox.quiet_until(zone, s, e, at) AS until
FROM (VALUES
	('Europe/London', '21:00'::time, '08:00'::time, '2026-03-29 00:30+00'::timestamptz),
	('Europe/London', '21:00', '08:00', '2026-03-28 21:00+00'),
	('Australia/Sydney', '21:00', '08:00', '2026-04-04 12:00+00'),
	('Asia/Kolkata', '21:00', '08:00', '2026-06-01 18:00+00'),
	('Asia/Kolkata', '21:00', '08:00', '2026-06-01 15:29+00'),
	('UTC', '12:00', '14:00', '2026-06-01 12:00+00'),
	('UTC', '12:00', '14:00', '2026-06-01 13:59:59.5+00'),
	('UTC', '12:00', '14:00', '2026-06-01 14:00+00'),
	('UTC', '12:00', '14:00', '2026-06-01 11:00+00')) AS t(zone, s, e, at);
SELECT try($$SELECT twilio_outbox.quiet_until('Mars/Olympus', '21:00', '08:00')$$);

-- The seed: countries with one zone, North American area codes; every
-- zone in it is known, every prefix digits.
SELECT note, count(*) AS prefixes, count(DISTINCT time_zone) AS zones
FROM twilio_outbox.number_time_zones GROUP BY note ORDER BY note;
SELECT count(*) AS unknown_zones FROM twilio_outbox.number_time_zones
WHERE NOT twilio_outbox.time_zone_known(time_zone);
SELECT prefix, time_zone FROM twilio_outbox.number_time_zones
WHERE prefix IN ('1212', '1312', '1303', '1602', '1415', '1907', '1808', '1416',
	'1604', '1787', '44', '91', '81', '353') ORDER BY prefix;
-- No multi-zone country as a whole.
SELECT prefix FROM twilio_outbox.number_time_zones WHERE prefix IN ('1', '7', '52', '55', '61', '62', '34');
SELECT try($$INSERT INTO twilio_outbox.number_time_zones VALUES ('0044', 'Europe/London')$$);
SELECT try($$INSERT INTO twilio_outbox.number_time_zones VALUES ('4420', 'Mars/Olympus')$$);

-- Accounts: the quiet window is both ends or neither; a known default zone.
INSERT INTO twilio_outbox.accounts (name, account_sid, is_default)
	VALUES ('main', 'AC0123456789abcdef0123456789abcdef', true);
INSERT INTO twilio_outbox.senders (account, from_number, kind, is_default)
	VALUES ('main', '+15005550006', 'long_code', true);
SELECT quiet_start, quiet_end, quiet_transactional, default_time_zone
FROM twilio_outbox.accounts;
SELECT try($$UPDATE twilio_outbox.accounts SET quiet_end = NULL$$);
SELECT try($$UPDATE twilio_outbox.accounts SET quiet_start = '08:00'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET quiet_end = '24:00'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET default_time_zone = 'Mars/Olympus'$$);
SELECT try($$UPDATE twilio_outbox.accounts SET default_time_zone = 'ABC-3'$$);

-- Parameters: traffic_class and time_zone are checked before anything.
SELECT try($$SELECT twilio_enqueue('+12125550100', 'x', traffic_class => 'spam')$$);
SELECT try($$SELECT twilio_enqueue('+12125550100', 'x', traffic_class => '')$$);
SELECT try($$SELECT twilio_enqueue('+12125550100', 'x', time_zone => 'Mars/Olympus')$$);
SELECT try($$SELECT twilio_enqueue('+12125550100', 'x', time_zone => 'ABC-3')$$);
SELECT try($$SELECT twilio_enqueue('+12125550100', 'x', time_zone => '')$$);
SELECT count(*) AS messages FROM twilio_outbox.messages;

-- A local time in zone, the day after tomorrow: send_after for the tests.
CREATE FUNCTION local_at(zone text, t time, days int DEFAULT 2) RETURNS timestamptz
LANGUAGE sql AS $$
	SELECT ((date_trunc('day', now() AT TIME ZONE zone) + make_interval(days => days) + t)
		AT TIME ZONE zone)
$$;

-- Zones resolved for marketing messages: the argument, else the longest
-- prefix, else the account's default.  Transactional ones get none.
INSERT INTO twilio_outbox.number_time_zones VALUES ('4428', 'Europe/Dublin', 'test: longer prefix');
SELECT count(*) AS enqueued FROM (VALUES
	(twilio_enqueue('+12125550101', 'ny', traffic_class => 'marketing')),
	(twilio_enqueue('+14155550102', 'sf', traffic_class => 'marketing')),
	(twilio_enqueue('+18085550103', 'hi', traffic_class => 'marketing')),
	(twilio_enqueue('+16025550104', 'az', traffic_class => 'marketing')),
	(twilio_enqueue('+447700900105', 'uk', traffic_class => 'marketing')),
	(twilio_enqueue('+442890000106', 'ni', traffic_class => 'marketing')),
	(twilio_enqueue('+919876500107', 'in', traffic_class => 'marketing')),
	(twilio_enqueue('+61255501080', 'au', traffic_class => 'marketing')),
	(twilio_enqueue('+61255501090', 'au', traffic_class => 'marketing',
		time_zone => 'australia/perth')),
	(twilio_enqueue('+12125550110', 'otp', traffic_class => 'transactional')),
	(twilio_enqueue('+12125550111', 'otp')),
	(twilio_enqueue('+12125550112', 'otp', time_zone => 'America/Chicago'))
) AS e(id);
-- (a statement does not see the rows its own calls insert: listed apart)
SELECT to_number, traffic_class, quiet_zone FROM twilio_outbox.messages ORDER BY id;

-- Where the message goes: marketing due at 23:00 New York time waits to
-- 08:00 there the next morning; at 10:00 it is not moved; send_after
-- stays as given.  Transactional traffic is not moved.
SELECT twilio_enqueue('+12125550120', 'late', traffic_class => 'marketing',
	send_after => local_at('America/New_York', '23:00')) AS late \gset
SELECT twilio_enqueue('+12125550121', 'day', traffic_class => 'marketing',
	send_after => local_at('America/New_York', '10:00')) AS day \gset
SELECT twilio_enqueue('+12125550122', 'otp', send_after => local_at('America/New_York', '23:00')) AS otp \gset
SELECT twilio_enqueue('+12125550123', 'early', traffic_class => 'marketing',
	send_after => local_at('America/New_York', '05:00')) AS early \gset
-- The zone given wins over the number's: 23:00 in Tokyo is day in New York.
SELECT twilio_enqueue('+12125550124', 'tokyo', traffic_class => 'marketing',
	time_zone => 'Asia/Tokyo', send_after => local_at('Asia/Tokyo', '23:00')) AS tokyo \gset
SELECT id = :late AS late, id = :day AS day, id = :otp AS otp, id = :early AS early, id = :tokyo AS tokyo,
	send_after = local_at(z, CASE id WHEN :late THEN '23:00'::time WHEN :day THEN '10:00'
		WHEN :otp THEN '23:00' WHEN :early THEN '05:00' ELSE '23:00' END) AS send_after_kept,
	(next_attempt_at AT TIME ZONE z)::time AS due_local_time,
	next_attempt_at = local_at(z, '08:00', 3) AS next_morning,
	next_attempt_at = local_at(z, '08:00', 2) AS same_morning,
	next_attempt_at = send_after AS not_moved
FROM twilio_outbox.messages, LATERAL (SELECT coalesce(quiet_zone, 'America/New_York') AS z) z
WHERE id IN (:late, :day, :otp, :early, :tokyo) ORDER BY id \gx

-- Quiet hours for transactional traffic too, when the account says so.
UPDATE twilio_outbox.accounts SET quiet_transactional = true;
SELECT twilio_enqueue('+12125550130', 'otp', send_after => local_at('America/New_York', '23:00')) AS otp2 \gset
SELECT traffic_class, quiet_zone, next_attempt_at = local_at('America/New_York', '08:00', 3) AS next_morning
FROM twilio_outbox.messages WHERE id = :otp2;
-- Another window (13:00-14:00), another default zone for numbers without a prefix.
UPDATE twilio_outbox.accounts SET quiet_transactional = false, quiet_start = '13:00',
	quiet_end = '14:00', default_time_zone = 'asia/tokyo';
SELECT default_time_zone FROM twilio_outbox.accounts;
SELECT twilio_enqueue('+61255501131', 'lunch', traffic_class => 'marketing',
	send_after => local_at('Asia/Tokyo', '13:30')) AS lunch \gset
SELECT quiet_zone, next_attempt_at = local_at('Asia/Tokyo', '14:00') AS after_lunch
FROM twilio_outbox.messages WHERE id = :lunch;
-- No quiet hours: nothing moves; the zone is stored, for a window set later.
UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;
SELECT twilio_enqueue('+12125550140', 'any time', traffic_class => 'marketing',
	send_after => local_at('America/New_York', '23:00')) AS anytime \gset
SELECT quiet_zone, next_attempt_at = send_after AS not_moved FROM twilio_outbox.messages WHERE id = :anytime;
-- An expiry inside the window is kept: the message expires as any other.
UPDATE twilio_outbox.accounts SET quiet_start = '21:00', quiet_end = '08:00';
SELECT twilio_enqueue('+12125550150', 'too late', traffic_class => 'marketing',
	send_after => local_at('America/New_York', '23:00'),
	expires_at => local_at('America/New_York', '23:30')) AS expiring \gset
SELECT next_attempt_at > expires_at AS waits_past_expiry, state FROM twilio_outbox.messages WHERE id = :expiring;

-- A campaign's own quiet hours replace the account's (21:00-08:00 here);
-- both ends or neither, as the account's.
SELECT try($$SELECT twilio_outbox.create_campaign('half', quiet_start => '13:00')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('same', quiet_start => '13:00', quiet_end => '13:00')$$);
SELECT try($$SELECT twilio_outbox.create_campaign('late', quiet_start => '13:00', quiet_end => '24:00')$$);
SELECT twilio_outbox.create_campaign('lunch', quiet_start => '13:00', quiet_end => '14:00');
SELECT twilio_outbox.create_campaign('plain');
SELECT name, quiet_start, quiet_end FROM twilio_outbox.campaigns ORDER BY name;
SELECT try($$UPDATE twilio_outbox.campaigns SET quiet_end = NULL WHERE name = 'lunch'$$);
-- 'lunch' at 23:00 New York time is not held (its window is 13:00-14:00),
-- at 13:30 it waits to 14:00; 'plain' at 23:00 waits to the morning.
SELECT twilio_enqueue('+12125550160', 'c night', traffic_class => 'marketing', campaign => 'lunch',
	send_after => local_at('America/New_York', '23:00')) AS c_night \gset
SELECT twilio_enqueue('+12125550161', 'c noon', traffic_class => 'marketing', campaign => 'lunch',
	send_after => local_at('America/New_York', '13:30')) AS c_noon \gset
SELECT twilio_enqueue('+12125550162', 'p night', traffic_class => 'marketing', campaign => 'plain',
	send_after => local_at('America/New_York', '23:00')) AS p_night \gset
SELECT body, campaign, quiet_zone, next_attempt_at = send_after AS not_moved,
	next_attempt_at = local_at('America/New_York', '14:00') AS after_lunch,
	next_attempt_at = local_at('America/New_York', '08:00', 3) AS next_morning
FROM twilio_outbox.messages WHERE id IN (:c_night, :c_noon, :p_night) ORDER BY id;
-- The campaign's window holds even where the account has none.
UPDATE twilio_outbox.accounts SET quiet_start = NULL, quiet_end = NULL;
SELECT twilio_enqueue('+12125550163', 'c noon 2', traffic_class => 'marketing', campaign => 'lunch',
	send_after => local_at('America/New_York', '13:30')) AS c_noon2 \gset
SELECT body, next_attempt_at = local_at('America/New_York', '14:00') AS after_lunch
FROM twilio_outbox.messages WHERE id = :c_noon2;
UPDATE twilio_outbox.accounts SET quiet_start = '21:00', quiet_end = '08:00';
